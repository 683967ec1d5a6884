"""Run every benchmarks/bench_*.py in turn with this Python (what `make bench` does).

    python benchmarks/run_all.py [NAME ...]      e.g. run_all.py inference memory

Each benchmark prints its own tables; this script adds a header per benchmark, its wall time, and
exits non-zero if any benchmark failed. Benchmarks are measurements, never pass/fail speed checks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(names: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    failed = []
    for script in scripts:
        print(f"\n===== {script.name} =====", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)])
        print(
            f"===== {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'}, "
            f"{time.perf_counter() - start:.0f} s =====",
            flush=True,
        )
        if rc:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
