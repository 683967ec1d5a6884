"""Training runs under real faults: a real SIGTERM / SIGINT in the middle of training, a real second
process writing into the same run directory, a kill -9 holding the lock, a config.yaml edited
between a stop and a resume, and a run that fails before its first step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _faults import TINY_TRAIN, assert_one_line_error, cli, fake_run, folder_dataset, run_main
from fcnseg.engine.checkpoint import load_checkpoint

LONG = ["--data", "shapes", *TINY_TRAIN, "--iterations", "100000", "--log-every", "1", "--max-val-images", "2"]


def start_training(run: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fcnseg", "train", *LONG, *args, "--out", str(run)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def wait_for_iterations(proc: subprocess.Popen, count: int, timeout: float = 120) -> list[str]:
    """Read the trainer's stderr until ``count`` progress lines ("iteration N") have appeared."""
    lines, seen, deadline = [], 0, time.monotonic() + timeout
    while seen < count:
        assert time.monotonic() < deadline, "".join(lines)[-2000:]
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "".join(lines)[-2000:]
        lines.append(line)
        seen += "loss" in line and "it/" not in line and "iteration" in line
    return lines


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_pt_and_resume_continues_there(tmp_path, sig, code):
    run = tmp_path / "R"
    first = start_training(run)
    try:
        wait_for_iterations(first, 2)
        if sig == signal.SIGTERM:  # meanwhile a second training into the same --out is refused
            second = cli("train", *LONG, "--out", run, timeout=120)
            assert_one_line_error(second, str(run), "in use by another training", f"pid {first.pid}")
        os.kill(first.pid, sig)
        err = first.communicate(timeout=120)[1]
    finally:
        first.kill()
    assert first.returncode == code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    stopped = [line for line in err.splitlines() if "stopped by" in line]
    assert len(stopped) == 1 and signal.Signals(sig).name in stopped[0], err[-2000:]
    assert f"resume with `fcnseg train --resume {run}`" in stopped[0]
    at = load_checkpoint(run / "last.pt")["train_state"]["iteration"]
    assert at >= 2 and f"at iteration {at} of" in stopped[0]
    if sig != signal.SIGTERM:
        return
    resumed = cli("train", "--resume", run, "--iterations", at + 1, "--max-val-images", "1", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at iteration {at} of {at + 1}" in resumed.stderr
    assert load_checkpoint(run / "last.pt")["train_state"]["iteration"] == at + 1


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    from fcnseg.engine.rundir import prepare_run_dir

    run = tmp_path / "R"
    script = (
        f"import os, signal\nfrom fcnseg.engine.rundir import prepare_run_dir\n"
        f"prepare_run_dir({str(run)!r}, resuming=False)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL and (run / ".lock").is_file()
    _, lock, created = prepare_run_dir(run, resuming=False)  # the OS dropped the dead process's lock
    assert not created
    lock.release()


def test_edited_config_yaml_is_refused_unless_applied_as_options(tmp_path, capsys):
    from fcnseg.engine.checkpoint import resume_config

    run = fake_run(tmp_path / "R")
    values = yaml.safe_load((run / "config.yaml").read_text())
    values.update(iterations=50, lr=0.01)
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    edited = (run / "config.yaml").read_bytes()
    line = assert_one_line_error(
        run_main(capsys, "train", "--resume", run),
        "config.yaml was edited",
        "iterations: 2 -> 50",
        "lr: 0.001 -> 0.01",
        f"fcnseg train --resume {run} --iterations 50 --lr 0.01",
    )
    assert "cannot resume" in line
    assert (run / "config.yaml").read_bytes() == edited  # never overwritten
    assert_one_line_error(run_main(capsys, "train", "--resume", run, "--iterations", "50"), "lr: 0.001 -> 0.01")
    cfg = resume_config(run, {"iterations": 50, "lr": 0.01})  # the edits, applied explicitly
    assert (cfg.iterations, cfg.lr, cfg.resume) == (50, 0.01, str(run))
    assert resume_config(run, {"iterations": 50, "lr": 0.01, "eval_every": 5}).eval_every == 5


def test_run_failing_before_its_first_step_leaves_no_folder(tmp_path, capsys):
    run = tmp_path / "R"
    proc = run_main(
        capsys,
        "train",
        "--data",
        "shapes",
        *TINY_TRAIN,
        "--iterations",
        "2",
        "--class-weights",
        tmp_path / "missing.txt",
        "--out",
        run,
    )
    assert_one_line_error(proc, "missing.txt")
    assert not run.exists()


def test_backbone_download_waits_for_the_data_check(tmp_path, monkeypatch, capsys):
    """A registered --backbone-weights name is fetched only once the data is known good."""
    import fcnseg.weights as weights

    fetched = []
    monkeypatch.setattr(weights, "backbone_file", lambda name: fetched.append(name) or 1 / 0)
    data = folder_dataset(tmp_path / "d")
    (data / "val" / "masks" / "val1.png").write_bytes(b"not a png")
    proc = run_main(
        capsys,
        "train",
        "--data",
        f"folder:{data}",
        *TINY_TRAIN,
        "--backbone",
        "vgg16",
        "--backbone-weights",
        "vgg16",
        "--out",
        tmp_path / "R",
    )
    assert_one_line_error(proc, "val1.png")
    assert fetched == [] and not (tmp_path / "R").exists()


def test_resume_refuses_a_last_pt_with_changed_bytes(tmp_path, capsys):
    import torch

    run = fake_run(tmp_path / "R")
    rng = load_checkpoint(run / "last.pt")["train_state"]["rng"]["torch"].numpy().tobytes()
    data = bytearray((run / "last.pt").read_bytes())
    at = data.find(rng[:64])
    assert at > 0
    data[at + 3000] ^= 0x01
    (run / "last.pt").write_bytes(bytes(data))
    assert torch.load(run / "last.pt", weights_only=True)  # torch itself does not notice
    assert_one_line_error(run_main(capsys, "train", "--resume", run), str(run / "last.pt"), "corrupt")
