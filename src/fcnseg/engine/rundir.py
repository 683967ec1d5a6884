"""What a run leaves on disk, each in a small helper:

RUN/config.yaml          the resolved configuration
RUN/last.pt, best.pt     checkpoints (best by mean IU)
RUN/metrics.jsonl        one JSON record per log line: {"iteration", "kind": "train"|"val", ...}
RUN/plots/*.png          loss and mean-IU curves, confusion matrix
RUN/samples/*.png        val images as image | truth | prediction
RUN/summary.json         final metrics and where everything is
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fcnseg.errors import FcnsegError
from fcnseg.files import append_text, clean_stale_temps, to_json, write_bytes, write_error, write_json, write_text  # noqa: F401

RUN_SUBDIRS = ("", "plots", "samples")


class RunLock:
    """The one writer of a run directory: an exclusive ``flock`` on RUN/.lock, held until ``release``
    or until the process ends (the OS drops it even after kill -9, so no stale lock is left). The
    file holds the owner's pid for the message a second writer gets; it is never replaced (the lock
    belongs to the file's inode), so it is written in place, not through files.atomic_write."""

    def __init__(self, run: Path):
        import fcntl

        self.path = run / ".lock"
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self.fd)
            raise FcnsegError(
                f"{run} is in use by another training (pid {owner}): one run directory has one "
                "writer; wait for it to end (or stop it), or choose another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def check_new_run_dir(run: Path, resuming: bool) -> None:
    """A new run never goes into a folder holding another run's checkpoint (checked before any work,
    and again under the lock)."""
    if not resuming and (run / "last.pt").exists():
        raise FcnsegError(
            f"{run} already holds a run (last.pt); continue it with --resume {run} or choose another --out"
        )


def prepare_run_dir(out: str | os.PathLike, resuming: bool) -> tuple[Path, RunLock, bool]:
    """Create the run directory (or check the one being resumed), take its lock (one writer per run
    directory), and prove it is writable. Returns (run, lock, created: the folder is new)."""
    run = Path(out)
    created = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run, exc) from None
    lock = RunLock(run)
    try:
        check_new_run_dir(run, resuming)
        for sub in RUN_SUBDIRS:  # temporary files a kill -9 left in the middle of a write (under the lock:
            clean_stale_temps(run / sub)  # never another live writer's)
        write_text(run / ".write-test", "ok")
        (run / ".write-test").unlink()
    except BaseException:
        lock.release()
        raise
    return run, lock, created


def remove_new_run_dir(run: Path) -> None:
    """Remove a run directory this process created, for a run that failed before its first step: it
    holds only what set-up wrote (config, empty logs, the lock), nothing worth keeping."""
    import shutil

    shutil.rmtree(run, ignore_errors=True)


class MetricsLog:
    """Append-only JSONL log. On resume, records after the checkpoint's iteration are dropped, so a
    resumed run's log equals an uninterrupted one's. A disabled log (ranks other than 0) writes nothing."""

    def __init__(self, path: Path, resume_from: int | None = None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_from is not None and path.exists():
            kept = [r for r in read_metrics(path) if r["iteration"] <= resume_from]
            write_text(path, "".join(to_json(r, indent=None) + "\n" for r in kept))
        elif resume_from is None:
            write_text(path, "")

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        append_text(self.path, to_json(record, indent=None) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file (a last line cut short by a kill is skipped)."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure into memory, then write it atomically; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """loss.png (train and val loss) and mean_iu.png from the metrics log."""
    plt = _pyplot()
    # absent values are null in the log (JSON has no NaN): plot them as gaps
    records = [{k: (math.nan if v is None else v) for k, v in r.items()} for r in records]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="train")
    ax.plot([r["iteration"] for r in val], [r["loss"] for r in val], "o-", label="val")
    ax.set(xlabel="iteration", ylabel="loss", title="loss")
    if train and all(r["loss"] > 0 for r in train):
        ax.set_yscale("log")
    ax.legend()
    paths.append(save_figure(fig, out_dir / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["iteration"] for r in val], [100 * r["mean_iu"] for r in val], "o-")
    ax.set(xlabel="iteration", ylabel="mean IU (%)", title="validation mean IU")
    paths.append(save_figure(fig, out_dir / "mean_iu.png"))
    return paths


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows truth, columns prediction) as a heat map."""
    plt = _pyplot()
    mat = np.asarray(confusion, dtype=np.float64)
    rows = mat / np.maximum(mat.sum(1, keepdims=True), 1)
    n = len(mat)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    names = list(class_names) or [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if rows[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{rows[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="prediction", ylabel="truth", title="confusion (row-normalised)")
    fig.colorbar(im, fraction=0.046)
    return save_figure(fig, path)


def save_sample_strip(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    palette,
    path: Path,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    min_panel: int = 256,
) -> Path:
    """image | truth | prediction side by side, titled, with a colour legend (class names) underneath.

    ``image`` is HxWx3 uint8, ``truth`` and ``pred`` HxW label maps. Small images are enlarged by an
    integer factor (nearest neighbour) until a panel is at least ``min_panel`` pixels on its short
    side. Separators are white; ignore pixels in the truth are a grey checkerboard (in the legend as
    "ignore (255)"). Without ``class_names`` the legend says "class 0", "class 1", ...
    """
    from fcnseg.files import write_bytes
    from fcnseg.palette import class_colours
    from fcnseg.viz import colorize, display_factor, legend, paint_ignore, png_bytes, upscale

    palette = class_colours(palette, len(class_names) if class_names is not None else len(palette or ()))
    factor = display_factor(image.shape, min_panel)
    ignored = np.asarray(truth) == ignore_index
    panels = [
        upscale(np.asarray(image)[..., :3], factor),
        paint_ignore(upscale(colorize(truth, palette, ignore_index), factor), upscale(ignored, factor)),
        upscale(colorize(pred, palette, ignore_index), factor),
    ]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(len(palette))]
    labels = np.unique(np.concatenate([np.ravel(truth), np.ravel(pred)]))
    shown = range(len(names)) if len(names) <= 12 else [int(i) for i in labels if i < len(names)]
    strip = titled_row(panels, ("image", "truth", "prediction"))
    key = legend([names[i] for i in shown], [palette[i] for i in shown], strip.shape[1], ignore=bool(ignored.any()))
    return write_bytes(path, png_bytes(np.concatenate([strip, key], axis=0)))


def titled_row(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = 6, size: int = 18) -> np.ndarray:
    """Equal-height RGB panels side by side on white, each with its title centred above it."""
    from PIL import Image, ImageDraw

    from fcnseg.viz import font

    f = font(size)
    height = max(p.shape[0] for p in panels)
    head = size + 2 * gap
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) + 1)
    canvas = Image.new("RGB", (width, head + height + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for panel, title in zip(panels, titles):
        canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, head))
        left, top, right, bottom = f.getbbox(title)
        draw.text((x + (panel.shape[1] - right - left) // 2, (head - top - bottom) // 2), title, fill=(0, 0, 0), font=f)
        x += panel.shape[1] + gap
    return np.asarray(canvas)


def _pct(x: float) -> str:
    return "  n/a" if x is None or math.isnan(x) else f"{100 * x:5.1f}"


def metrics_table(metrics: dict, class_names: Sequence[str] = ()) -> str:
    """A plain-text summary: the four metrics, the loss, and per-class IoU / accuracy; then the same
    for each extra head (``metrics["heads"]``)."""
    lines = [
        f"pixel acc {_pct(metrics['pixel_acc'])}   mean acc {_pct(metrics['mean_acc'])}   "
        f"mean IU {_pct(metrics['mean_iu'])}   f.w. IU {_pct(metrics['fw_iu'])}   "
        f"loss {metrics.get('loss', float('nan')):.4f}",
    ]
    lines += _class_rows(metrics, class_names)
    for head, scores in metrics.get("heads", {}).items():  # a second head (SIFT Flow's geometric classes)
        lines.append(
            f"{head} head: pixel acc {_pct(scores['pixel_acc'])}   mean acc {_pct(scores['mean_acc'])}   "
            f"mean IU {_pct(scores['mean_iu'])}   f.w. IU {_pct(scores['fw_iu'])}"
        )
        lines += _class_rows(scores, scores.get("class_names", ()))
    return "\n".join(lines)


def _class_rows(metrics: dict, class_names: Sequence[str]) -> list[str]:
    names = list(class_names) or [str(i) for i in range(len(metrics["per_class_iou"]))]
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}    IoU    acc"]
    for name, iou, acc in zip(names, metrics["per_class_iou"], metrics["per_class_acc"]):
        lines.append(f"{name:<{width}}  {_pct(iou)}  {_pct(acc)}")
    return lines
