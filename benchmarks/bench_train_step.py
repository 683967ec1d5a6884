"""One training step of FCN-8s VGG16 (batch 1, 320x320): naive fp32 eager vs the fast path.

    python benchmarks/bench_train_step.py [--size 320] [--reps 5] [--width 1.0] [--geometry caffe]

Variants, timed side by side in one run (rounds interleave them, so load from other processes hits
both alike), each doing forward + loss + backward + SGD update exactly as `fcnseg train` does:

  naive fp32          NCHW float32, no autocast (what `--precision fp32` runs)
  bf16 channels_last  torch.autocast(bfloat16) + channels_last (`--precision bf16 --channels-last`)

Printed: median ms per step, images/s, speed-up over naive, and the loss of the first step of each
(the two must agree to bf16 accuracy). Random initialisation; score layers get N(0, 0.01) weights
so the loss is not trivially log(C).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fcnseg.engine.losses import segmentation_loss
from fcnseg.engine.optim import build_optimizer
from fcnseg.engine.runtime import autocast, prepare_input
from fcnseg.models import create_model

VARIANTS = {"naive fp32": ("fp32", False), "bf16 channels_last": ("bf16", True)}


def make_step(args, precision: str, channels_last: bool, images: torch.Tensor, masks: torch.Tensor):
    torch.manual_seed(0)
    model = create_model("fcn8s", 21, width=args.width, geometry=args.geometry)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "score" in name and p.ndim > 1:
                p.normal_(0, 0.01)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, name="sgd", lr=1e-10, momentum=0.99, weight_decay=5e-4, bias_lr_mult=2.0,
                                bias_decay=False)
    device = torch.device("cpu")

    def step() -> float:
        x = prepare_input(images, "imagenet", device, channels_last)
        with autocast(device, precision):
            logits = model(x)
        loss = segmentation_loss(logits, masks, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--geometry", default="caffe", choices=("caffe", "same"))
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 21, (1, args.size, args.size), generator=g)
    steps = {name: make_step(args, *spec, images, masks) for name, spec in VARIANTS.items()}
    first_loss = {name: step() for name, step in steps.items()}  # warm-up (also allocates optimiser state)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    print(f"FCN-8s VGG16 (width {args.width}, geometry {args.geometry}) training step, batch 1, "
          f"{args.size}x{args.size}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.reps} interleaved rounds")
    print(f"{'variant':<20} {'ms/step':>9} {'images/s':>9} {'speed-up':>9} {'first loss':>12}")
    base = statistics.median(times["naive fp32"])
    for name, samples in times.items():
        ms = statistics.median(samples)
        print(f"{name:<20} {1000 * ms:>9.0f} {1 / ms:>9.2f} {base / ms:>8.2f}x {first_loss[name]:>12.5g}")


if __name__ == "__main__":
    main()
