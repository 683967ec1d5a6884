"""What a training run tells a person and a program while it runs, in one place.

:class:`TrainProgress` owns every report of a run, so the training loop calls it in one line per event:

* a progress bar, only when stderr is a terminal and ``progress`` is on;
* otherwise, every ``log_every`` iterations, a plain log line: iteration, loss, lr, images/s, ETA;
* a run header (data and its size, classes, model and parameters, device, precision, threads,
  run directory), validation lines, and "resuming at iteration N of M";
* RUN/metrics.jsonl (one JSON record per line), RUN/metrics.csv (the same records as a table) and,
  with ``tensorboard``, scalars under RUN/tensorboard/.

Lines go to the "fcnseg" logger (see :mod:`fcnseg.logs`); only rank 0 of a multi-process run reports.
:func:`track` is the same idea for a loop over a dataset (``fcnseg evaluate``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fcnseg.engine.rundir import MetricsLog, metrics_table, read_metrics
from fcnseg.errors import FcnsegError
from fcnseg.files import append_text, write_text
from fcnseg.logs import stderr_is_terminal

log = logging.getLogger(__name__)

VAL_KEYS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "loss")
CSV_COLUMNS = ("iteration", "kind", "loss", "lr", "images_per_s", "pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def scalars(metrics: dict) -> dict:
    """The per-run numbers of an evaluation (no per-class lists or matrices; a head's have no loss)."""
    return {k: metrics[k] for k in VAL_KEYS if k in metrics}


def duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)


class ThroughputMeter:
    """Mean loss and images per second since the last reset."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.losses = time.perf_counter(), 0, []

    def add(self, images: int, loss: float) -> None:
        self.images += images
        self.losses.append(loss)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(1, len(self.losses))

    def rate(self) -> float:
        return self.images / max(1e-9, time.perf_counter() - self.start)


class CsvLog:
    """metrics.csv beside metrics.jsonl: one row per record, the columns of ``CSV_COLUMNS``."""

    def __init__(self, path: Path, records: list[dict] | None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if enabled:  # a fresh run starts the file; a resumed one rewrites it from the kept JSON records
            write_text(path, "".join(self._row(r) for r in [None, *(records or [])]))

    @staticmethod
    def _row(record: dict | None) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if record is None:
            writer.writerow(CSV_COLUMNS)
        else:
            writer.writerow(["" if record.get(k) is None else record[k] for k in CSV_COLUMNS])
        return out.getvalue()

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        append_text(self.path, self._row(record))


def tensorboard_writer(folder: Path, purge_step: int | None = None):
    """A TensorBoard SummaryWriter (tensorboardX, else torch's); one clear line when neither is installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FcnsegError(
                "--tensorboard needs the tensorboard extra: pip install 'fcnseg[tensorboard]' "
                "(or drop --tensorboard; metrics.jsonl and metrics.csv are always written)"
            ) from None
    return SummaryWriter(str(folder), purge_step=purge_step)


class TrainProgress:
    """Every report of one training run (see the module docstring)."""

    def __init__(
        self, run: Path, cfg: Any, *, is_main: bool, start_iteration: int, resumed: bool, elapsed_before: float = 0.0
    ):
        self.cfg, self.is_main = cfg, is_main
        self.total, self.start_iteration, self.resumed = cfg.iterations, start_iteration, resumed
        self.elapsed_before = elapsed_before
        self.session_start = time.perf_counter()
        self.metrics = MetricsLog(
            run / "metrics.jsonl", resume_from=start_iteration if resumed else None, enabled=is_main
        )
        kept = read_metrics(run / "metrics.jsonl") if (resumed and is_main) else []
        self.csv = CsvLog(run / "metrics.csv", kept, enabled=is_main)
        self.tensorboard = (
            tensorboard_writer(run / "tensorboard", start_iteration if resumed else None)
            if getattr(cfg, "tensorboard", False) and is_main
            else None
        )
        self.bar_on = bool(cfg.progress and is_main and stderr_is_terminal())
        self.bar = None
        if self.bar_on:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=start_iteration, dynamic_ncols=True, desc="train")
        self.meter = ThroughputMeter()

    # -------------------------------------------------------------------------------- events

    def header(
        self, train_set: Any, val_set: Any, model: torch.nn.Module, device: torch.device, world_size: int, run: Path
    ) -> None:
        """The lines that say what this run is, before the first iteration."""
        if not self.is_main:
            return
        cfg = self.cfg
        names = list(train_set.class_names)
        shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
        evaluated = len(val_set) if cfg.max_val_images is None else min(len(val_set), cfg.max_val_images)
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        start = (
            f"backbone weights {cfg.backbone_weights}"
            if cfg.backbone_weights
            else f"layers from {cfg.init_from}"
            if cfg.init_from
            else "from scratch"
        )
        if cfg.backbone_weights and cfg.init_from:
            start += f", layers from {cfg.init_from}"
        shape = ", ".join(f"{k} {v}" for k, v in (("geometry", cfg.geometry), ("width", f"{cfg.width:g}")) if v)
        log.info("run directory: %s", run)
        log.info(
            "data: %s, %d %s images, %d %s images (%d evaluated), %d classes: %s",
            cfg.data,
            len(train_set),
            cfg.train_split,
            len(val_set),
            cfg.val_split,
            evaluated,
            len(names),
            shown,
        )
        log.info(
            "model: %s (%s): %s parameters (%s trainable), %s",
            cfg.model,
            shape,
            _millions(params),
            _millions(trainable),
            start,
        )
        log.info(
            "device: %s, precision %s, channels_last %s, %d threads, %d process%s x batch %d",
            device,
            cfg.precision,
            "on" if cfg.channels_last else "off",
            torch.get_num_threads(),
            world_size,
            "" if world_size == 1 else "es",
            cfg.batch_size,
        )
        every = f", validation every {cfg.eval_every}" if cfg.eval_every else ", validation at the end"
        log.info(
            "training: %d iterations, %s lr %g (%s)%s, log every %d",
            self.total,
            cfg.optimizer,
            cfg.lr,
            cfg.lr_schedule,
            every,
            cfg.log_every,
        )
        if self.resumed:
            log.info(
                "resuming at iteration %d of %d (%s trained before)",
                self.start_iteration,
                self.total,
                duration(self.elapsed_before),
            )

    def step(self, iteration: int, images: int, loss: float, lr: float) -> None:
        """After each optimiser step: the bar, and every ``log_every`` (and the last) a record and a line."""
        self.meter.add(images, loss)
        every = self.cfg.log_every
        if (every > 0 and iteration % every == 0) or iteration == self.total:
            record = {
                "iteration": iteration,
                "kind": "train",
                "loss": self.meter.mean_loss(),
                "lr": lr,
                "images_per_s": self.meter.rate(),
            }
            self.record(record)
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}", img_s=f"{record['images_per_s']:.1f}"
                )
            elif self.is_main:
                log.info(
                    "iteration %d/%d  loss %.4g  lr %.3g  %.1f img/s  ETA %s",
                    iteration,
                    self.total,
                    record["loss"],
                    lr,
                    record["images_per_s"],
                    duration(self.eta(iteration)),
                )
            self.meter.reset()
        if self.bar is not None:
            self.bar.update(1)

    def validation(self, iteration: int, metrics: dict, best: bool) -> None:
        """After each evaluation: the record and one line."""
        self.record({"iteration": iteration, "kind": "val", **scalars(metrics)})
        if self.is_main:
            heads = "".join(f"  {h} pixel acc {100 * m['pixel_acc']:.1f}" for h, m in metrics.get("heads", {}).items())
            log.info(
                "iteration %d/%d  val mean IU %.1f  pixel acc %.1f  loss %.4f%s%s",
                iteration,
                self.total,
                100 * metrics["mean_iu"],
                100 * metrics["pixel_acc"],
                metrics["loss"],
                heads,
                "  (best so far)" if best else "",
            )

    def record(self, record: dict) -> None:
        self.metrics.append(record)
        self.csv.append(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["iteration"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    # -------------------------------------------------------------------------------- time

    def total_seconds(self) -> float:
        """Training time of the whole run, earlier sessions of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def eta(self, iteration: int) -> float:
        done = iteration - self.start_iteration
        spent = time.perf_counter() - self.session_start
        return (self.total - iteration) * spent / done if done > 0 else 0.0


def log_summary(cfg: Any, state: dict, metrics: dict, class_names: list[str], run: Path, seconds: float) -> None:
    """The final lines of a run: whole-run time, best mean IU, the metrics table, where it all is."""
    log.info(
        "%s on %s: %d iterations in %s; best mean IU %.1f at iteration %d\n%s\nrun directory: %s",
        cfg.model,
        cfg.data,
        state["iteration"],
        duration(seconds),
        100 * state["best_mean_iu"],
        state["best_iteration"],
        metrics_table(metrics, class_names),
        run,
    )


def track(items: Iterable, total: int, desc: str, enabled: bool = True, unit: str = "it") -> Iterator:
    """Iterate ``items`` with a bar on a terminal, or a log line at about every 10% otherwise."""
    if not enabled:
        yield from items
        return
    if stderr_is_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return
    step = max(1, total // 10)
    start = time.perf_counter()
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == total:
            spent = time.perf_counter() - start
            log.info("%s: %d/%d %s, %.1f %s/s", desc, i, total, unit, i / max(spent, 1e-9), unit)
