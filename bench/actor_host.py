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

    python -m bench.actor_host --workers [--engines ...] [--majors ...] [--quick]

compares instead the in-process ActorHost with worker processes (runtime/workers.py), 1 and 2
workers, 1,000 and 10,000 instances: ``--callers`` threads (default 4, the executor's two per CPU)
step disjoint shares of a random event program (step + commit + end_window, as the server will),
in blocks that alternate between the three hosts (all live at once), so that they see the same
load; the medians of the blocks' events/s are reported, with the ratio 2 workers / 1 worker (2.0
would be both cores fully used), the RSS per hot actor (in-process: in a fresh process; workers:
the workers' RSS growth), the CPU per event of the front and of the workers, the cores kept busy
(front + workers CPU over wall time: above 1 means more than one core at once) and the reply
codec's cost (pickle with the allow-list against JSON).
Writes bench/results/actor_host_workers.json.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime import ActorHost, ActorSettings, Bundler, Engine, Limits, PreparedMachine, StepRequest, Upload
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


class Driven:
    """Any live-actor host driven as the server will: step, commit (seq + 1), end window; one caller
    thread per instance at a time (the instances are split between the caller threads)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.seq: dict[str, int] = {}
        self.persisted: dict[str, Any] = {}
        self.restored = 0

    def run(self, name: str, now: int) -> None:
        if name in self.persisted:
            request = StepRequest("event", name, AUTH, persisted=self.persisted[name], event=TOGGLE)
        else:
            request = StepRequest("create", name, AUTH)
        step = self.host.step(name, self.seq.get(name), request, now)
        if not step.round.ok:
            raise RuntimeError(step.round.error)
        self.restored += step.restored
        self.seq[name] = self.seq.get(name, 0) + 1
        self.persisted[name] = step.round.persisted
        self.host.committed(name, self.seq[name])
        self.host.end_window(name, True)


def _in_threads(driven: Driven, shares: list[list[str]], now: int) -> float:
    """Every caller thread steps its share in order; returns the wall time."""
    errors: list[BaseException] = []

    def run(share: list[str]) -> None:
        try:
            for i, name in enumerate(share):
                driven.run(name, now + i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def _cpu_s() -> float:
    """CPU seconds of this process (every thread): the front's cost."""
    t = os.times()
    return t.user + t.system


def _workers_cpu_s(pool: Any) -> float:
    if pool is None:
        return 0.0
    total = 0
    for pid in pool.pids():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def codec_costs(prepared: PreparedMachine) -> dict[str, Any]:
    """Encode + decode of one step reply (the toggle machine's round), pickle with the allow-list
    against JSON (a tagged dataclass tree, rebuilt into the same classes)."""
    import base64
    import dataclasses
    import enum
    import pickle

    from runtime import actors, protocol
    from runtime.limits import Outcome
    from runtime.workers import load_reply

    host = ActorHost(prepared, ActorSettings(vms=1))
    first = host.step("c", None, StepRequest("create", "c", AUTH), NOW)
    host.committed("c", 1)
    host.end_window("c", True)
    step = host.step("c", 1, StepRequest("event", "c", AUTH, persisted=first.round.persisted, event=TOGGLE), NOW + 1)
    host.close()
    reply = (7, True, (step, True, [], []))
    classes: dict[str, Any] = {
        c.__name__: c for c in (*vars(protocol).values(), *vars(actors).values()) if dataclasses.is_dataclass(c)
    }

    def enc(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {"$": type(v).__name__, **{f.name: enc(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, enum.Enum):
            return {"$e": v.value}
        if isinstance(v, tuple):
            return {"$t": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, bytes):
            return {"$b": base64.b64encode(v).decode()}
        return v

    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if "$" in v:
                cls = classes[v["$"]]
                return cls(**{k: dec(x) for k, x in v.items() if k != "$"})
            if "$e" in v:
                return Outcome(v["$e"])
            if "$t" in v:
                return tuple(dec(x) for x in v["$t"])
            if "$b" in v:
                return base64.b64decode(v["$b"])
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    assert dec(json.loads(json.dumps(enc(reply)))) == reply
    assert load_reply(pickle.dumps(reply, protocol=5)) == reply
    n = 2_000
    out: dict[str, Any] = {}
    for name, encode, decode in (
        ("pickle", lambda: pickle.dumps(reply, protocol=5), load_reply),
        ("json", lambda: json.dumps(enc(reply), separators=(",", ":")).encode(), lambda b: dec(json.loads(b))),
    ):
        data = encode()
        t = time.perf_counter()
        for _ in range(n):
            encode()
        enc_us = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            decode(data)
        dec_us = (time.perf_counter() - t) / n * 1e6
        out[name] = {"bytes": len(data), "encode_us": round(enc_us, 1), "decode_us": round(dec_us, 1)}
    return out


def workers_comparison(
    engine_name: str, bundler: Bundler, prepared: PreparedMachine, count: int, events: int, callers: int, vms: int
) -> dict[str, Any]:
    """In-process vs 1 and 2 worker processes, interleaved blocks, medians (module docstring)."""
    from runtime.workers import WorkerPool

    settings = ActorSettings(vms=vms, max_actors_per_vm=max(4096, count))
    names = [f"i{n}" for n in range(count)]
    pools = {k: WorkerPool(engine_name, workers=k, runtime_api=bundler.runtime_api) for k in (1, 2)}
    hosts: dict[str, Any] = {"in_process": ActorHost(prepared, settings)}
    for k, pool in pools.items():
        for i in range(pool.size):
            pool.ping(i)
        hosts[f"workers{k}"] = pool.host(prepared, settings)
    driven = {mode: Driven(host) for mode, host in hosts.items()}
    shares = [names[k::callers] for k in range(callers)]
    row: dict[str, Any] = {"engine": engine_name, "major": prepared.major, "instances": count, "callers": callers}
    try:
        for d in driven.values():  # warm every VM of every host, then create the N actors
            _in_threads(d, [[f"warm{n}-{k}" for n in range(vms * 4)] for k in range(callers)], NOW)
        rss_before = {k: sum(pool.rss()) for k, pool in pools.items()}
        for mode, d in driven.items():
            row[f"{mode}_create_s"] = round(_in_threads(d, shares, NOW), 2)
        for k, pool in pools.items():
            row[f"workers{k}_rss_per_actor_kib"] = round((sum(pool.rss()) - rss_before[k]) / count / 1024, 1)
            row[f"workers{k}_rss_total_mib"] = round(sum(pool.rss()) / 2**20, 1)
        rng = random.Random(count)
        block = max(callers * 100, events // 20)
        rates: dict[str, list[float]] = {mode: [] for mode in driven}
        cpu: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in driven}
        cores: dict[str, list[float]] = {mode: [] for mode in driven}
        # each caller takes the events of its own instances (one caller per instance at a time)
        owner = {name: k for k, share in enumerate(shares) for name in share}
        for start in range(0, events, block):
            program = [rng.choice(names) for _ in range(block)]
            split: list[list[str]] = [[] for _ in range(callers)]
            for name in program:
                split[owner[name]].append(name)
            order = list(driven) if (start // block) % 2 == 0 else list(reversed(driven))
            for mode in order:
                pool = pools.get(int(mode[-1])) if mode.startswith("workers") else None
                front, workers = _cpu_s(), _workers_cpu_s(pool)
                wall = _in_threads(driven[mode], split, NOW + 10 + start)
                rates[mode].append(block / wall)
                cpu[mode][0].append((_cpu_s() - front) / block)
                cpu[mode][1].append((_workers_cpu_s(pool) - workers) / block)
                cores[mode].append((cpu[mode][0][-1] + cpu[mode][1][-1]) * block / wall)
        for mode, values in rates.items():
            row[f"{mode}_events_per_s"] = round(statistics.median(values))
            row[f"{mode}_front_cpu_us_per_event"] = round(statistics.median(cpu[mode][0]) * 1e6)
            row[f"{mode}_cores_busy"] = round(statistics.median(cores[mode]), 2)
            if mode != "in_process":
                row[f"{mode}_worker_cpu_us_per_event"] = round(statistics.median(cpu[mode][1]) * 1e6)
            row[f"{mode}_restored"] = driven[mode].restored
        row["ratio_2_workers_to_1"] = round(
            statistics.median(rates["workers2"]) / statistics.median(rates["workers1"]), 2
        )
        row["ratio_2_workers_to_in_process"] = round(
            statistics.median(rates["workers2"]) / statistics.median(rates["in_process"]), 2
        )
        row["blocks"] = len(rates["in_process"])
    finally:
        for host in hosts.values():
            host.close()
        for pool in pools.values():
            pool.close()
    return row


def _results_header() -> dict[str, Any]:
    """The command and the machine, before any run."""
    return {
        "command": " ".join(["python -m bench.actor_host", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "runs": [],
    }


def _toggles(args: argparse.Namespace, bundler: Bundler) -> Iterator[tuple[str, Engine, int, PreparedMachine]]:
    """The toggle fixture prepared for each engine and XState major asked for."""
    for engine_name in args.engines.split(","):
        engine = make_engine(engine_name, bundler.runtime_api)
        for major in (int(m) for m in args.majors.split(",")):
            source = (ROOT / "fixtures" / "machines" / "toggle" / f"v{major}" / "machine.ts").read_bytes()
            bundle = bundler.bundle(Upload("machine.ts", source, xstate_major=major))
            yield engine_name, engine, major, engine.prepare(bundle)


def main_workers(args: argparse.Namespace) -> None:
    bundler = Bundler()
    sizes = [1_000] if args.quick else [1_000, 10_000]
    results = _results_header()
    for engine_name, _engine, major, prepared in _toggles(args, bundler):
        if not results.get("codec"):
            results["codec"] = codec_costs(prepared)
            print(json.dumps({"codec": results["codec"]}), flush=True)
        for count in sizes:
            events = 4_000 if args.quick else 20_000
            row = workers_comparison(engine_name, bundler, prepared, count, events, args.callers, args.vms)
            fresh = rss_in_fresh_process(engine_name, major, count, args.vms)
            row["in_process_rss_per_actor_kib"] = fresh["rss_per_actor_kib"]
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
    results["machine"]["load_average_end"] = os.getloadavg()
    out = RESULTS.with_name("actor_host_workers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="quickjs-wasm,quickjs-native")
    parser.add_argument("--majors", default="4,5")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and 1,000 instances only")
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--rss", help=argparse.SUPPRESS)
    parser.add_argument("--workers", action="store_true", help="in-process vs worker processes (1 and 2)")
    parser.add_argument("--callers", type=int, default=4, help="--workers: caller threads")
    args = parser.parse_args()
    if args.rss:
        _rss_child(args.rss)
        return
    if args.workers:
        main_workers(args)
        return
    iterations = 100 if args.quick else 400
    sizes = [1_000] if args.quick else [1_000, 10_000]
    bundler = Bundler()
    results = _results_header()
    for engine_name, engine, major, prepared in _toggles(args, bundler):
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
