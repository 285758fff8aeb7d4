"""bench/plot_results.py's colours: a LoRA rank variant is drawn in LoRA's colour, not the unknown-mode one."""

import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "plot_results.py")


@pytest.fixture(scope="module")
def plot():
    spec = importlib.util.spec_from_file_location("bench_plot_results", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_rank_variants_take_their_modes_colour(plot):
    assert plot.mode_colour("lora-r8", "gray") == plot.MODE_COLOURS["lora"]
    assert plot.mode_colour("lora-r32", None) == plot.MODE_COLOURS["lora"]
    assert plot.mode_colour("zero-shot", "tab:brown") == plot.MODE_COLOURS["zero-shot"]
    assert plot.mode_colour("finetune", None) == plot.MODE_COLOURS["finetune"]
    assert plot.mode_colour("mystery", "tab:brown") == "tab:brown"
