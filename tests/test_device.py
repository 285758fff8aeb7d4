"""The device / precision seam (dpr.device): device choice, autocast, loss scaling and the optimizer step."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from torch import nn

from dpr import device as device_seam
from dpr.device import (
    PRECISIONS,
    DeviceError,
    MixedPrecision,
    add_hardware_params,
    autocast,
    quantize_int8,
    resolve_precision,
    select_device,
)
from dpr.errors import UserError
from dpr.training.distributed import init_distributed


def test_select_device_no_cuda_is_cpu() -> None:
    for precision in ("fp32", "bf16"):
        assert select_device(True, precision) == torch.device("cpu")
        assert select_device(True, precision, index=3) == torch.device("cpu")


def test_select_device_refuses_fp16_without_cuda() -> None:
    with pytest.raises(DeviceError, match="fp16.*CUDA") as info:
        select_device(True, "fp16")
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_select_device_rejects_unknown_precision() -> None:
    with pytest.raises(DeviceError, match="precision"):
        select_device(True, "fp8")


def test_init_distributed_checks_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed(no_cuda=True).device == torch.device("cpu")
    with pytest.raises(DeviceError, match="fp16"):
        init_distributed(no_cuda=True, precision="fp16")


def test_autocast_fp16_on_cpu_raises() -> None:
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        autocast(torch.device("cpu"), "fp16")
    with pytest.raises(DeviceError):
        MixedPrecision("cpu", "fp16")


def test_autocast_fp32_is_a_no_op() -> None:
    x = torch.randn(2, 3)
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ x.T).dtype == torch.float32


@pytest.mark.parametrize("fast", [True, False])
def test_autocast_cpu_bf16_warns_only_where_bf16_is_slow(
    fast: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(device_seam.AUTO_ENV)
    device_seam._warn_cpu_bf16.cache_clear()
    monkeypatch.setattr(device_seam, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(device_seam, "cpu_bf16_speedup", lambda: 3.0 if fast else 0.01)
    with caplog.at_level(logging.WARNING, logger="dpr.device"):
        amp_ctx = autocast(torch.device("cpu"), "bf16")
    device_seam._warn_cpu_bf16.cache_clear()
    assert ("slower than fp32" in caplog.text) is not fast
    with amp_ctx:  # reusable: entered twice
        assert torch.is_autocast_enabled("cpu")
    with amp_ctx:
        assert (torch.randn(2, 3) @ torch.randn(3, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def _no_benchmark() -> float:
    raise AssertionError("the micro-benchmark must not run when the CPU flags already say no")


@pytest.mark.parametrize(
    ("flags", "speedup", "expected"),
    [
        (frozenset({"avx2", "fma"}), None, "fp32"),  # no native bf16: decided from the flags, no benchmark
        (frozenset({"avx512_bf16"}), 0.005, "fp32"),  # native bf16 but slow here (the benchmark decides)
        (frozenset({"amx_bf16", "avx512_bf16"}), 7.0, "bf16"),
        (None, 2.0, "bf16"),  # flags unreadable (not Linux): the benchmark alone
        (None, 1.2, "fp32"),  # faster, but not by the required margin
    ],
)
def test_auto_precision_on_cpu_follows_capability_and_measurement(
    flags, speedup, expected, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(device_seam.AUTO_ENV)
    monkeypatch.setattr(device_seam, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(device_seam, "cpu_bf16_speedup", _no_benchmark if speedup is None else (lambda: speedup))
    with caplog.at_level(logging.INFO, logger="dpr.device"):
        assert resolve_precision("auto", "cpu") == expected
    assert f"precision auto -> {expected}: " in caplog.text  # says what it chose and why
    assert ("no native bf16" in caplog.text) is (speedup is None)


def test_explicit_precisions_are_kept_and_auto_never_picks_fp16_or_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_seam, "cpu_bf16_speedup", _no_benchmark)
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert resolve_precision(precision, "cpu") == precision
    with pytest.raises(DeviceError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_the_environment_pins_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_seam, "cpu_bf16_speedup", _no_benchmark)
    for pinned in ("fp32", "bf16"):
        monkeypatch.setenv(device_seam.AUTO_ENV, pinned)
        assert resolve_precision("auto", "cpu") == pinned
    monkeypatch.setenv(device_seam.AUTO_ENV, "fp16")
    with pytest.raises(DeviceError, match="DPR_AUTO_PRECISION"):
        resolve_precision("auto", "cpu")


def test_the_micro_benchmark_measures_a_ratio() -> None:
    device_seam.cpu_bf16_speedup.cache_clear()
    ratio = device_seam.cpu_bf16_speedup(64)
    device_seam.cpu_bf16_speedup.cache_clear()
    assert 0 < ratio < 1000


def test_int8_quantizes_every_linear_layer_and_keeps_the_vectors_close() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval()
    x = torch.randn(32, 64)
    quantized = quantize_int8(model)
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.GELU))  # the original is untouched
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    with torch.inference_mode():
        cosine = nn.functional.cosine_similarity(model(x), quantized(x), dim=-1)
    assert cosine.min() > 0.99
    with autocast("cpu", "int8"):  # int8 runs without autocast
        assert not torch.is_autocast_enabled("cpu")


def test_int8_is_cpu_inference_only() -> None:
    with pytest.raises(DeviceError, match="inference"):
        MixedPrecision("cpu", "int8")


def test_autocast_rejects_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp8")


def test_no_loss_scaling_on_cpu() -> None:
    for precision in ("fp32", "bf16"):
        mp = MixedPrecision("cpu", precision)
        assert not mp.scaling and mp.state_dict() == {}


def _model_and_grads(max_grad_norm: float) -> tuple[nn.Linear, nn.Linear]:
    """The same step through MixedPrecision and by hand; returns (via MixedPrecision, by hand)."""
    models = []
    for manual in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(8, 4) * 10  # large inputs: the gradient norm is far above 0.1
        loss = model(x).pow(2).mean()  # ()
        if manual:
            loss.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
        else:
            mp = MixedPrecision("cpu", "fp32")
            mp.backward(loss)
            mp.step(optimizer, model.parameters(), max_grad_norm)
        models.append(model)
    return models[0], models[1]


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.1])
def test_step_equals_plain_pytorch(max_grad_norm: float) -> None:
    ours, plain = _model_and_grads(max_grad_norm)
    assert torch.equal(ours.weight, plain.weight) and torch.equal(ours.bias, plain.bias)


def test_step_clips_the_gradient_norm() -> None:
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: only the gradients change
    mp = MixedPrecision("cpu", "fp32")
    mp.backward((model(torch.randn(8, 4) * 10).pow(2)).mean())
    mp.step(optimizer, model.parameters(), max_grad_norm=0.1)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(norm) == pytest.approx(0.1, rel=1e-4)


def test_state_round_trip() -> None:
    mp = MixedPrecision("cpu", "fp32")
    other = MixedPrecision("cpu", "bf16")
    other.load_state_dict(mp.state_dict())  # a run saved without scaling: nothing to restore
    other.load_state_dict(None)
    assert other.state_dict() == mp.state_dict() == {}
    # A scaler state saved by an fp16 CUDA run loads (and is ignored) where scaling is off.
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict()
    assert saved["scale"] == 1024.0
    mp.load_state_dict(saved)
    assert mp.state_dict() == {}


def test_state_round_trip_of_an_enabled_scaler() -> None:
    # What an fp16 CUDA run saves, restored into a fresh object: exercised with an enabled CPU scaler.
    mp, fresh = MixedPrecision("cpu", "fp32"), MixedPrecision("cpu", "fp32")
    mp._scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    fresh._scaler = torch.amp.GradScaler("cpu")
    assert mp.scaling
    fresh.load_state_dict(mp.state_dict())
    assert fresh.state_dict() == mp.state_dict()
    assert fresh.state_dict()["scale"] == 512.0 and fresh.state_dict()["growth_interval"] == 7


def _parse(argv: list[str], **kwargs: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_hardware_params(parser, **kwargs)
    return parser.parse_args(argv)


def test_hardware_flags() -> None:
    assert _parse([], training=True).precision == "auto"
    assert _parse(["--fp16"], training=True).precision == "fp16"
    assert _parse(["--precision", "bf16"], training=True).precision == "bf16"
    assert _parse(["--bf16", "--no_cuda"], training=False).precision == "bf16"
    assert _parse(["--no_cuda"], training=False).no_cuda
    assert _parse(["--precision", "int8"], training=False, int8=True).precision == "int8"
    with pytest.raises(SystemExit):
        _parse(["--precision", "int8"], training=True)  # int8 is offered only where it runs: CPU inference
    colbert = {"training": True, "amp_alias": True}
    assert _parse(["--amp"], **colbert).precision == "fp16"
    assert _parse(["--fp16"], **colbert).precision == "fp16"
    assert _parse(["--bf16"], **colbert).precision == "bf16"
    assert set(PRECISIONS) == {"fp32", "fp16", "bf16"}
