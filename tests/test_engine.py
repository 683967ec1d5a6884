"""Unit tests of the training/evaluation building blocks: config, loss, optimiser, sampling, RNG, evaluate."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.cli import build_parser
from fcnseg.config import FIELDS, TrainConfig, list_presets, resolve_config, save_config
from fcnseg.engine.batches import EpochSampler, SeededAugment, batches_per_epoch, training_batches
from fcnseg.engine.checkpoint import resume_config
from fcnseg.engine.evaluator import evaluate
from fcnseg.engine.losses import load_class_weights, segmentation_loss
from fcnseg.engine.metrics import ConfusionMatrix
from fcnseg.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
from fcnseg.engine.rng import capture_rng, isolated_rng, restore_rng
from fcnseg.errors import FcnsegError

# ------------------------------------------------------------------ config


def test_presets_resolve_and_paper_recipe():
    assert {"paper", "paper-16s", "paper-8s", "paper-atonce", "modern", "demo"} <= set(list_presets())
    lrs = {name: resolve_config(name).lr for name in ("paper", "paper-16s", "paper-8s")}
    assert lrs == {"paper": 1e-10, "paper-16s": 1e-12, "paper-8s": 1e-14}
    paper = resolve_config("paper")
    assert (paper.momentum, paper.batch_size, paper.loss_reduction, paper.weight_decay) == (0.99, 1, "sum", 5e-4)
    assert paper.bias_lr_mult == 2.0 and not paper.bias_decay
    assert paper.model_options == {"learn_final_upsample": False}
    modern = resolve_config("modern")
    assert modern.lr_schedule == "poly" and modern.batch_size > 1 and modern.hflip and modern.crop_size


def test_precedence_cli_over_file_over_preset(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("preset: paper\nlr: 0.5\nbatch_size: 3\n")
    cfg = resolve_config(None, cfg_file, {"batch_size": "7"})
    assert cfg.momentum == 0.99  # from the preset named in the file
    assert cfg.lr == 0.5  # file beats preset
    assert cfg.batch_size == 7  # command line beats file (and is coerced from a string)
    toml = tmp_path / "c.toml"
    toml.write_text('model = "fcn16s"\nhflip = true\nscale_range = [0.5, 2.0]\n')
    cfg = resolve_config("modern", toml, {})
    assert (cfg.model, cfg.hflip, cfg.scale_range, cfg.lr_schedule) == ("fcn16s", True, [0.5, 2.0], "poly")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lerning_rate: 1\n", "unknown option 'lerning_rate'"),
        ("batch_size: many\n", "'batch_size' expects int"),
        ("precision: fp8\n", "must be one of fp32, bf16, fp16"),
        ("lr: [1\n", "cannot be parsed"),
    ],
)
def test_bad_config_file_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FcnsegError, match=fragment.replace("[", r"\[")) as err:
        resolve_config(None, path, {})
    assert "\n" not in str(err.value) and ("bad.yaml" in str(err.value))


def test_unknown_preset_and_missing_file():
    with pytest.raises(FcnsegError, match="unknown preset 'nope'; choose one of"):
        resolve_config("nope")
    with pytest.raises(FcnsegError, match="does not exist"):
        resolve_config(None, "/no/such/config.yaml")


def test_every_option_is_on_the_command_line_with_help():
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--data",
            "shapes",
            "--channels-last",
            "--no-hflip",
            "--lr",
            "0.1",
            "--model-options",
            "{learn_final_upsample: true}",
            "--preset",
            "modern",
        ]
    )
    from fcnseg.config import overrides_from_args

    assert overrides_from_args(args) == {
        "data": "shapes",
        "channels_last": True,
        "hflip": False,
        "lr": "0.1",
        "model_options": "{learn_final_upsample: true}",
    }
    cfg = resolve_config(args.preset, None, overrides_from_args(args))
    assert cfg.model_options == {"learn_final_upsample": True} and cfg.lr == 0.1 and not cfg.hflip
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    help_text = train_parser.format_help()
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in help_text


def test_resume_config_reads_saved_config(tmp_path):
    from fcnseg.engine.checkpoint import save_checkpoint

    config = TrainConfig(data="shapes", lr=0.25, iterations=10)
    save_config(config, tmp_path / "config.yaml")
    save_checkpoint(
        tmp_path / "last.pt",
        {},
        {"model_name": "fcn8s", "model_kwargs": {}},
        {"iteration": 10, "optimizer": {}, "scheduler": {}, "rng": {}, "config": config.to_dict()},
    )
    cfg = resume_config(tmp_path, {"iterations": 20})
    assert (cfg.lr, cfg.iterations, cfg.resume, cfg.out) == (0.25, 20, str(tmp_path), str(tmp_path))
    with pytest.raises(FcnsegError, match="cannot resume"):
        resume_config(tmp_path / "nothing")


# ------------------------------------------------------------------ loss


def test_loss_mean_sum_ignore_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(segmentation_loss(logits, target), ref)
    labelled = (target != 255).sum()
    assert torch.allclose(segmentation_loss(logits, target, reduction="sum"), ref * labelled)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    ref_w = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert torch.allclose(segmentation_loss(logits, target, weight=w), ref_w)


def test_loss_sampling_keeps_about_p_of_the_cells():
    logits = torch.zeros(1, 3, 100, 100)  # every pixel's loss is log(3): the sum counts the kept cells
    target = torch.zeros(1, 100, 100, dtype=torch.long)
    torch.manual_seed(1)
    kept = segmentation_loss(logits, target, reduction="sum", sample_prob=0.25) / np.log(3)
    assert 2200 < kept < 2800
    full = segmentation_loss(logits, target, reduction="sum") / np.log(3)
    assert round(float(full)) == 10000
    # the mean over kept cells equals the mean over all cells when every loss is the same
    assert torch.allclose(segmentation_loss(logits, target, sample_prob=0.25), torch.tensor(np.log(3.0)).float())


def test_class_weights_file(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("1.0, 2.0\n3.0")
    assert load_class_weights(path, 3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(FcnsegError, match="has 3 values but the data has 4 classes"):
        load_class_weights(path, 4)
    path.write_text("a b c")
    with pytest.raises(FcnsegError, match="numbers only"):
        load_class_weights(path, 3)


# ------------------------------------------------------------------ optimiser and schedule


def test_biases_get_twice_the_lr_and_no_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    model[2].weight.requires_grad_(False)  # a frozen layer is left out
    groups = parameter_groups(model, lr=0.1, weight_decay=5e-4)
    weights, biases = groups
    assert weights["lr"] == 0.1 and weights["weight_decay"] == 5e-4
    assert [p.shape for p in weights["params"]] == [torch.Size([4, 3, 3, 3])]
    assert biases["lr"] == pytest.approx(0.2) and biases["weight_decay"] == 0.0
    assert len(biases["params"]) == 4  # conv1 bias, bn weight and bias, conv2 bias
    opt = build_optimizer(model, name="sgd", lr=0.1, momentum=0.99, weight_decay=5e-4, bias_lr_mult=2, bias_decay=True)
    assert opt.param_groups[1]["weight_decay"] == 5e-4 and opt.param_groups[0]["momentum"] == 0.99


def test_poly_and_warmup_schedule():
    assert lr_factor(0, total=100, schedule="poly", power=1.0) == 1.0
    assert lr_factor(50, total=100, schedule="poly", power=1.0) == pytest.approx(0.5)
    assert lr_factor(5, total=100, schedule="constant", warmup=10) == pytest.approx(0.6)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, name="sgd", lr=1.0, momentum=0.9, weight_decay=0, bias_lr_mult=2, bias_decay=False)
    sched = build_scheduler(opt, total=4, schedule="poly", power=1.0)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0)


# ------------------------------------------------------------------ data order and RNG


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a = EpochSampler(10, seed=1, epoch=0).indices()
    assert a == EpochSampler(10, seed=1, epoch=0).indices() and sorted(a) == list(range(10))
    assert a != EpochSampler(10, seed=1, epoch=1).indices()
    assert list(EpochSampler(10, seed=1, epoch=0, skip=4)) == [(0, i) for i in a[4:]]
    shards = [EpochSampler(11, seed=1, epoch=0, rank=r, world_size=2).indices() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
    with pytest.raises(FcnsegError, match="fewer than batch_size"):
        batches_per_epoch(3, 2, 2)


class _Toy(torch.utils.data.Dataset):
    """Eight 4x4 images whose pixels all equal the sample index; mask likewise (mod 3)."""

    num_classes, ignore_index, class_names, palette = 3, 255, ["a", "b", "c"], [(0, 0, 0), (1, 1, 1), (2, 2, 2)]

    def __init__(self, n: int = 8):
        self.n = n

    def __len__(self):
        return self.n

    def sample_name(self, i):
        return f"toy{i}"

    def __getitem__(self, i):
        return torch.full((3, 4, 4), i, dtype=torch.uint8), torch.full((4, 4), i % 3, dtype=torch.long)


def _noisy(image, mask):
    return image + torch.randint(0, 100, (1,)).to(torch.uint8), mask


def test_training_batches_resume_mid_stream_identically():
    stream = lambda start: training_batches(
        _Toy(),
        transform=_noisy,
        batch_size=2,
        seed=5,  # noqa: E731
        start_iteration=start,
    )
    full = [next(it) for it in [stream(0)] for _ in range(10)]  # 2.5 epochs
    resumed = [next(it) for it in [stream(6)] for _ in range(4)]
    for (a_img, a_mask), (b_img, b_mask) in zip(full[6:], resumed):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    # loader worker processes see the same stream
    with_workers = training_batches(_Toy(), transform=_noisy, batch_size=2, seed=5, start_iteration=6, workers=2)
    for a_img, _ in resumed:
        assert torch.equal(a_img, next(with_workers)[0])
    # the augmentation does not touch the global generator
    torch.manual_seed(0)
    before = torch.get_rng_state()
    SeededAugment(_Toy(), _noisy, 0)[(0, 1)]
    assert torch.equal(before, torch.get_rng_state())


def test_rng_capture_restore_roundtrip(tmp_path):
    state = capture_rng()
    first = (torch.rand(3), np.random.rand(2), random.random())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    with isolated_rng(123):
        torch.rand(5)
    assert not torch.equal(torch.rand(3), first[0])  # the generator moved on as if the block never ran


# ------------------------------------------------------------------ evaluate


class _ByIndex(nn.Module):
    """Predicts class (pixel value of channel 0 > threshold) from the normalised image."""

    num_classes = 3

    def forward(self, x):
        score = x[:, :1]
        return torch.cat([-score, score, torch.zeros_like(score) - 5], 1)


def test_evaluate_matches_a_manual_confusion_matrix():
    data = _Toy(6)
    meta = {"model_kwargs": {"num_classes": 3}, "normalization": "imagenet"}
    result = evaluate(_ByIndex(), data, meta=meta, device="cpu")
    manual = ConfusionMatrix(3)
    for i in range(6):
        image, mask = data[i]
        pred = 1 if (i - 0.485 * 255) / (0.229 * 255) > 0 else 0
        manual.update(torch.full((4, 4), pred), mask)
    assert result["confusion"] == manual.mat.tolist()
    assert result["mean_iu"] == pytest.approx(manual.compute()["mean_iu"])
    assert result["images"] == 6 and result["loss"] > 0 and result["class_names"] == ["a", "b", "c"]
    with pytest.raises(FcnsegError, match="predicts 21 classes but dataset"):
        evaluate(_ByIndex(), data, meta={"model_kwargs": {"num_classes": 21}, "normalization": "imagenet"})
    with pytest.raises(FcnsegError, match="is empty"):
        evaluate(_ByIndex(), _Toy(0), meta=meta)


@pytest.mark.parametrize(
    "flags, cap, expected",
    [
        ((), "", "fp32"),  # an AVX2/AVX512 CPU without native bf16
        (("avx512_bf16",), "", "bf16"),
        (("amx_bf16", "avx512_bf16"), "", "bf16"),
        (("avx512_bf16",), "avx2", "fp32"),  # FCNSEG_CPU_ISA runs a lesser CPU's paths
    ],
)
def test_auto_precision_dispatch_on_both_answers(monkeypatch, flags, cap, expected):
    """Training's `--precision auto` on either CPU class, whatever this machine has."""
    from fcnseg import devices
    from fcnseg.engine.runtime import fast_bf16, resolve_precision

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.ISA_ENV, cap)
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: frozenset({"fma", "avx2", "avx512f", *flags}))
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected and fast_bf16(cpu) == (expected == "bf16")
    assert resolve_precision("fp16", cpu) == "fp16" and resolve_precision("fp32", cpu) == "fp32"
    assert resolve_config("demo").precision == "auto"


def test_isolated_rng_seeds_and_restores_every_cpu_generator():
    """Per-sample augmentation seeds the CPU generators alone: the same draws as after seeding all of
    them, and every global generator restored after the block."""
    seed_state = capture_rng()
    with isolated_rng(7):
        inside = (torch.rand(3), np.random.rand(2), random.random())
    after = (torch.rand(3), np.random.rand(2), random.random())
    restore_rng(seed_state)
    assert torch.equal(torch.rand(3), after[0]) and np.array_equal(np.random.rand(2), after[1])
    assert random.random() == after[2]
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert torch.equal(torch.rand(3), inside[0]) and np.array_equal(np.random.rand(2), inside[1])
    assert random.random() == inside[2]


def test_evaluate_on_cpu_keeps_freed_memory(monkeypatch):
    """Each batch reuses the last one's memory (devices.keep_freed_cpu_memory), as training does."""
    import fcnseg.engine.evaluator as evaluator

    calls = []
    monkeypatch.setattr(evaluator, "keep_freed_cpu_memory", lambda: calls.append(True) or True)
    meta = {"model_kwargs": {"num_classes": 3}, "normalization": "imagenet"}
    evaluate(_ByIndex(), _Toy(2), meta=meta, device="cpu")
    assert calls == [True]
