"""Per-event cost of the sandbox, side by side with the same bundle stepped by XState in node.

    python -m bench.runtime_steps [--iterations N] [--quick]

For the toggle fixture, XState 4 and 5:

- cold step: a fresh sandbox (context + prelude + bundle) + restore + send + persist;
- warm step: restore + send + persist in a sandbox that was created beforehand (what a pool of
  pre-created sandboxes would cost on the event's critical path);
- create+event: the full host path through the settle loop (worker threads, asyncio, JSON
  round trips of each commit), creating an instance and sending one event.

The node baseline does the same with node:vm contexts. Prints a table of medians (ms), p90 and
the ratio statehost/node, and writes bench/results/runtime_steps.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

from runtime import (
    Bundler,
    Executor,
    FakeClock,
    FetchPolicy,
    QuickJSNativeEngine,
    StepRequest,
    Upload,
)
from runtime.local import LocalInstance
from server.fetch import AiohttpTransport

from .common import ROOT, machine_info, machine_line, percentile

RESULTS = ROOT / "bench" / "results" / "runtime_steps.json"


def _median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), percentile(ordered, 0.9)


def _sandbox_steps(prepared: Any, iterations: int) -> dict[str, list[float]]:
    now = 1_700_000_000_000
    with prepared.new_instance() as sandbox:
        created = sandbox.begin(StepRequest("create", "bench", {}), now)
    request = StepRequest("event", "bench", {}, persisted=created.persisted, event={"type": "toggle"})
    cold, warm = [], []
    for _ in range(iterations):
        t = time.perf_counter()
        with prepared.new_instance() as sandbox:
            result = sandbox.begin(request, now)
        cold.append((time.perf_counter() - t) * 1000)
        assert result.ok and result.transitions, result.error
        sandbox = prepared.new_instance()
        t = time.perf_counter()
        sandbox.begin(request, now)
        warm.append((time.perf_counter() - t) * 1000)
        sandbox.close()
    return {"cold": cold, "warm": warm}


async def _create_event(prepared: Any, iterations: int) -> list[float]:
    transport = AiohttpTransport(FetchPolicy())
    samples = []
    async with Executor(workers=2) as executor:
        for i in range(iterations):
            inst = LocalInstance(prepared, executor, transport, FakeClock(), name=f"i{i}")
            t = time.perf_counter()
            await inst.create()
            await inst.send("toggle")
            samples.append((time.perf_counter() - t) * 1000)
    await transport.close()
    return samples


def _node(bundle_code: str, major: int, iterations: int) -> dict[str, list[float]] | None:
    node = shutil.which("node")
    if node is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
        f.write(bundle_code)
    try:
        out = subprocess.run(
            [
                node,
                str(ROOT / "bench" / "node_steps.mjs"),
                "--bundle",
                f.name,
                "--major",
                str(major),
                "--iterations",
                str(iterations),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    finally:
        os.unlink(f.name)
    data: dict[str, list[float]] = json.loads(out.stdout)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="20 iterations: checks that the benchmark works")
    args = parser.parse_args()
    iterations = 20 if args.quick else args.iterations

    bundler = Bundler()
    engine = QuickJSNativeEngine(bundler.runtime_api)
    rows = []
    for major in (4, 5):
        source = (ROOT / "fixtures" / "machines" / "toggle" / f"v{major}" / "machine.ts").read_bytes()
        bundle = bundler.bundle(Upload("machine.ts", source, xstate_major=major))
        prepared = engine.prepare(bundle)
        ours = _sandbox_steps(prepared, iterations)
        ours["create_event"] = asyncio.run(_create_event(prepared, iterations))
        baseline = _node(bundle.code, major, iterations)
        for kind in ("cold", "warm", "create_event"):
            med, p90 = _median_p90(ours[kind])
            row: dict[str, Any] = {
                "xstate": major,
                "measure": kind,
                "statehost_median_ms": med,
                "statehost_p90_ms": p90,
            }
            if baseline is not None:
                bmed, bp90 = _median_p90(baseline[kind])
                row.update(node_median_ms=bmed, node_p90_ms=bp90, ratio=med / bmed if bmed else None)
            rows.append(row)

    machine = {**machine_info(), "engine": engine.name, "iterations": iterations}
    print(machine_line(machine))
    print(f"{'XState':<7}{'measure':<14}{'statehost ms':>14}{'p90':>8}{'node ms':>10}{'p90':>8}{'ratio':>8}")
    for r in rows:
        node_part = (
            f"{r['node_median_ms']:>10.3f}{r['node_p90_ms']:>8.3f}{r['ratio']:>7.1f}x"
            if "node_median_ms" in r
            else f"{'-':>10}{'-':>8}{'-':>8}"
        )
        print(
            f"v{r['xstate']:<6}{r['measure']:<14}{r['statehost_median_ms']:>14.3f}{r['statehost_p90_ms']:>8.3f}{node_part}"
        )
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
