"""The training step's fast paths compute what the plain path computes: the fused optimiser update
and channels_last give the same loss trajectory as one-parameter-at-a-time updates on contiguous
tensors (fp32, tiny width, so this runs on any CPU)."""

from __future__ import annotations

import pytest
import torch

from fcnseg.config import resolve_config
from fcnseg.engine import train
from fcnseg.engine.losses import segmentation_loss
from fcnseg.engine.optim import build_optimizer
from fcnseg.engine.rundir import read_metrics
from fcnseg.errors import FcnsegError
from fcnseg.models import create_model

TORCH_HAS_CPU_FUSED = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


def _trajectory(optimizer_name: str, fused: bool, steps: int = 6) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    model = create_model("fcn8s", 6, backbone="vgg16_bn", geometry="same", width=1 / 16).train()
    lr, bias_lr_mult = (1e-2 if optimizer_name == "sgd" else 1e-3), 2.0
    opt = build_optimizer(
        model,
        name=optimizer_name,
        lr=lr,
        momentum=0.9,
        weight_decay=1e-3,
        bias_lr_mult=bias_lr_mult,
        bias_decay=False,
        fused=fused,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    y = torch.randint(0, 6, (2, 32, 32), generator=g)
    losses = []
    for _ in range(steps):
        torch.manual_seed(2)  # the same dropout masks in both runs
        loss = segmentation_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    features = model.backbone.features
    # a convolution's bias that feeds a batch norm has a gradient of exactly zero, up to rounding:
    # Adam turns that rounding noise into full-size steps of random sign, so these are not compared
    noise = {
        f"backbone.features.{i}.bias"
        for i in range(len(features) - 1)
        if isinstance(features[i], torch.nn.Conv2d) and isinstance(features[i + 1], torch.nn.BatchNorm2d)
    }
    params = {name: p.detach().clone() for name, p in model.named_parameters() if name not in noise}
    # Adam moves a parameter by at most lr (x the bias multiplier) per step, whatever its gradient
    largest_change = steps * lr * bias_lr_mult if optimizer_name == "adamw" else None
    return losses, {"opt": opt, "params": params, "largest_change": largest_change}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_update_follows_the_plain_update(name):
    plain, plain_state = _trajectory(name, fused=False)
    fast, fast_state = _trajectory(name, fused=True)
    assert plain_state["opt"].defaults.get("fused") in (None, False)
    if TORCH_HAS_CPU_FUSED:  # the fast path is really taken where torch has it, not silently skipped
        assert fast_state["opt"].defaults.get("fused") is True
    assert fast == pytest.approx(plain, rel=1e-4)
    assert plain[-1] < plain[0]  # it trains at all
    # within 0.01% of the largest possible total change (steps x lr x bias multiplier) for Adam
    tolerance = 1e-4 if name == "sgd" else 1e-4 * plain_state["largest_change"]
    assert len(plain_state["params"]) > 30
    for key, a in plain_state["params"].items():
        torch.testing.assert_close(
            a, fast_state["params"][key], rtol=1e-4, atol=tolerance, msg=lambda m, key=key: f"{key}: {m}"
        )


def test_channels_last_training_matches_contiguous(tmp_path):
    """Through the real loop: the same run with and without channels_last logs the same losses. (SGD:
    Adam divides by the root of squared gradients, so on biases before batch norm, whose gradients are
    rounding noise, it turns the two layouts' different roundings into full-size updates.)"""
    common = dict(
        data="shapes",
        model="fcn8s",
        width=1 / 16,
        geometry="same",
        max_val_images=2,
        num_samples=0,
        optimizer="sgd",
        lr=1e-2,
        momentum=0.9,
        batch_size=2,
        iterations=5,
        log_every=1,
        eval_every=0,
        precision="fp32",
        progress=False,
    )
    losses = {}
    for channels_last in (False, True):
        run = tmp_path / f"cl{int(channels_last)}"
        train({**common, "channels_last": channels_last, "out": str(run)})
        losses[channels_last] = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses[True]) == 5
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_demo_preset_keeps_its_training_budget_in_images():
    """Speed must not come from training on fewer images than the measured 2400 x 8 budget."""
    cfg = resolve_config("demo")
    assert cfg.iterations * cfg.batch_size >= 2400 * 8
    assert cfg.eval_every > 0 and cfg.iterations % cfg.eval_every == 0


@pytest.mark.parametrize(
    "cap, allowed",
    [
        ("AVX2", False),
        ("avx512_core_vnni", False),
        ("AVX512_CORE", False),
        ("AVX512_CORE_BF16", True),
        ("AVX512_CORE_AMX", True),
        ("ALL", True),
        ("", True),
    ],
)
def test_auto_precision_is_fp32_when_onednn_is_capped_below_bf16(monkeypatch, cap, allowed):
    """`--precision auto` must not pick bf16 where oneDNN may not use native bf16 (it would emulate it,
    several times slower than fp32), whatever this machine's CPU has."""
    from fcnseg import devices

    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert devices.onednn_cap_allows_bf16() is allowed
    cpu = torch.device("cpu")
    if not allowed:
        assert devices.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)  # the old name counts too
    assert devices.onednn_cap_allows_bf16() is allowed


@pytest.mark.parametrize(
    "block_mib, count, rounds",
    # a small training step's activations; an fp32 forward's at 500x500 (blocks over 32 MiB); a full-size
    # training step's (over 1 GiB freed at the heap's top)
    [(8, 3, 20), (64, 2, 5), (640, 2, 2)],
)
def test_keep_freed_cpu_memory_stops_the_page_faults_of_each_steps_allocations(block_mib, count, rounds):
    """Glibc hands large freed blocks back to the system, so the next step's tensors fault in again page
    by page; after keep_freed_cpu_memory the heap keeps them: blocks over 32 MiB, which glibc mmaps by
    default, and over 1 GiB freed at once too. In a fresh process, so this one's heap stays as it is."""
    import subprocess
    import sys

    code = f"""
import resource, torch
from fcnseg.devices import keep_freed_cpu_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({rounds}):  # a step's worth of large activations, made and freed
        blocks = [torch.ones({block_mib} << 18) for _ in range({count})]  # block_mib MiB each
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
took_effect = keep_freed_cpu_memory()
for _ in range(3):  # the heap grows to the working set (huge blocks settle in a few rounds)
    faults()
print(took_effect, before, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    took_effect, before, after = out[0] == "True", int(out[1]), int(out[2])
    if not took_effect:
        pytest.skip("not glibc: its allocator is left as it is")
    pages = rounds * count * (block_mib << 20) // 4096
    # glibc's default faults a share of the pages in again every round (8 MiB blocks: seen 15% or 70%
    # of them, depending on where its dynamic thresholds settle; larger blocks: all); kept memory faults
    # none of them
    assert before > pages // 20
    assert after < pages // 1000


def test_keep_freed_cpu_memory_can_be_switched_off_and_names_a_bad_value(monkeypatch):
    from fcnseg import devices

    try:
        devices.keep_freed_cpu_memory.cache_clear()
        monkeypatch.setenv(devices.KEEP_MEMORY_ENV, "0")
        assert devices.keep_freed_cpu_memory() is False  # the allocator is left as it is
        devices.keep_freed_cpu_memory.cache_clear()
        monkeypatch.setenv(devices.KEEP_MEMORY_ENV, "yes please")
        with pytest.raises(FcnsegError, match="FCNSEG_KEEP_FREED_MEMORY='yes please'.*use 1 .* or 0"):
            devices.keep_freed_cpu_memory()
    finally:
        devices.keep_freed_cpu_memory.cache_clear()


def test_training_keeps_freed_cpu_memory(tmp_path, monkeypatch):
    import fcnseg.engine.trainer as trainer

    calls = []
    monkeypatch.setattr(trainer, "keep_freed_cpu_memory", lambda: calls.append(True) or True)
    cfg = resolve_config(
        "demo",
        overrides=dict(
            out=str(tmp_path / "run"),
            iterations=1,
            batch_size=2,
            width=1 / 16,
            eval_every=1,
            max_val_images=2,
            progress=False,
        ),
    )
    train(cfg)
    assert calls == [True]
