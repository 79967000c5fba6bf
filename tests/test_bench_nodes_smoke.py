"""bench.nodes still runs (its --quick mode): SQLite and 1-3 nodes on a throwaway PostgreSQL. Figures
are not checked: speed lives in bench/. Its own check stays: every 200 is a transition in the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import find_bin_dir, missing_binaries
from tests.support import need_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_nodes_benchmark_runs_in_quick_mode():
    if find_bin_dir() is None:
        need_tool("PostgreSQL", missing_binaries())
    proc = subprocess.run(
        [sys.executable, "-m", "bench.nodes", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout
    for setup in ("sqlite, 1 node", "postgres, 1 node", "postgres, 2 nodes", "postgres, 3 nodes"):
        assert f"| {setup} |" in proc.stdout
