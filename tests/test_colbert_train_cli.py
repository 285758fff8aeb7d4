"""``python -m colbert.train``'s command line: PT-Retrieval's command, ColBERT v1's run folder, launchers' flags."""

from __future__ import annotations

import os

import pytest

from colbert import train as colbert_train
from colbert.train_options import train_config_from_args
from dpr.options import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# PT-Retrieval's ColBERT training command (issue 16), as torch.distributed.launch passes it to each process,
# with the paths changed.
PT_RETRIEVAL = (
    "--amp --doc_maxlen 300 --mask-punctuation --lr 3e-6 --bsize 32 --accum 1 "
    "--triples {triples} --root {root} --experiment checkpoints --similarity cosine --run NAME "
    "--prefix --pre_seq_len 180"
)


def _write_triples(tmp_path) -> str:
    path = tmp_path / "triples.tsv"
    path.write_text("".join(f"question {i}\tpassage about item {i}\tsomething else {i}\n" for i in range(8)))
    return str(path)


@pytest.mark.parametrize("launcher_flag", ["--local_rank=3", "--local-rank=3", "--local_rank", "none"])
def test_the_pt_retrieval_command_parses(tmp_path, launcher_flag):
    argv = PT_RETRIEVAL.format(triples=_write_triples(tmp_path), root=tmp_path).split()
    if launcher_flag == "--local_rank":
        argv = ["--local_rank", "3", *argv]
    elif launcher_flag != "none":
        argv = [launcher_flag, *argv]  # torch.distributed.launch puts it first
    args = colbert_train.build_parser().parse_args(argv)
    cfg = train_config_from_args(args)
    assert args.local_rank == (-1 if launcher_flag == "none" else 3)
    assert cfg.output_dir == os.path.join(str(tmp_path), "checkpoints", "train.py", "NAME")
    assert (cfg.precision, cfg.lr, cfg.bsize, cfg.accum) == ("fp16", 3e-6, 32, 1)
    assert (args.tuning, args.pre_seq_len, args.doc_maxlen, args.mask_punctuation) == ("prefix", 180, 300, True)


def test_the_pt_retrieval_command_starts(tiny_bert_dir, tmp_path):
    # On this CPU: no --amp (fp16 needs CUDA); a tiny BERT's 128 positions: shorter documents and prefix.
    command = PT_RETRIEVAL.format(triples=_write_triples(tmp_path), root=tmp_path).replace("--amp ", "")
    command = command.replace("--doc_maxlen 300", "--doc_maxlen 32").replace("--pre_seq_len 180", "--pre_seq_len 8")
    argv = [*command.split(), "--pretrained_model_cfg", tiny_bert_dir, "--bsize", "4", "--maxsteps", "1"]
    assert colbert_train.main([*argv, "--no_progress", "--query_maxlen", "12", "--dim", "16"]) == 0
    assert os.path.isdir(tmp_path / "checkpoints" / "train.py" / "NAME" / "colbert-1")


def test_the_run_folder_flags_need_a_run_and_exclude_output_dir():
    parser = colbert_train.build_parser()
    base = ["--triples", "t.tsv"]
    args = parser.parse_args([*base, "--run", "r1"])
    assert train_config_from_args(args).output_dir == os.path.join("experiments", "dirty", "train.py", "r1")
    with pytest.raises(ConfigError, match="pass --run NAME"):
        train_config_from_args(parser.parse_args([*base, "--root", "x", "--experiment", "e"]))
    with pytest.raises(ConfigError, match="--output_dir out and --run r1 both name the output folder"):
        train_config_from_args(parser.parse_args([*base, "--run", "r1", "--output_dir", "out"]))
    assert train_config_from_args(parser.parse_args(base)).output_dir == "outputs/colbert"


def test_torchs_launcher_passes_the_command_on_with_run_spelled_run_name(tmp_path):
    from torch.distributed import launch

    command = PT_RETRIEVAL.format(triples="t.tsv", root=tmp_path).split()
    with pytest.raises(SystemExit):  # torch's own --run-path takes --run for its abbreviation
        launch.parse_args(["--nproc_per_node=4", "colbert/train.py", *command])
    spelled = [("--run_name" if flag == "--run" else flag) for flag in command]
    passed = launch.parse_args(["--nproc_per_node=4", "colbert/train.py", *spelled]).training_script_args
    args = colbert_train.build_parser().parse_args(["--local-rank=0", *passed])
    assert train_config_from_args(args).output_dir == os.path.join(str(tmp_path), "checkpoints", "train.py", "NAME")
