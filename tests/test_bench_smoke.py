"""The benchmarks still run (their --quick modes). Figures are not checked: speed lives in bench/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    [
        "bench.runtime_steps",
        "bench.engine_throughput",
        "bench.realtime_fanout",
        "bench.wasm_engine",
        "bench.load",
        "bench.hostile",
    ],
)
def test_benchmark_runs_in_quick_mode(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout
