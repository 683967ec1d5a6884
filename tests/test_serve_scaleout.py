"""Scale-out of batch prediction: `torchrun --nproc_per_node 2 -m fcnseg predict` on CPU (gloo)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from _faults import TORCHRUN_FCNSEG
from fcnseg.engine.runtime import shard
from test_serve_api import tiny_checkpoint


def test_shard_is_everything_in_one_process():
    assert shard(list("abcde")) == list("abcde")


@pytest.mark.slow
def test_torchrun_predict_shards_inputs_each_image_exactly_once(tmp_path):
    from fcnseg.inference import Segmenter

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "b.jpg", "c.png", "d.png", "sub/c.png"]  # odd count; two stems collide -> c, c_2
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (20 + i, 30 + 2 * i, 3), np.uint8)).save(src / name)
    out = tmp_path / "out"
    cmd = [
        *TORCHRUN_FCNSEG,
        "predict",
        "--checkpoint",
        str(ckpt),
        str(src),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stderr.splitlines() if "image(s) written" in line]
    # one line for the whole group, counting what every rank did: 5 predictions for 5 distinct files
    # means every input was predicted exactly once
    assert len(summary) == 1, proc.stderr  # log lines may carry a timestamp when piped
    assert summary[0].endswith(f"fcnseg predict: 5 image(s) written to {out} by 2 processes, 0 failed")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "c_2.png", "d.png"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seg = Segmenter.from_checkpoint(ckpt)
        for name, stem in zip(names, ["a", "b", "c", "d", "c_2"]):
            mask = np.asarray(Image.open(out / f"{stem}.png"))
            np.testing.assert_array_equal(mask, seg.predict(src / name))
    finally:
        torch.set_num_threads(threads)
