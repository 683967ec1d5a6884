"""Training images/s, fp32 vs the default precision: the demo preset and FCN-8s VGG16 320x320 batch 1.

    python benchmarks/bench_train_step.py [--reps 5] [--workloads demo vgg16-320]

Workloads (each step is forward + loss + backward + optimiser update exactly as `fcnseg train` does):

  demo       the `demo` preset's model and batch: FCN-8s VGG16 at 1/8 width, "same" geometry,
             96x96, batch 8, AdamW, channels_last
  vgg16-320  FCN-8s VGG16 full width, "caffe" geometry, 320x320, batch 1, the paper's SGD

Precisions, timed side by side (rounds interleave them, so load from other processes hits both alike):

  fp32       NCHW float32, no autocast (`--precision fp32`)
  default    `--precision auto` (bf16 autocast where the CPU has native bf16, else fp32) + channels_last

Printed: median ms per step, images/s, speed-up over fp32, and the loss of the first step of each
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
from fcnseg.engine.runtime import autocast, prepare_input, resolve_precision
from fcnseg.models import create_model

WORKLOADS = {
    "demo": dict(width=0.125, geometry="same", size=96, batch=8, optimizer="adamw", lr=1e-3,
                 reduction="mean"),
    "vgg16-320": dict(width=1.0, geometry="caffe", size=320, batch=1, optimizer="sgd", lr=1e-10,
                      reduction="sum"),
}


def make_step(work: dict, precision: str, channels_last: bool, images: torch.Tensor, masks: torch.Tensor):
    torch.manual_seed(0)
    model = create_model("fcn8s", 21, width=work["width"], geometry=work["geometry"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "score" in name and p.ndim > 1:
                p.normal_(0, 0.01)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, name=work["optimizer"], lr=work["lr"], momentum=0.99, weight_decay=5e-4,
                                bias_lr_mult=2.0, bias_decay=False)
    device = torch.device("cpu")

    def step() -> float:
        x = prepare_input(images, "imagenet", device, channels_last)
        with autocast(device, precision):
            logits = model(x)
        loss = segmentation_loss(logits, masks, reduction=work["reduction"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", "--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = parser.parse_args()
    default = resolve_precision("auto", torch.device("cpu"))
    print(f"training step, FCN-8s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; default precision here: {default} + channels_last; "
          f"median of {args.reps} interleaved rounds")
    print(f"{'workload':<10} {'precision':<22} {'ms/step':>9} {'images/s':>9} {'speed-up':>9} {'first loss':>12}")
    for name in args.workloads:
        work = WORKLOADS[name]
        g = torch.Generator().manual_seed(0)
        shape = (work["batch"], 3, work["size"], work["size"])
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        masks = torch.randint(0, 21, (work["batch"], work["size"], work["size"]), generator=g)
        variants = {"fp32": ("fp32", False), f"default ({default} + CL)": (default, True)}
        steps = {label: make_step(work, *spec, images, masks) for label, spec in variants.items()}
        first_loss = {label: step() for label, step in steps.items()}  # warm-up (allocates optimiser state)
        times: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(args.reps):
            for label, step in steps.items():
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        for label, samples in times.items():
            ms = statistics.median(samples)
            print(f"{name:<10} {label:<22} {1000 * ms:>9.0f} {work['batch'] / ms:>9.2f} {base / ms:>8.2f}x "
                  f"{first_loss[label]:>12.5g}", flush=True)


if __name__ == "__main__":
    main()
