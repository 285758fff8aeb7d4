"""bench/quality.py's bookkeeping: the SQuAD subsample and the table merge that lets a sweep stop and go on."""

import importlib.util
import json
import os

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "quality.py")


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subsample_is_seeded_sized_and_drawn_from_the_train_file(tmp_path, quality):
    records = [{"question": f"q{i}", "positive_ctxs": [{"title": "", "text": f"p{i}"}]} for i in range(50)]
    (tmp_path / "squad-train.json").write_text(json.dumps(records), encoding="utf-8")
    path = quality.subsample_train(str(tmp_path), 20)
    picked = json.loads(open(path, encoding="utf-8").read())
    assert len(picked) == 20
    assert len({r["question"] for r in picked}) == 20
    assert all(r in records for r in picked)
    assert picked != records[:20]  # shuffled, not the head of the file
    os.remove(path)
    assert json.loads(open(quality.subsample_train(str(tmp_path), 20), encoding="utf-8").read()) == picked
    with pytest.raises(SystemExit, match="only 50"):
        quality.subsample_train(str(tmp_path), 51)


def test_save_table_replaces_rows_by_name_and_keeps_earlier_ones(tmp_path, quality):
    table = str(tmp_path / "t.json")
    quality.save_table(table, [{"name": "BM25", "v": 1}, {"name": "a", "v": 1}])
    merged = quality.save_table(table, [{"name": "BM25", "v": 2}, {"name": "b", "v": 1}])
    assert [(r["name"], r["v"]) for r in merged] == [("BM25", 2), ("a", 1), ("b", 1)]
    assert json.loads(open(table, encoding="utf-8").read()) == merged
    assert not os.path.exists(table + ".tmp")
    assert os.listdir(tmp_path) == ["t.json"]  # no temporary file left beside it


def test_markdown_rows_show_every_column(quality):
    rows = [
        {
            "name": "BM25",
            "train_data": "-",
            "nDCG@10": 0.68631,
            "R@100": 0.9127,
            "ECE": None,
            "trainable": 0,
            "trainable_share": 0.0,
            "train_seconds": 0.0,
        },
        {
            "name": "m-prefix-squad",
            "train_data": "squad",
            "nDCG@10": 0.5,
            "R@100": 0.91234,
            "ECE": 0.25,
            "trainable": 10,
            "trainable_share": 0.0255,
            "train_seconds": 670.4,
            "step_seconds": 3.456,
            "checkpoint_bytes": 2_359_624,
        },
        {
            "name": "m-lora-r8-squad",
            "train_data": "squad",
            "nDCG@10": 0.5,
            "R@100": 0.9,
            "ECE": 0.25,
            "trainable": 10,
            "trainable_share": 0.01,
            "train_seconds": 10.0,
            "step_seconds": None,
            "checkpoint_bytes": 1500,
        },
    ]
    lines = quality.markdown(rows).splitlines()
    assert len(lines) == 5
    assert lines[2] == "| BM25 | - | 1 | 0.6863 | 0.9127 | - | - | - | - | - |"
    assert lines[3] == "| m-prefix-squad | squad | 1 | 0.5000 | 0.9123 | 0.250 | 2.55% | 670 | 3.46 | 2.4 MB |"
    assert lines[4] == "| m-lora-r8-squad | squad | 1 | 0.5000 | 0.9000 | 0.250 | 1.00% | 10 | - | 2 kB |"


def test_several_seeds_give_a_mean_and_standard_deviation_row(quality):
    def run(seed, ndcg, recall):
        return {
            "name": f"m-prefix-scifact-s{seed}",
            "model": "m",
            "mode": "prefix",
            "train_data": "scifact",
            "nDCG@10": ndcg,
            "R@100": recall,
            "ECE": 0.1,
            "trainable": 10,
            "trainable_share": 0.01,
            "train_seconds": 10.0,
            "step_seconds": seed / 10,
            "checkpoint_bytes": 100,
            "checkpoint": f"c{seed}",
        }

    mean = quality.aggregate("m-prefix-scifact", [run(1, 0.70, 0.9), run(2, 0.72, 0.9), run(3, 0.74, 0.93)])
    assert mean["seeds"] == 3 and mean["checkpoint"] == ["c1", "c2", "c3"]
    assert mean["nDCG@10"] == pytest.approx(0.72) and mean["nDCG@10_std"] == pytest.approx(0.02)  # sample std
    assert mean["R@100"] == pytest.approx(0.91) and mean["R@100_std"] == pytest.approx(0.017320508)
    assert quality.markdown([mean]).splitlines()[2] == (
        "| m-prefix-scifact | scifact | 3 | 0.7200 ± 0.0200 | 0.9100 ± 0.0173 | 0.100 | 1.00% | 10 | 0.20 | 100 B |"
    )
    assert mean["step_seconds"] == pytest.approx(0.2)
    assert quality.run_name("m", "prefix", "scifact", 12345) == "m-prefix-scifact"  # the first sweep's names stay
    assert quality.run_name("m", "prefix", "scifact", 2) == "m-prefix-scifact-s2"
    # the first seed's row keeps its own name beside the mean row, which takes the run name
    assert quality.row_name("m-prefix-scifact", 12345, [12345, 1, 2]) == "m-prefix-scifact-s12345"
    assert quality.row_name("m-prefix-scifact", 12345, [12345]) == "m-prefix-scifact"
    assert quality.row_name("m-prefix-scifact-s1", 1, [12345, 1]) == "m-prefix-scifact-s1"


def test_markdown_by_mode_pairs_in_and_out_of_domain_rows(quality):
    def r(name, mode, data, ndcg):
        return {
            "name": name,
            "model": "m",
            "mode": mode,
            "train_data": data,
            "nDCG@10": ndcg,
            "R@100": 0.9,
            "ECE": 0.3,
            "trainable": 5,
            "trainable_share": 0.01,
            "train_seconds": 1.0,
        }

    rows = [
        {"name": "BM25", "model": "bm25s", "mode": "bm25"},
        r("m-prefix-scifact", "prefix", "scifact", 0.7),
        r("m-prefix-squad", "prefix", "squad", 0.6),
        r("m-bitfit-scifact", "bitfit", "scifact", 0.65),
        r("m-lora-r32-scifact", "lora-r32", "scifact", 0.66),
        r("m-lora-r8-scifact", "lora-r8", "scifact", 0.64),
    ]
    lines = quality.markdown_by_mode(rows).splitlines()
    assert len(lines) == 6
    # LoRA ranks follow the named modes, smallest rank first
    assert lines[4] == "| m | LoRA r8 | 1.00% | 0.6400 / 0.9000 / 0.300 | not run | - |"
    assert lines[5] == "| m | LoRA r32 | 1.00% | 0.6600 / 0.9000 / 0.300 | not run | - |"
    assert (
        lines[2] == "| m | prefix (P-tuning v2) | 1.00% | 0.7000 / 0.9000 / 0.300 | 0.6000 / 0.9000 / 0.300 | -0.1000 |"
    )
    assert lines[3] == "| m | BitFit | 1.00% | 0.6500 / 0.9000 / 0.300 | not run | - |"


def test_each_lora_rank_is_its_own_row_kind_with_its_own_flags(quality):
    args = quality.argparse.Namespace(
        modes=["prefix", "lora", "finetune"], lora_r=[8, 32], pre_seq_len=64, lora_alpha=16.0, dropout=0.0
    )
    assert quality.variants(args) == [
        ("prefix", "prefix", None),
        ("lora-r8", "lora", 8),
        ("lora-r32", "lora", 32),
        ("finetune", "finetune", None),
    ]
    flags = quality.mode_flags(args, "lora", 32)
    assert flags[:5] == ["--lora", "--lora_r", "32", "--lora_alpha", "16.0"]
    assert "--lora_dropout" in flags
    assert quality.run_name("m", "lora-r32", "scifact", 2) == "m-lora-r32-scifact-s2"


def test_step_time_is_the_median_of_the_logged_rates(tmp_path, quality):
    run = tmp_path / "run"
    run.mkdir()
    assert quality.step_seconds(str(run)) is None  # nothing logged
    lines = [{"samples_per_s": rate, "step": i} for i, rate in enumerate([8.0, 16.0, 4.0])]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    (run / "quality_train.json").write_text(json.dumps({"train_seconds": 1.0}), encoding="utf-8")
    assert quality.step_seconds(str(run)) is None  # a run timed before the batch size was kept
    (run / "quality_train.json").write_text(json.dumps({"train_seconds": 1.0, "batch_size": 32}), encoding="utf-8")
    assert quality.step_seconds(str(run)) == pytest.approx(4.0)  # median of 4, 2 and 8 s per step
