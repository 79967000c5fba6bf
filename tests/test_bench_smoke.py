"""The benchmarks still run (their --quick modes). Figures are not checked: speed lives in bench/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import which_or_need

ROOT = Path(__file__).resolve().parent.parent


NEEDS_NODE = {"bench.runtime_steps": "node:vm", "bench.load": "the Node.js baseline server (bench/baseline)"}


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
    if module in NEEDS_NODE:  # without node these would leave their baseline column out, quietly
        which_or_need("node", f"{module} compares with {NEEDS_NODE[module]} (install Node.js 20 or later)")
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout
