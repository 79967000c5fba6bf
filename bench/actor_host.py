"""Live actors (runtime/actors.py) side by side with today's cold and parked paths, in one run.

    python -m bench.actor_host [--engines quickjs-wasm,quickjs-native] [--quick]

For the toggle fixture machine (XState 4 and 5), on each engine, all in the same process:

- per-event latency (median, ms) of one hot instance:
  cold   = a fresh sandbox + restore + send + persist (``new_instance`` + ``begin``: restore per event);
  parked = a sandbox kept for the instance (``new_window`` + ``deliver``: today's parked path);
  actor  = ``ActorHost.step`` on the live actor + ``committed`` + ``end_window`` (what the server will do);
- events/s with 1,000 and 10,000 instances of the version, each event to a random instance, one
  caller thread: actors spread over ``ActorSettings.vms`` VMs, against (for the same random program)
  the cold path and a parked path with an LRU of 256 sandboxes (the server's default cap);
- RSS per hot actor: resident memory added by creating the N live actors, divided by N (and the
  QuickJS heap per actor, measured in the VMs).

The machine is shared with other work: figures are noisy; compare the columns of one run. Writes
bench/results/actor_host.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtime import ActorHost, ActorSettings, Bundler, Limits, PreparedMachine, StepRequest, Upload
from runtime.engine import SandboxInstance
from runtime.engines import make_engine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "actor_host.json"
NOW = 1_700_000_000_000
AUTH = {"userId": "bench"}
TOGGLE = {"type": "toggle"}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


class Actors:
    """The caller's side of an ActorHost, as the server will be: step, commit (seq + 1), end window."""

    def __init__(self, prepared: PreparedMachine, settings: ActorSettings) -> None:
        self.host = ActorHost(prepared, settings)
        self.seq: dict[str, int] = {}
        self.persisted: dict[str, Any] = {}
        self.now = NOW

    def create(self, name: str) -> None:
        self._run(name, StepRequest("create", name, AUTH))

    def event(self, name: str) -> bool:
        request = StepRequest("event", name, AUTH, persisted=self.persisted[name], event=TOGGLE)
        return self._run(name, request)

    def _run(self, name: str, request: StepRequest) -> bool:
        self.now += 1
        step = self.host.step(name, self.seq.get(name), request, self.now)
        if not step.round.ok:
            raise RuntimeError(step.round.error)
        self.seq[name] = self.seq.get(name, 0) + 1
        self.persisted[name] = step.round.persisted
        self.host.committed(name, self.seq[name])
        self.host.end_window(name, True)
        return step.restored


def one_hot_instance(prepared: PreparedMachine, iterations: int) -> dict[str, float]:
    """The three paths interleaved event by event, so that they see the same load."""
    parked = prepared.new_instance()
    persisted = parked.begin(StepRequest("create", "hot", AUTH), NOW).persisted
    actors = Actors(prepared, ActorSettings(vms=1))
    actors.create("hot")
    cold_s: list[float] = []
    parked_s: list[float] = []
    actor_s: list[float] = []
    for i in range(iterations):
        t = time.perf_counter()
        inst = prepared.new_instance()
        r = inst.begin(StepRequest("event", "hot", AUTH, persisted=persisted, event=TOGGLE), NOW + i)
        inst.close()
        cold_s.append(time.perf_counter() - t)
        persisted = r.persisted
        t = time.perf_counter()
        parked.new_window()
        parked.deliver(TOGGLE, AUTH, NOW + i)
        parked_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        restored = actors.event("hot")
        actor_s.append(time.perf_counter() - t)
        assert not restored
    parked.close()
    actors.host.close()
    return {"cold_ms": _median_ms(cold_s), "parked_ms": _median_ms(parked_s), "actor_ms": _median_ms(actor_s)}


class Parked:
    """Today's server: a parked sandbox per recently used instance (LRU of 256), else a cold one."""

    def __init__(self, prepared: PreparedMachine, persisted: dict[str, Any], cap: int = 256) -> None:
        self.prepared = prepared
        self.persisted = persisted
        self.cap = cap
        self.lru: collections.OrderedDict[str, SandboxInstance] = collections.OrderedDict()
        self.hits = self.events = 0

    def event(self, name: str, now: int) -> None:
        self.events += 1
        inst = self.lru.pop(name, None)
        if inst is not None:
            self.hits += 1
            inst.new_window()
            r = inst.deliver(TOGGLE, AUTH, now)
        else:
            inst = self.prepared.new_instance()
            r = inst.begin(StepRequest("event", name, AUTH, persisted=self.persisted[name], event=TOGGLE), now)
        self.persisted[name] = r.persisted
        self.lru[name] = inst
        if len(self.lru) > self.cap:
            self.lru.popitem(last=False)[1].close()

    def close(self) -> None:
        for inst in self.lru.values():
            inst.close()


def many_instances(
    prepared: PreparedMachine, count: int, events: int, baseline_events: int, vms: int
) -> dict[str, Any]:
    """N live actors, then one random event program; blocks of it alternate between the actor host,
    the cold path and the parked LRU (each keeps its own copy of the instances' snapshots), so that
    all three see the same load."""
    rng = random.Random(count)
    names = [f"i{n}" for n in range(count)]
    program = [rng.choice(names) for _ in range(events)]
    gc.collect()
    before = _rss()
    actors = Actors(prepared, ActorSettings(vms=vms, max_actors_per_vm=max(4096, count)))
    t = time.perf_counter()
    for name in names:
        actors.create(name)
    create_s = time.perf_counter() - t
    gc.collect()
    rss_per_actor = (_rss() - before) / count
    heap = actors.host.measure()
    cold_persisted = dict(actors.persisted)
    parked = Parked(prepared, dict(actors.persisted))
    block = 250
    spent = {"actor": 0.0, "cold": 0.0, "parked": 0.0}
    done = {"actor": 0, "cold": 0, "parked": 0}
    restored = 0
    for start in range(0, len(program), block):
        chunk = program[start : start + block]
        t = time.perf_counter()
        restored += sum(actors.event(name) for name in chunk)
        spent["actor"] += time.perf_counter() - t
        done["actor"] += len(chunk)
        if done["cold"] >= baseline_events:
            continue
        t = time.perf_counter()
        for i, name in enumerate(chunk):
            inst = prepared.new_instance()
            request = StepRequest("event", name, AUTH, persisted=cold_persisted[name], event=TOGGLE)
            cold_persisted[name] = inst.begin(request, NOW + start + i).persisted
            inst.close()
        spent["cold"] += time.perf_counter() - t
        done["cold"] += len(chunk)
        t = time.perf_counter()
        for i, name in enumerate(chunk):
            parked.event(name, NOW + start + i)
        spent["parked"] += time.perf_counter() - t
        done["parked"] += len(chunk)
    stats = actors.host.stats()
    actors.host.close()
    parked.close()
    return {
        "instances": count,
        "vms": vms,
        "events": events,
        "actor_events_per_s": round(done["actor"] / spent["actor"]),
        "actor_restored_events": restored,
        "cold_events_per_s": round(done["cold"] / spent["cold"]),
        "parked256_events_per_s": round(done["parked"] / spent["parked"]),
        "parked256_hit_rate": round(parked.hits / max(parked.events, 1), 3),
        "baseline_events": done["cold"],
        "create_s": round(create_s, 2),
        "rss_per_actor_kib": round(rss_per_actor / 1024, 1),
        "heap_per_actor_kib": round(sum(heap) / count / 1024, 1),
        "live_after": stats.live,
        "evictions": stats.evictions,
    }


HOSTILE = {
    4: """
import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({ id: "h", predictableActionArguments: true, initial: "idle", context: { n: 0 },
  states: { idle: { on: {
    toggle: { actions: assign({ n: (c) => c.n + 1 }) },
    spin: { actions: () => { for (;;) {} } },
  } } } });
""",
    5: """
import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({ id: "h", initial: "idle", context: { n: 0 },
  states: { idle: { on: {
    toggle: { actions: assign({ n: ({ context }) => context.n + 1 }) },
    spin: { actions: () => { for (;;) {} } },
  } } } });
""",
}


def hostile_neighbours(engine: Any, bundler: Bundler, major: int, events: int) -> dict[str, Any]:
    """Neighbours' event latency (median, max) in another VM while a hostile instance spins in VM 0
    until its CPU limit (1 s), against the same neighbours with no hostile instance."""
    limits = Limits(cpu_ms=1_000, entry_wall_ms=10_000)
    prepared = engine.prepare(bundler.bundle(Upload("h.ts", HOSTILE[major].encode(), xstate_major=major)), limits)
    actors = Actors(prepared, ActorSettings(vms=2))
    bad = next(f"h{n}" for n in range(1000) if actors.host.vm_index(f"h{n}") == 0)
    near = [f"n{n}" for n in range(1000) if actors.host.vm_index(f"n{n}") == 1][:50]
    for name in [bad, *near]:
        actors.create(name)

    def run(count: int) -> list[float]:
        out = []
        for i in range(count):
            t = time.perf_counter()
            actors.event(near[i % len(near)])
            out.append(time.perf_counter() - t)
        return out

    quiet = run(events)
    result: dict[str, Any] = {}

    def spin() -> None:
        t = time.perf_counter()
        step = actors.host.step(
            bad,
            actors.seq[bad],
            StepRequest("event", bad, AUTH, persisted=actors.persisted[bad], event={"type": "spin"}),
            NOW,
        )
        result["hostile_outcome"] = step.round.outcome.value
        result["hostile_s"] = round(time.perf_counter() - t, 2)

    thread = threading.Thread(target=spin)
    thread.start()
    noisy: list[float] = []
    while thread.is_alive():
        noisy.extend(run(10))
    thread.join()
    actors.host.close()
    result.update(
        {
            "neighbour_quiet_median_ms": _median_ms(quiet),
            "neighbour_with_hostile_median_ms": _median_ms(noisy),
            "neighbour_with_hostile_max_ms": round(max(noisy) * 1000, 2),
            "neighbour_events_during_hostile": len(noisy),
        }
    )
    return result


def rss_in_fresh_process(engine_name: str, major: int, count: int, vms: int) -> dict[str, float]:
    """RSS added per live actor, measured in a fresh process (in a long-running one, memory freed by
    earlier measurements is reused and hides the growth)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.actor_host", "--rss", f"{engine_name},{major},{count},{vms}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _rss_child(spec: str) -> None:
    engine_name, major, count, vms = spec.split(",")
    bundler = Bundler()
    engine = make_engine(engine_name, bundler.runtime_api)
    source = (ROOT / "fixtures" / "machines" / "toggle" / f"v{major}" / "machine.ts").read_bytes()
    prepared = engine.prepare(bundler.bundle(Upload("machine.ts", source, xstate_major=int(major))))
    actors = Actors(prepared, ActorSettings(vms=int(vms), max_actors_per_vm=max(4096, int(count))))
    for n in range(int(vms) * 4):  # open every VM first: their base is not per-actor memory
        actors.create(f"warm{n}")
    gc.collect()
    before = _rss()
    for n in range(int(count)):
        actors.create(f"i{n}")
    gc.collect()
    heap = actors.host.measure()
    print(
        json.dumps(
            {
                "rss_per_actor_kib": round((_rss() - before) / int(count) / 1024, 1),
                "heap_per_actor_kib": round(sum(heap) / int(count) / 1024, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="quickjs-wasm,quickjs-native")
    parser.add_argument("--majors", default="4,5")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and 1,000 instances only")
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--rss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        _rss_child(args.rss)
        return
    iterations = 100 if args.quick else 400
    sizes = [1_000] if args.quick else [1_000, 10_000]
    bundler = Bundler()
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.actor_host", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "runs": [],
    }
    for engine_name in args.engines.split(","):
        engine = make_engine(engine_name, bundler.runtime_api)
        for major in (int(m) for m in args.majors.split(",")):
            source = (ROOT / "fixtures" / "machines" / "toggle" / f"v{major}" / "machine.ts").read_bytes()
            prepared = engine.prepare(bundler.bundle(Upload("machine.ts", source, xstate_major=major)))
            row: dict[str, Any] = {"engine": engine_name, "major": major}
            row.update(one_hot_instance(prepared, iterations))
            row["hostile"] = hostile_neighbours(engine, bundler, major, iterations)
            print(json.dumps(row), flush=True)
            for count in sizes:
                events = 20_000 if count >= 10_000 else 10_000
                if args.quick:
                    events = 3_000
                many = many_instances(prepared, count, events, min(events, 2_000), args.vms)
                many.update({"engine": engine_name, "major": major})
                fresh = rss_in_fresh_process(engine_name, major, count, args.vms)
                many["fresh_process_rss_per_actor_kib"] = fresh["rss_per_actor_kib"]
                print(json.dumps(many), flush=True)
                row[f"n{count}"] = many
            results["runs"].append(row)
    results["machine"]["load_average_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
