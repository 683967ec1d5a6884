import pytest

from fcnseg.cli import main
from fcnseg.cli.demo import set_aside_previous_demo
from fcnseg.errors import FcnsegError


def test_demo_runs_end_to_end_and_reruns(tmp_path, capsys, monkeypatch):
    # A tiny budget: the point is the whole path (train -> evaluate -> predict -> report), twice.
    from fcnseg.config import sources as config

    real = config.load_preset

    def small(name):
        values = real(name)
        values.update(width=1 / 16, batch_size=2, max_val_images=4, warmup_iters=0, num_samples=1)
        return values

    monkeypatch.setattr(config, "load_preset", small)
    out = tmp_path / "demo"
    for _ in range(2):
        assert main(["demo", "--out", str(out), "--iterations", "3", "--predict", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "previous demo run moved to" in printed and "val mean IU" in printed
    assert (out / "best.pt").is_file() and (out / "eval.json").is_file()
    assert sorted(p.name for p in (out / "predictions").glob("*_mask.png")) == ["val_000_mask.png", "val_001_mask.png"]
    assert (tmp_path / "demo.previous" / "best.pt").is_file()


def test_demo_never_replaces_a_foreign_run(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(FcnsegError, match="did not write"):
        set_aside_previous_demo(tmp_path)
    assert (tmp_path / "last.pt").exists()


# `make demo` installs fcnseg without extras (Makefile: RUNTIME); these must not be needed on its path
EXTRAS_MODULES = ("onnx", "onnxruntime", "onnxscript", "openvino", "tensorboardX", "fastapi", "uvicorn", "pytest")

DEMO_WITHOUT_EXTRAS = """
import sys
for name in {extras!r}:
    sys.modules[name] = None  # importing it now raises ImportError, as where it is not installed
from fcnseg.config import sources
real = sources.load_preset
def small(name):
    values = real(name)
    values.update(width=1 / 16, batch_size=2, max_val_images=2, warmup_iters=0, num_samples=1)
    return values
sources.load_preset = small
from fcnseg.cli import main
sys.exit(main(["demo", "--out", {out!r}, "--iterations", "2", "--predict", "1", "--no-progress"]))
"""


def test_demo_needs_no_optional_extra(tmp_path):
    """The main job runs on fcnseg's runtime dependencies alone: `make demo` installs no extras."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    script = DEMO_WITHOUT_EXTRAS.format(extras=EXTRAS_MODULES, out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "eval.json").is_file() and (out / "predictions" / "val_000_mask.png").is_file()
