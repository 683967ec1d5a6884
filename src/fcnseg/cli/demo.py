"""`fcnseg demo`: the main job. Train the `demo` preset on the built-in `shapes` data, evaluate the
best checkpoint on the val split, predict a few val images, and say where everything is."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from fcnseg.errors import FcnsegError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="train + evaluate + predict on the built-in `shapes` data (the main job)", description=__doc__
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument(
        "--model",
        default=None,
        help="model name (default: the demo preset's, fcn8s); fcn32s / fcn16s / fcn8s "
        "give a miniature of the paper's Table 2, unet its concatenating relative",
    )
    p.add_argument("--iterations", type=int, default=None, help="training iterations (default: the preset's)")
    p.add_argument("--predict", type=int, default=4, help="how many val images to predict (default: 4)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=run)


def set_aside_previous_demo(out: Path) -> None:
    """A second `make demo` keeps the previous demo run as OUT.previous instead of refusing to start."""
    if not (out / "last.pt").exists():
        return
    if not (out / "eval.json").exists():  # eval.json is written only by this command
        raise FcnsegError(f"{out} holds a training run that `fcnseg demo` did not write; choose another --out")
    previous = out.with_name(out.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    out.rename(previous)
    print(f"previous demo run moved to {previous}")


# U-Net learns the demo's budget from more, smaller steps: on the preset's 1200 batches of 16 it reached
# 45-58 mean IU over lr 3e-3 to 3e-2, on these 2400 batches of 8 68.1 (the same 19,200 images; one
# torch thread, bf16). The FCNs go the other way (FCN-8s: 55.9 on the preset, 54.9 on this schedule).
SMALL_STEP_SCHEDULE = {"batch_size": 8, "iterations": 2400, "lr": 3e-3, "warmup_iters": 100, "eval_every": 800}
SMALL_STEP_MODELS = ("unet",)


def demo_config(out: str, model: str | None = None, iterations: int | None = None, progress: bool = True):
    """The demo preset with the command's options; another model keeps the budget in images and, if it
    cannot use the preset's backbone (``--model unet``), gets its own encoder; U-Net trains on
    ``SMALL_STEP_SCHEDULE``."""
    from fcnseg.config import resolve_config
    from fcnseg.models import model_entry

    overrides = {"out": str(out), "progress": progress}
    if model:
        overrides["model"] = model
        if resolve_config("demo").backbone not in model_entry(model).backbones:
            overrides["backbone"] = None
        if model in SMALL_STEP_MODELS:
            overrides.update(SMALL_STEP_SCHEDULE)
    if iterations:
        overrides["iterations"] = iterations
    return resolve_config("demo", overrides=overrides)


def run(args: argparse.Namespace) -> int:
    from fcnseg.data import load_dataset
    from fcnseg.engine import evaluate, train
    from fcnseg.engine.rundir import save_sample_strip
    from fcnseg.files import write_bytes, write_json
    from fcnseg.inference import Segmenter
    from fcnseg.viz import display_factor, overlay, png_bytes, save_index_png, upscale

    out = Path(args.out)
    cfg = demo_config(out, args.model, args.iterations, args.progress)
    started = time.perf_counter()
    set_aside_previous_demo(out)

    print(f"[1/3] training {cfg.model} on `{cfg.data}` for {cfg.iterations} iterations -> {out}")
    train(cfg)
    best = out / "best.pt"
    if not best.is_file():
        raise FcnsegError(f"training finished without writing {best}; see {out}/metrics.jsonl")

    print(f"[2/3] evaluating {best} on `{cfg.data}` val")
    val_set = load_dataset(cfg.data, "val")
    metrics = evaluate(best, val_set, precision=cfg.precision, channels_last=cfg.channels_last)
    scalars = {k: metrics[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "loss")}
    write_json(
        out / "eval.json", {**scalars, "per_class_iou": dict(zip(metrics["class_names"], metrics["per_class_iou"]))}
    )
    for name, value in scalars.items():
        print(f"    {name:10s} {value if name == 'loss' else 100 * value:8.2f}{'' if name == 'loss' else ' %'}")

    print(f"[3/3] predicting {args.predict} val images with {best}")
    segmenter = Segmenter.from_checkpoint(best)
    pred_dir = out / "predictions"
    for i in range(min(args.predict, len(val_set))):
        image, truth = (t.numpy() for t in val_set[i])
        image = image.transpose(1, 2, 0)
        mask = segmenter.predict(image)
        save_index_png(mask, segmenter.palette, pred_dir / f"val_{i:03d}_mask.png")
        enlarged = upscale(overlay(image, mask, segmenter.palette), display_factor(image.shape))  # 96 px is tiny
        write_bytes(pred_dir / f"val_{i:03d}_overlay.png", png_bytes(enlarged))
        save_sample_strip(
            image, truth, mask, segmenter.palette, pred_dir / f"val_{i:03d}.png", class_names=segmenter.class_names
        )

    minutes = (time.perf_counter() - started) / 60
    print(
        f"\ndone in {minutes:.1f} min: val mean IU {100 * metrics['mean_iu']:.1f}%\n"
        f"  run directory   {out}/ (config.yaml, metrics.jsonl, plots, samples)\n"
        f"  checkpoints     {out}/best.pt, {out}/last.pt\n"
        f"  evaluation      {out}/eval.json\n"
        f"  predictions     {pred_dir}/ (image | truth | prediction, index PNGs, overlays)\n"
        f"next: fcnseg predict --checkpoint {best} YOUR_IMAGES... --out preds/"
    )
    return 0
