"""What the benchmarks share: percentiles, a free loopback port, and the machine they ran on."""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "free_port", "machine_info", "machine_line", "node_version", "percentile"]

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): the smallest sample with at least ``q`` of all at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def free_port() -> int:
    """A free loopback port that `statehost serve` and node's fetch accept (not a WHATWG bad port)."""
    from server.cli import BAD_PORTS

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in BAD_PORTS:
            return port


def wait_for_line(process: subprocess.Popen[str], marker: str, what: str, within_s: float = 120) -> str:
    """Read a server's output until a line containing ``marker``; everything read so far. Raises
    AssertionError naming ``what`` if the process exits or the line does not come in time."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"{what}: the server exited ({process.poll()}):\n{''.join(seen)}")
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{what}: no {marker!r} line within {within_s:.0f} s:\n{''.join(seen)}")


def node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _disk(folder: Path) -> str:
    """The device and filesystem that hold ``folder`` (where the benchmarks' databases live)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    target = str(folder.resolve())
    best: list[str] | None = None
    for fields in mounts:
        point = fields[1]
        if (target == point or target.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) > len(best[1])
        ):
            best = fields
    if best is None:
        return "unknown"
    device, point, fstype = best[0], best[1], best[2]
    kind = ""
    name = Path(device).name
    rotational = Path(f"/sys/block/{name}/queue/rotational")
    if rotational.exists():
        kind = ", rotational" if rotational.read_text().strip() == "1" else ", non-rotational"
    return f"{device} ({fstype}{kind}) mounted on {point}"


def machine_info(folder: Path = ROOT / "bench") -> dict[str, Any]:
    """The machine a benchmark ran on; ``folder`` is where it keeps its databases (for the disk)."""
    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "node": node_version(),
        "disk": _disk(folder),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line, starting with ``machine:`` (the smoke test looks for it)."""
    node = f", node {info['node']}" if info.get("node") else ""
    return (
        f"machine: {info['platform']}, {info['cpus']} cpus ({info['cpu_model']}), {info['memory_gib']} GiB,"
        f" Python {info['python']}{node}; disk {info['disk']}"
    )
