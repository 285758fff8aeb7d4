"""prepare_data.py mine: dense hard negatives by rank range, margins and sampling; positives never mined; the
summary adds up; the output reads and trains; shards of another passage encoder are refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import dpr_train_argv

import train_dense_encoder
from dpr.cli import run_cli
from dpr.commands.prepare import main
from dpr.configs import BiEncoderConfig, ConfigError
from dpr.data.mining import MiningSettings, select_negatives
from dpr.data.readers import read_dpr_files
from dpr.embedding import EmbedConfig, embed_corpus
from dpr.embeddings_io import EmbeddingsError, find_shards
from dpr.encoding import encode_texts
from dpr.mining import mine_dense_negatives, summary_path
from dpr.models.biencoder import build_biencoder
from dpr.retrieval import InferenceModelConfig, load_inference_model
from dpr.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SUBJECTS = ["the river", "a violinist", "the old bridge", "copper wire", "a glacier", "the senate", "penguins", "tea"]
PLACES = ["in Egypt", "near Vienna", "under the sea", "on Mars", "at the market"]
N_PASSAGES = 40
MINED = 12  # records with every positive in the corpus (of 14)


def _passage(i: int) -> dict:
    text = f"{SUBJECTS[i % 8]} {['moves', 'sings', 'shines', 'waits'][i % 4]} {PLACES[i % 5]} on day {i}."
    return {"title": f"doc {i}", "text": text, "passage_id": f"p{i}"}


def _records() -> list[dict]:
    records = [
        {
            "dataset": "tiny",
            "question": f"where does {SUBJECTS[(i * 3) % 8]} go {PLACES[(i * 3) % 5]}?",
            "answers": [f"day {i * 3}"],
            "positive_ctxs": [{**_passage(i * 3), "score": 1, "title_score": 0}],
            "negative_ctxs": [_passage(39)],
            "hard_negative_ctxs": [_passage(38)],
            "extra": i,
        }
        for i in range(11)
    ]
    records.append({"question": "two positives?", "answers": [], "positive_ctxs": [_passage(1), _passage(2)]})
    missing = {"title": "gone", "text": "not in the corpus", "passage_id": "x1"}
    records.append({"question": "positive elsewhere?", "answers": [], "positive_ctxs": [missing]})
    records.append({"question": "no positive?", "answers": [], "positive_ctxs": [], "hard_negative_ctxs": []})
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prefix checkpoint of BERT-tiny, a 40-passage corpus in 2 shards of it, and a 14-record DPR train file."""
    root = tmp_path_factory.mktemp("mining")
    torch.manual_seed(0)
    config = BiEncoderConfig.from_flat(pretrained_model_cfg="bert-tiny", tuning="prefix", sequence_length=64)
    ckpt = save_checkpoint(str(root / "dpr_biencoder.0.1"), build_biencoder(config))
    corpus = root / "psgs.tsv"
    rows = [_passage(i) for i in range(N_PASSAGES)]
    corpus.write_text("id\ttext\ttitle\n" + "".join(f"{p['passage_id']}\t{p['text']}\t{p['title']}\n" for p in rows))
    train = root / "train.json"
    train.write_text(json.dumps(_records()))
    loaded = load_inference_model(InferenceModelConfig(model_file=ckpt, no_cuda=True))
    embed_corpus(loaded, str(corpus), str(root / "emb"), EmbedConfig(batch_size=8), num_shards=2)
    return {"root": root, "ckpt": ckpt, "corpus": str(corpus), "train": str(train), "loaded": loaded}


def _mine(s, out, **settings):
    shards = find_shards(str(s["root"] / "emb_*"))
    return mine_dense_negatives(s["train"], s["loaded"], shards, str(out), MiningSettings(**settings))


def _dense_rankings(s) -> list[list[tuple[str, float]]]:
    """Per record, every corpus passage (id, score) best first: brute force over the shards' vectors."""
    shards = find_shards(str(s["root"] / "emb_*"))
    ids = [pid for shard in shards for pid in shard.ids()]
    vectors = np.concatenate([np.asarray(shard.vectors(), dtype=np.float32) for shard in shards])  # (N, D)
    model, tokenizer = s["loaded"].model, s["loaded"].tokenizer
    questions = encode_texts(
        model, tokenizer, [r["question"] for r in _records()], "question", max_length=64, batch_size=4
    )
    scores = questions @ vectors.T  # (Q, N)
    return [[(ids[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in scores]


def _positives(record: dict) -> set[str]:
    return {p["passage_id"] for p in record["positive_ctxs"]}


# ---------------------------------------------------------------------------------- selection rules


def test_rank_range_counts_non_positive_ranks_and_positives_are_excluded():
    hits = [("pos", 9.0), ("a", 8.0), ("b", 7.0), ("pos2", 6.5), ("c", 6.0), ("d", 5.0), ("e", 4.0)]
    settings = MiningSettings(num_negatives=3, range_min=1, range_max=4)
    chosen = select_negatives(hits, {"pos", "pos2"}, 10.0, settings, key="q")
    assert chosen.negatives == (("b", 7.0), ("c", 6.0), ("d", 5.0))  # "a" is rank 0, "e" rank 4
    assert chosen.positives_retrieved == 2
    assert chosen.fates == {
        "below_range_min": 1,
        "absolute_margin": 0,
        "relative_margin": 0,
        "not_sampled": 0,
        "kept": 3,
    }


def test_margins_drop_candidates_scoring_close_to_the_positive():
    hits = [("a", 9.9), ("b", 9.5), ("c", 9.0), ("d", 8.0), ("e", 5.0)]
    settings = MiningSettings(num_negatives=2, range_max=5, absolute_margin=0.2, relative_margin=0.1)
    chosen = select_negatives(hits, set(), 10.0, settings, key="q")
    # 9.9 > 10 - 0.2; 9.5 > 10 * (1 - 0.1); 9.0 equals that limit and stays; "e" is left over
    assert chosen.negatives == (("c", 9.0), ("d", 8.0))
    assert [chosen.fates[f] for f in ("absolute_margin", "relative_margin", "not_sampled", "kept")] == [1, 1, 1, 2]
    # a negative positive score: the limit is positive - |positive| * margin = -3, not -2 * (1 - 0.5) = -1
    negative = select_negatives([("x", -2.5), ("y", -3.5)], set(), -2.0, MiningSettings(1, relative_margin=0.5), "q")
    assert negative.negatives == (("y", -3.5),) and negative.fates["relative_margin"] == 1


def test_random_sampling_is_seeded_per_question_and_top_takes_the_best():
    hits = [(f"p{i}", 100.0 - i) for i in range(50)]
    top = select_negatives(hits, set(), 200.0, MiningSettings(num_negatives=5, range_max=50), key="q")
    assert [pid for pid, _ in top.negatives] == ["p0", "p1", "p2", "p3", "p4"]

    def sample(seed: int, key: str = "q") -> tuple:
        settings = MiningSettings(num_negatives=5, range_max=50, sampling_strategy="random", seed=seed)
        return select_negatives(hits, set(), 200.0, settings, key=key).negatives

    first = sample(0)
    assert first == sample(0)  # reproducible
    assert first != sample(1) and first != sample(0, key="another question") and first != top.negatives
    assert len(first) == 5 and set(first) <= set(hits)
    assert [score for _, score in first] == sorted((score for _, score in first), reverse=True)  # best first


def test_settings_are_checked_by_flag_name(setup, tmp_path, capsys):
    for bad, flag in (
        (dict(range_min=5, range_max=5), "--range_max"),
        (dict(num_negatives=10, range_min=95, range_max=100), "--num_negatives"),
        (dict(relative_margin=1.5), "--relative_margin"),
        (dict(absolute_margin=-1.0), "--absolute_margin"),
        (dict(sampling_strategy="best"), "--sampling_strategy"),
        (dict(num_negatives=0), "--num_negatives"),
    ):
        with pytest.raises(ConfigError, match=flag):
            MiningSettings(**bad)
    base = [
        "mine",
        "--model_file",
        setup["ckpt"],
        "--ctx_file",
        setup["corpus"],
        "--out_file",
        str(tmp_path / "o.json"),
    ]
    assert run_cli(main, [*base, "--train_file", setup["train"], "--range_min", "9", "--range_max", "3"]) == 2
    assert run_cli(main, [*base, "--train_file", str(tmp_path / "missing.json")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--range_max must be > --range_min (9)" in errors[0] and "missing.json" in errors[1]
    assert not os.path.exists(tmp_path / "o.json")


# ---------------------------------------------------------------------------------- end to end


def test_mined_file_keeps_every_field_and_takes_negatives_from_the_dense_ranking(setup, tmp_path):
    out = tmp_path / "mined.json"
    report = _mine(setup, out, num_negatives=3, range_min=1, range_max=8)
    records, mined = _records(), json.loads(out.read_text())
    assert len(mined) == len(records)
    passages = {p["passage_id"]: p for p in map(_passage, range(N_PASSAGES))}
    for record, new, ranking in zip(records, mined, _dense_rankings(setup)):
        assert {k: v for k, v in new.items() if k != "hard_negative_ctxs"} == {
            k: v for k, v in record.items() if k != "hard_negative_ctxs"
        }
        hard = new["hard_negative_ctxs"]
        if not record["positive_ctxs"] or record["question"] == "positive elsewhere?":
            assert hard == []
            continue
        expected = [hit for hit in ranking if hit[0] not in _positives(record)][1:4]  # ranks 1, 2, 3
        assert [c["passage_id"] for c in hard] == [pid for pid, _ in expected]
        assert [c["score"] for c in hard] == pytest.approx([score for _, score in expected], abs=1e-3)
        for ctx in hard:
            source = passages[ctx["passage_id"]]
            assert (ctx["title"], ctx["text"], ctx["title_score"]) == (source["title"], source["text"], 0)
    q, c = report.summary.questions, report.summary.candidates
    assert (q["total"], q["mined"], q["no_positive"], q["positives_not_in_corpus"]) == (14, MINED, 1, 1)
    assert c["kept"] == sum(len(r["hard_negative_ctxs"]) for r in mined) == 3 * MINED
    assert c["examined"] == sum(
        c[f] for f in ("below_range_min", "absolute_margin", "relative_margin", "not_sampled", "kept")
    )
    assert c["examined"] == 8 * MINED and c["below_range_min"] == MINED and c["not_sampled"] == 4 * MINED
    assert summary_path(str(out)) == str(tmp_path / "mined.mining.json") == report.summary_file
    assert json.loads((tmp_path / "mined.mining.json").read_text()) == report.record
    assert len(read_dpr_files([str(out)])) == 13  # the one without a positive is skipped by training, as before


def test_positives_are_never_mined_even_when_every_passage_is_ranked(setup, tmp_path):
    out = tmp_path / "all.json"
    report = _mine(setup, out, num_negatives=N_PASSAGES, range_max=N_PASSAGES)
    for record, new in zip(_records()[:MINED], json.loads(out.read_text())):
        ids = [c["passage_id"] for c in new["hard_negative_ctxs"]]
        assert not set(ids) & _positives(record)
        assert len(set(ids)) == len(ids) == N_PASSAGES - len(_positives(record))  # everything else
    assert report.summary.candidates["positives_retrieved"] == MINED + 1  # one record has two positives


def test_absolute_margin_drops_exactly_the_candidates_within_it(setup, tmp_path):
    records, rankings = _records()[:MINED], _dense_rankings(setup)[:MINED]
    positive = [min(score for pid, score in ranking if pid in _positives(r)) for r, ranking in zip(records, rankings)]
    candidates = [[hit for hit in ranking if hit[0] not in _positives(r)][:10] for r, ranking in zip(records, rankings)]
    gaps = sorted(p - score for p, row in zip(positive, candidates) for _, score in row)
    k = next(i for i in range(len(gaps) // 2, len(gaps) - 1) if gaps[i + 1] - gaps[i] > 1e-3)  # no score near the limit
    margin = (gaps[k] + gaps[k + 1]) / 2
    report = _mine(setup, tmp_path / "margin.json", num_negatives=4, range_max=10, absolute_margin=margin)
    dropped = sum(score > p - margin for p, row in zip(positive, candidates) for _, score in row)
    assert 0 < dropped < len(gaps) and report.summary.candidates["absolute_margin"] == dropped
    assert report.summary.scores["kept_gap_mean"] > margin  # every kept one is more than the margin below
    mined = json.loads((tmp_path / "margin.json").read_text())
    for p, row, new in zip(positive, candidates, mined):
        expected = [pid for pid, score in row if score <= p - margin][:4]
        assert [c["passage_id"] for c in new["hard_negative_ctxs"]] == expected


def test_cli_encodes_the_corpus_itself_and_agrees_with_the_shards(setup, tmp_path, capsys):
    flags = ["--num_negatives", "3", "--range_min", "1", "--range_max", "8", "--no_progress", "--no_cuda"]
    out, kept = tmp_path / "cli.json", tmp_path / "keep" / "corpus"
    argv = ["mine", "--model_file", setup["ckpt"], "--train_file", setup["train"], "--ctx_file", setup["corpus"]]
    assert main([*argv, "--out_file", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "questions: 14, mined 12" in printed and "summary -> " in printed
    assert sorted(os.listdir(tmp_path)) == ["cli.json", "cli.mining.json"]  # the temporary shard is gone
    _mine(setup, tmp_path / "lib.json", num_negatives=3, range_min=1, range_max=8)
    for a, b in zip(json.loads(out.read_text()), json.loads((tmp_path / "lib.json").read_text())):
        assert [c["passage_id"] for c in a["hard_negative_ctxs"]] == [c["passage_id"] for c in b["hard_negative_ctxs"]]
    assert main([*argv, "--out_file", str(tmp_path / "kept.json"), "--embeddings_out", str(kept), *flags]) == 0
    assert find_shards(f"{kept}_0")[0].header.count == N_PASSAGES  # reusable with --encoded_ctx_file


def test_shards_of_another_passage_encoder_are_refused(setup, tmp_path, capsys):
    base = load_inference_model(
        InferenceModelConfig(encoder_overrides={"pretrained_model_cfg": "bert-tiny"}, no_cuda=True)
    )
    embed_corpus(base, setup["corpus"], str(tmp_path / "base"))
    with pytest.raises(EmbeddingsError, match="another encoder"):
        mine_dense_negatives(
            setup["train"], setup["loaded"], find_shards(str(tmp_path / "base_0")), str(tmp_path / "x")
        )
    argv = ["mine", "--model_file", setup["ckpt"], "--train_file", setup["train"], "--no_progress"]
    out = tmp_path / "refused.json"
    assert run_cli(main, [*argv, "--encoded_ctx_file", str(tmp_path / "base_*"), "--out_file", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made by another encoder" in err and not out.exists()


def test_mined_file_trains(setup, tmp_path):
    mined = str(tmp_path / "mined.json")
    _mine(setup, mined, num_negatives=2, range_max=8)
    flags = ("--batch_size", "4", "--dev_batch_size", "4", "--sequence_length", "32", "--num_train_epochs", "1")
    more = ("--prefix", "--pre_seq_len", "4", "--hard_negatives", "1", "--eval_per_epoch", "1")
    run = str(tmp_path / "run")
    assert train_dense_encoder.main(dpr_train_argv("bert-tiny", mined, mined, run, *flags, *more)) == 0
    assert os.path.isfile(os.path.join(run, "best_checkpoint.json"))
