"""Two CPU processes (gloo): distributed evaluation equals single-process evaluation; torchrun training."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _faults import TORCHRUN_FCNSEG
from fcnseg.data import load_dataset
from fcnseg.engine import evaluate
from fcnseg.engine.checkpoint import load_checkpoint, save_checkpoint

#: the smallest training run the torchrun tests start from; each adds its iterations and checks
TINY_DDP_TRAIN = ["train", "--data", "shapes", "--model", "fcn8s", "--width", "0.0625", "--geometry", "same"]

IMAGES = 5  # odd, so the two processes get different numbers of images


def _tiny_checkpoint(path: Path) -> None:
    from fcnseg.models import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 6, "width": 1 / 16, "geometry": "same"}
    model = create_model("fcn8s", **kwargs)
    with torch.no_grad():  # non-zero score layers, so the predictions are not all background
        for name, p in model.named_parameters():
            if "score" in name:
                p.normal_(0, 0.5)
    dataset = load_dataset("shapes", "val")
    meta = {
        "model_name": "fcn8s",
        "model_kwargs": kwargs,
        "class_names": list(dataset.class_names),
        "palette": [list(c) for c in dataset.palette],
        "normalization": "imagenet",
    }
    save_checkpoint(path, model.state_dict(), meta)


def _evaluate_worker(rank: int, world_size: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = evaluate(f"{tmp}/model.pt", load_dataset("shapes", "val"), max_images=IMAGES, device="cpu")
        if rank == 0:
            Path(tmp, "distributed.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(tmp_path):
    _tiny_checkpoint(tmp_path / "model.pt")
    mp.spawn(_evaluate_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    distributed = json.loads((tmp_path / "distributed.json").read_text())
    single = evaluate(tmp_path / "model.pt", load_dataset("shapes", "val"), max_images=IMAGES, device="cpu")
    assert distributed["confusion"] == single["confusion"]
    assert distributed["images"] == single["images"] == IMAGES
    assert 0 < single["mean_iu"] < 1
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "loss"):
        assert distributed[key] == pytest.approx(single[key], rel=1e-6), key  # loss: fp32 sums per process


#: imported by every worker through PYTHONPATH: says so if the interpreter's teardown runs
TEARDOWN_MARKER = "interpreter teardown ran in rank"
SITECUSTOMIZE = f"""
import atexit, os, sys
if "LOCAL_RANK" in os.environ:  # a torchrun worker, not the launcher
    atexit.register(lambda: print("{TEARDOWN_MARKER}", os.environ["LOCAL_RANK"], file=sys.stderr, flush=True))
"""


@pytest.mark.slow
def test_torchrun_training_writes_one_run(tmp_path):
    """...and each worker ends without the interpreter's teardown (where gloo's threads, kept alive by
    DDP past destroy_process_group, sometimes aborted a finished run), its log lines flushed first and
    its data-loading processes ended with it."""
    run = tmp_path / "ddp"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [
        *TORCHRUN_FCNSEG,
        *TINY_DDP_TRAIN,
        "--iterations",
        "4",
        "--batch-size",
        "2",
        "--eval-every",
        "2",
        "--max-val-images",
        "3",
        "--num-samples",
        "1",
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(run),
    ]
    # output to files, not pipes: a leftover loader process would hold a pipe open and be waited for
    with open(tmp_path / "out.txt", "w+") as out, open(tmp_path / "err.txt", "w+") as err:
        returncode = subprocess.run(cmd, stdout=out, stderr=err, env=env, timeout=300).returncode
        survivors = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(run) in _cmdline(pid)]
        err.seek(0)
        stderr = err.read()
    assert returncode == 0, stderr[-2000:]
    assert survivors == []  # no data-loading process outlives the command
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the plain model, not the DDP wrapper
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["kind"] == "val"] == [2, 4]  # written once, by rank 0
    assert json.loads((run / "summary.json").read_text())["final"]["mean_iu"] >= 0
    assert "best mean IU" in stderr  # the last lines rank 0 logs reached the terminal
    assert TEARDOWN_MARKER not in stderr, stderr[-2000:]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # ended meanwhile
        return ""


@pytest.mark.slow
def test_a_fault_on_one_rank_stops_every_rank_with_its_one_line(tmp_path):
    """A real fault on rank 0 only (best.pt cannot be written: a folder stands there); rank 1, whose next
    collective then breaks, exits with rank 0's line instead of a gloo traceback."""
    run = tmp_path / "ddp"
    (run / "best.pt").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        *TORCHRUN_FCNSEG,
        *TINY_DDP_TRAIN,
        "--iterations",
        "4",
        "--eval-every",
        "2",
        "--max-val-images",
        "2",
        "--num-samples",
        "0",
        "--no-progress",
        "--out",
        str(run),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fcnseg train: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "best.pt" in lines[0], proc.stderr[-3000:]
    for noise in ("gloo", "Connection closed", "DistBackendError", "fcnseg/engine"):
        assert noise not in proc.stderr, proc.stderr[-3000:]  # no worker traceback (the launcher's own summary stays)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to each worker; the ranks agree on the stop (one collective per step), save
    last.pt once and log one resume line."""
    import signal
    import time

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        *TORCHRUN_FCNSEG,
        *TINY_DDP_TRAIN,
        "--iterations",
        "100000",
        "--log-every",
        "1",
        "--max-val-images",
        "2",
        "--num-samples",
        "0",
        "--no-progress",
        "--out",
        str(run),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen, deadline = [], time.monotonic() + 200
    try:
        while not any("iteration 2/" in line for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)[-3000:]
            seen.append(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        err = "".join(seen) + proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    stopped = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    assert len(stopped) == 1 and f"--resume {run}" in stopped[0], err[-3000:]
    at = load_checkpoint(run / "last.pt")["train_state"]["iteration"]
    assert at >= 2 and f"at iteration {at} of" in stopped[0]
    for noise in ("gloo", "fcnseg/engine", "error:"):
        assert noise not in err, err[-3000:]


def _folder_with_one_truncated_image(root: Path) -> Path:
    """A folder dataset of four 32x32 val images whose second image is cut short after its header."""
    import io

    import numpy as np
    from PIL import Image

    names = ["background", "disk", "rectangle", "triangle", "line", "ring"]
    (root / "classes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": n, "value": i} for i, n in enumerate(names)]}))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for stem in ("a", "b", "c", "d"):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
            data = buf.getvalue()
            if split == "val" and stem == "b":
                data = data[: len(data) // 3]
            (root / split / "images" / f"{stem}.png").write_bytes(data)
            Image.fromarray(rng.integers(0, 6, (32, 32), dtype=np.uint8)).save(root / split / "masks" / f"{stem}.png")
    return root


@pytest.mark.slow
def test_a_bad_image_on_one_rank_stops_every_evaluate_process_with_its_line(tmp_path):
    """The fault guard is in the CLI's dispatcher, so it holds for every command: under torchrun,
    `evaluate` with one truncated val image (read by one process only) ends both processes with the
    same one line naming the file, not a gloo traceback on the other."""
    _tiny_checkpoint(tmp_path / "model.pt")
    data = _folder_with_one_truncated_image(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN_FCNSEG,
           "evaluate", "--weights", str(tmp_path / "model.pt"), "--data", f"folder:{data}", "--split", "val",
           "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fcnseg evaluate: error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "b.png" in lines[0], proc.stderr[-3000:]
    # torchrun's own launcher reports the failed children (ChildFailedError); no fcnseg frame, no gloo noise
    for noise in ("gloo", "Connection closed", "DistBackendError", "fcnseg/engine", "fcnseg/cli"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
