"""Training images/s of fcnseg's step against plain PyTorch, on both CPU classes.

    python benchmarks/bench_train_step.py [--reps 5] [--workloads demo vgg16-320] [--classes native avx2-fp32]
                                          [--clock wall|cpu]

CPU classes (each measured in its own process, since oneDNN and ATen pick their kernels at start):

  native     this CPU as it is (bf16 where it has AVX512-BF16 / AMX)
  avx2-fp32  an AVX2-only CPU without bf16, emulated here: ONEDNN_MAX_CPU_ISA=AVX2, FCNSEG_CPU_ISA=avx2 and
             ATEN_CPU_CAPABILITY=avx2 (oneDNN and ATen both honour them; `--precision auto` then
             resolves to fp32, as on such a CPU)

Variants, timed side by side (rounds interleave them, so load from other processes hits all alike);
each step is forward + loss + backward + optimiser update:

  plain      what a plain PyTorch loop does: fp32, contiguous NCHW, torch's default optimiser
             implementation (on CPU: one parameter at a time), the workload's reference batch, and
             torch.nn's layers: fcnseg's faster forms (SameConv2d fc6, which skips the kernel taps
             that only meet padding and takes its weight gradient as one matrix product; the narrow
             BatchNorm2d path; Dropout's uniform-draw masks; the bilinear upsampler as matrix
             products) swapped back for the nn.Conv2d / BatchNorm2d / Dropout / ConvTranspose2d
             they equal
  fcnseg     `fcnseg train`'s step with the workload's preset settings: precision `auto` resolved
             for the class, channels_last, the fused optimiser update, the preset's batch size

Workloads:

  demo       the `demo` preset's model (FCN-8s VGG16-BN at 1/8 width, "same" geometry, 96x96,
             AdamW); plain and fcnseg each at batch 8 (the preset before issue 17's batch change) and
             at the preset's batch (16): 'vs plain' is against plain at batch 8
  vgg16-320  FCN-8s VGG16 full width, "caffe" geometry, 320x320, batch 1, the paper's SGD

Also printed for `demo`: the data pipeline's cost per batch (the `shapes` stream with the preset's
augmentation, through the same batch stream as training) as a share of the fcnseg step, and the
whole iteration as `fcnseg train` runs it (drawing the batch, then the step): images/s of the demo.

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared with
other jobs, a thread that is descheduled stalls the others at every parallel region, so wall times
swing by several x while CPU time stays within ~10%; ratios between variants are then comparable
(the images/s column is then per CPU-second of this process, not per wall-clock second). It runs
every step on one thread: with two, a thread waiting for its descheduled partner spins, and the
spinning counts as CPU time (on a loaded machine most of it). So it compares one-thread steps.
The process keeps freed memory in its heap, as `fcnseg train` does (`devices.keep_freed_cpu_memory`);
that is process-wide, so the plain variants get it too and 'vs plain' leaves its gain out.
Random initialisation; score layers get N(0, 0.01) weights so the loss is not trivially log(C).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CLASSES = {
    "native": {},
    "avx2-fp32": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FCNSEG_CPU_ISA": "avx2"},
}
WORKLOADS = {
    "demo": dict(
        backbone="vgg16_bn",
        width=0.125,
        geometry="same",
        size=96,
        plain_batch=8,
        optimizer="adamw",
        lr=1e-3,
        reduction="mean",
        classes=6,
    ),
    "vgg16-320": dict(
        backbone="vgg16",
        width=1.0,
        geometry="caffe",
        size=320,
        plain_batch=1,
        optimizer="sgd",
        lr=1e-10,
        reduction="sum",
        classes=21,
    ),
}


def cpu_header() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}; {os.cpu_count()} cores; ISA: {' '.join(isa) or 'unknown'}"


def make_step(work: dict, *, precision: str, channels_last: bool, fused: bool, batch: int, plain_layers: bool = False):
    import torch

    from fcnseg.devices import autocast, prepare_input
    from fcnseg.engine.losses import segmentation_loss
    from fcnseg.engine.optim import build_optimizer
    from fcnseg.models import create_model

    torch.manual_seed(0)
    model = create_model(
        "fcn8s", work["classes"], backbone=work["backbone"], width=work["width"], geometry=work["geometry"]
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "score" in name and p.ndim > 1:
                p.normal_(0, 0.01)
    if plain_layers:
        from fcnseg.models.layers import to_plain_torch_layers

        to_plain_torch_layers(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(
        model,
        name=work["optimizer"],
        lr=work["lr"],
        momentum=0.99,
        weight_decay=5e-4,
        bias_lr_mult=2.0,
        bias_decay=False,
        fused=fused,
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, work["size"], work["size"]), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, work["classes"], (batch, work["size"], work["size"]), generator=g)
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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def data_ms_per_batch(batch: int, reps: int, clock=time.perf_counter) -> float:
    from fcnseg.config import resolve_config
    from fcnseg.data import TrainTransform, load_dataset
    from fcnseg.engine.batches import training_batches

    cfg = resolve_config("demo")
    stream = training_batches(
        load_dataset("shapes", cfg.train_split),
        transform=TrainTransform(hflip=cfg.hflip),
        batch_size=batch,
        seed=12345,
        start_iteration=0,
        workers=0,
    )
    next(stream)
    start = clock()
    for _ in range(reps):
        next(stream)
    return 1000 * (clock() - start) / reps


def measure(class_name: str, workloads: list[str], reps: int, clock_name: str = "wall") -> list[dict]:
    """Runs in the class's own process: interleaved rounds of every variant of every workload."""
    import torch

    clock = CLOCKS[clock_name]
    from fcnseg.devices import keep_freed_cpu_memory

    keep_freed_cpu_memory()  # as `fcnseg train` does; process-wide, so the plain variants get it too
    if clock_name == "cpu":
        torch.set_num_threads(1)  # see the module docstring

    from fcnseg.config import resolve_config
    from fcnseg.devices import resolve_precision

    default = resolve_precision("auto", torch.device("cpu"))
    demo_batch = resolve_config("demo").batch_size
    rows = []
    for name in workloads:
        work = WORKLOADS[name]
        fast_batch = demo_batch if name == "demo" else work["plain_batch"]
        # plain at its reference batch first (the ratios' base); where the preset's batch differs, both
        # variants at both batches, so the gain from the batch and the gain from the step show apart;
        # fcnseg at the preset's batch last (the data rows are shares of that step)
        batches = sorted({work["plain_batch"], fast_batch}, key=lambda b: (b != work["plain_batch"], b))
        variants = {}
        for batch in batches:
            variants[f"plain (fp32, NCHW, b{batch})"] = dict(
                precision="fp32", channels_last=False, fused=False, batch=batch, plain_layers=True
            )
        for batch in sorted(batches, key=lambda b: b == fast_batch):
            variants[f"fcnseg ({default}, CL, fused, b{batch})"] = dict(
                precision=default, channels_last=True, fused=True, batch=batch
            )
        steps = {label: (make_step(work, **spec), spec["batch"]) for label, spec in variants.items()}
        first_loss = {label: step() for label, (step, _) in steps.items()}  # warm-up: optimiser state, kernels
        times: dict[str, list[float]] = {label: [] for label in steps}
        for _ in range(reps):
            for label, (step, _) in steps.items():
                start = clock()
                step()
                times[label].append(clock() - start)
        for label, (_, batch) in steps.items():
            ms = 1000 * statistics.median(times[label])
            rows.append(
                dict(
                    cls=class_name,
                    workload=name,
                    variant=label,
                    ms=ms,
                    ips=batch * 1000 / ms,
                    loss=first_loss[label],
                    batch=batch,
                )
            )
        if name == "demo":
            data_ms = data_ms_per_batch(fast_batch, max(3, reps), clock)
            step_ms = rows[-1]["ms"]
            for variant, ms in (
                (f"data: shapes stream, b{fast_batch}", data_ms),
                ("iteration: data + fcnseg step", data_ms + step_ms),
            ):
                rows.append(
                    dict(
                        cls=class_name,
                        workload=name,
                        variant=variant,
                        ms=ms,
                        ips=fast_batch * 1000 / ms,
                        loss=float("nan"),
                        batch=fast_batch,
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", "--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=["demo"], choices=list(WORKLOADS))
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall or process CPU time")
    parser.add_argument("--child", choices=list(CLASSES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.workloads, args.reps, args.clock)))
        return

    import torch

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    threads = 1 if args.clock == "cpu" else torch.get_num_threads()
    print(
        f"training step, FCN-8s; torch {torch.__version__}, {threads} thread(s); {cpu_header()}; "
        f"load average before: {load}; median of {args.reps} interleaved rounds; {args.clock} clock"
    )
    print(
        f"{'class':<10} {'workload':<10} {'variant':<34} {'ms/step':>8} {'images/s':>9} {'vs plain':>9} "
        f"{'first loss':>11}"
    )
    for cls in args.classes:
        env = {**os.environ, **CLASSES[cls]}
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        out = subprocess.run(
            [sys.executable, __file__, "--child", cls, "--reps", str(args.reps), "--clock", args.clock]
            + ["--workloads", *args.workloads],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows = json.loads(out.strip().splitlines()[-1])
        for row in rows:
            same = [r for r in rows if r["workload"] == row["workload"]]
            plain = next(r for r in same if r["variant"].startswith("plain"))
            fcnseg = [r for r in same if r["variant"].startswith("fcnseg")][-1]  # at the preset's batch
            measured_step = not row["variant"].startswith(("data", "iteration"))
            if measured_step:
                ratio = f"{row['ips'] / plain['ips']:>8.2f}x"
            elif row["variant"].startswith("data"):
                ratio = f"{row['ms'] / fcnseg['ms']:>8.0%} "
            else:
                ratio = " " * 9
            loss = format(row["loss"], "11.5g") if measured_step else ""
            print(
                f"{cls:<10} {row['workload']:<10} {row['variant']:<34} {row['ms']:>8.0f} {row['ips']:>9.1f} "
                f"{ratio} {loss:>11}",
                flush=True,
            )
    with open("/proc/loadavg") as f:
        print(
            f"load average after: {' '.join(f.read().split()[:3])}; for the data row, 'vs plain' is its "
            "time as a share of the fcnseg step"
        )


if __name__ == "__main__":
    main()
