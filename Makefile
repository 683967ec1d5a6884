# Every target creates the environment it needs; `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two stamps: `make demo` installs fcnseg with its runtime dependencies only (torch, numpy, pillow, ...),
# which is all the main job needs; `make test`, `make bench` and `make install` add the extras (onnx,
# onnxruntime, serve, tensorboardX) and the test tools (pytest, ruff, import-linter, playwright):
# measured with a cold pip cache (pip --no-cache-dir, torch from the local wheel), the runtime set-up took
# 36 s against 63 s for everything, and .venv is 1.2 GB instead of 1.6 GB.
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(RUNTIME): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints-cpu.txt pins torch to the local CPU wheel so no CUDA package is downloaded
	$(PY) -m pip install -q -c constraints-cpu.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,onnx,tensorboard,serve]"
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(VENV)/bin/fcnseg demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	# the serve page's real-browser test drives Debian's chromium (Playwright cannot download its own here):
	# installed with apt-get under CI=true or as root; elsewhere the test says in one line why it is skipped
	@command -v chromium >/dev/null || { [ "$${CI:-}" = true ] || [ "$$(id -u)" = 0 ]; } \
		&& { command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium); } \
		|| echo "chromium not found and not root: the browser test will be skipped (apt-get install chromium runs it)"
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
