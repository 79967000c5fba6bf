"""The two engines side by side, in the same run: what the WASM engine costs and where it wins.

    python -m bench.wasm_engine [--iterations N] [--seconds S] [--quick]

- compile (once per machine, then cached on disk): build the prelude image from the guest with an
  empty module cache (Cranelift compiles, prelude evaluation, the Wizer-style rewrite), then load
  both from the cache (``Module.deserialize_file``), as every later process does;
- instantiate: a fresh sandbox with the prelude (WASM: a store + an instance of the image; native:
  a context + the prelude evaluated);
- machine sandbox: a fresh sandbox holding the toggle machine, attached (WASM: the image plus the
  machine's pages; native: the prelude and the bundle evaluated);
- cold event: a fresh sandbox + restore + send + persist (``new_instance`` + ``begin``);
- warm event: restore + send + persist in a sandbox created beforehand;
- many instances through the server: DurableEngine (no HTTP), 1,000 instances, 64 concurrent
  clients, group commit on (bench.engine_throughput's workload) — events/s and median latency;
- RSS per live instance: resident memory added by 200 sandboxes that each hold a restored instance.

Prints medians (ms) and writes bench/results/wasm_engine.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine_throughput import engine_run
from runtime import Bundler, Limits, StepRequest, Upload
from runtime.engines import ENGINE_NAMES, make_engine
from runtime.engines.quickjs_native import _NativeVM
from runtime.engines.quickjs_wasm import WasmRuntime, _WasmVM
from runtime.wasm_build import guest_wasm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "wasm_engine.json"
NOW = 1_700_000_000_000


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(fn: Any, iterations: int) -> list[float]:
    out = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def compile_times() -> dict[str, float]:
    """Seconds to build the prelude image with an empty module cache, then to load it cached."""
    saved = os.environ.get("STATEHOST_CACHE")
    guest = guest_wasm()
    with tempfile.TemporaryDirectory(prefix="statehost-bench-cache-") as tmp:
        shutil.copy(guest, Path(tmp) / guest.name)  # the zig build itself is `make setup`'s (about 40 s)
        os.environ["STATEHOST_CACHE"] = tmp
        try:
            t = time.perf_counter()
            cold = WasmRuntime()
            first = time.perf_counter() - t
            t = time.perf_counter()
            WasmRuntime()
            cached = time.perf_counter() - t
        finally:
            if saved is None:
                os.environ.pop("STATEHOST_CACHE", None)
            else:
                os.environ["STATEHOST_CACHE"] = saved
    return {"first_start_s": first, **cold.timings, "cached_start_s": cached}


def engine_steps(name: str, bundler: Bundler, iterations: int) -> dict[str, Any]:
    engine = make_engine(name, bundler.runtime_api)
    rows: dict[str, Any] = {}
    limits = Limits()
    if name == "quickjs-wasm":
        runtime = WasmRuntime.get()
        rows["instantiate"] = _ms(_timed(lambda: _WasmVM(runtime, limits).close(), iterations))
    else:
        rows["instantiate"] = _ms(_timed(lambda: _NativeVM((), limits).close(), iterations))
    for major in (4, 5):
        source = (ROOT / "fixtures" / "machines" / "toggle" / f"v{major}" / "machine.ts").read_bytes()
        prepared = engine.prepare(bundler.bundle(Upload("machine.ts", source, xstate_major=major)))
        rows[f"machine_sandbox_v{major}"] = _ms(_timed(lambda p=prepared: p.open_vm().close(), iterations))
        with prepared.new_instance() as sandbox:
            created = sandbox.begin(StepRequest("create", "bench", {}), NOW)
        request = StepRequest("event", "bench", {}, persisted=created.persisted, event={"type": "toggle"})

        def cold(p: Any = prepared, r: StepRequest = request) -> None:
            with p.new_instance() as sandbox:
                assert sandbox.begin(r, NOW).ok

        rows[f"cold_event_v{major}"] = _ms(_timed(cold, iterations))
        warm = []
        for _ in range(iterations):
            sandbox = prepared.new_instance()
            t = time.perf_counter()
            assert sandbox.begin(request, NOW).ok
            warm.append(time.perf_counter() - t)
            sandbox.close()
        rows[f"warm_event_v{major}"] = _ms(warm)
        if major == 5:
            gc.collect()
            before = _rss()
            live = []
            for _ in range(200):
                sandbox = prepared.new_instance()
                assert sandbox.begin(request, NOW).ok
                live.append(sandbox)
            rows["rss_per_live_instance_kib"] = (_rss() - before) / len(live) / 1024
            for sandbox in live:
                sandbox.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true", help="20 iterations, 1 s of throughput: checks that it works")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.seconds = 20, 1.0
    bundler = Bundler()
    compiled = compile_times()
    steps = {name: engine_steps(name, bundler, args.iterations) for name in ENGINE_NAMES}
    throughput = {}
    with tempfile.TemporaryDirectory(prefix="statehost-bench-", dir=ROOT / "bench") as tmp:
        for name in ENGINE_NAMES:
            instances = 50 if args.quick else 1000
            run = asyncio.run(engine_run(Path(tmp), True, args.seconds, instances, 64, bundler, engine_name=name))
            throughput[name] = run["many_instances"]
    native, wasm = ENGINE_NAMES
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"machine: {machine['platform']}, {machine['cpus']} cpus, Python {machine['python']}")
    print(f"compile (once): {json.dumps({k: round(v, 3) for k, v in compiled.items()})}")
    print(f"{'measure (median)':<34}{native:>16}{wasm:>16}")
    for key in steps[native]:
        unit = "KiB" if key.endswith("kib") else "ms"
        print(f"{key + ' (' + unit + ')':<34}{steps[native][key]:>16.3f}{steps[wasm][key]:>16.3f}")
    for field, label in (("events_per_s", "many instances (events/s)"), ("median_ms", "many instances median (ms)")):
        print(f"{label:<34}{throughput[native][field]:>16.1f}{throughput[wasm][field]:>16.1f}")
    ratio = throughput[native]["events_per_s"] / throughput[wasm]["events_per_s"]
    print(f"native/wasm throughput ratio: {ratio:.2f} (the issue's rule: wasm becomes the default within 1.5)")
    if not args.quick:
        RESULTS.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "args": vars(args),
                    "compile_s": compiled,
                    "steps_ms": steps,
                    "many_instances": throughput,
                    "native_over_wasm_throughput": ratio,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
