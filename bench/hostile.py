"""Hostile machines through a running server: ordinary clients' latency with and without them.

    python -m bench.hostile [--engine quickjs-wasm|quickjs-native|both] [--machines 50]
                            [--clients 4] [--hostile-clients 2] [--seconds 15] [--windows 2]
                            [--cpu-ms 200] [--workers N] [--quick]

Starts ``statehost serve`` (SQLite, loopback) per engine with ``--cpu-ms`` (the per-entry CPU limit,
``Limits.cpu_ms``; the default 2,000 ms would make each looping event cost 2 s of CPU), uploads
``--machines`` hostile machines (the runtime suite's kinds, tests/runtime/test_hostile.py: infinite
loops, memory and object bombs, deep recursion, promise chains, a 500 KB context, log floods, a
host-answered async loop, ...; XState 4 and 5 alternately) and one ordinary counter machine, then, in
one run on the same server:

1. **baseline**: ``--clients`` ordinary clients, each driving its own instance with sequential
   events, for ``--seconds``;
2. **hostile**: the same clients again while ``--hostile-clients`` more send the hostile machines'
   event round-robin, for ``--seconds``;

and again, ``--windows`` pairs in all (so that a drift of the machine's other load hits both).

Each hostile event holds a sandbox worker until its limit stops it (up to ``cpu_ms`` of CPU, or
``entry_wall_ms`` = 5 s for a loop whose awaits the host answers). The hostile machines belong to an
org of their own (a second tenant): one org holds at most half the sandbox workers at once
(``runtime.Executor`` lanes), so the ordinary tenant keeps the other half; before lanes, as many
concurrent hostile senders as workers stalled every other instance
(docs/threat-model.md has both figures).

Latency is measured client-side, request sent to answer read. It reports p50/p99 of each phase and
the p99 ratio (hostile / baseline), and checks correctness as it goes: every hostile answer is the
wire contract's (422 ``machine-error`` with ``limit`` naming the limit, or the 200 a capped log flood
gets), every ordinary event is 200, every ordinary instance's context holds every acknowledged event
in order, every hostile instance kept its last good state, and the server is alive (its process
running, ``/health`` 200). Any violation exits 1. Writes bench/results/hostile.json unless ``--quick``.
tests/server/test_hostile_server.py runs the same checks (fewer machines, no timing).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .common import ROOT, machine_info, machine_line, percentile
from .servers import StatehostServer

__all__ = ["KINDS", "Kind", "Report", "hostile_source", "run"]

RESULTS = ROOT / "bench" / "results" / "hostile.json"


CPU_OR = frozenset({"cpu_ms"})
"""A bomb that spends CPU to reach its own limit may hit the CPU limit first (a smaller ``--cpu-ms``,
a slower machine): either is the contract's answer, 422 naming the limit that stopped it."""


@dataclass(frozen=True)
class Kind:
    action: str
    """What the machine's ``go`` event runs (an action; both majors' signatures ignore arguments)."""
    status: int
    limits: frozenset[str | None]
    """The ``limit`` the 422 may name (None: none, a guest error); for a 200, {None}."""


KINDS: dict[str, Kind] = {
    "infinite_loop": Kind("() => { for (;;) {} }", 422, frozenset({"cpu_ms"})),
    "loop_catching_interrupts": Kind(
        "() => { for (;;) { try { for (;;) {} } catch (e) {} } }", 422, frozenset({"cpu_ms"})
    ),
    "memory_bomb": Kind(
        "() => { const a = []; for (;;) a.push(new Array(1e5).fill(7)); }", 422, CPU_OR | {"memory_bytes"}
    ),
    "object_bomb": Kind(
        "() => { const o = {}; for (let i = 0; ; i++) o['k' + i] = { i, s: 'v' + i }; }",
        422,
        CPU_OR | {"memory_bytes"},
    ),
    # QuickJS-NG's rope strings reach its own length cap (2**30) first: a guest error, no limit named.
    "string_doubling": Kind("() => { let s = 'x'; for (;;) s = s + s; }", 422, frozenset({None})),
    "deep_recursion": Kind("() => { const f = (n) => f(n + 1) + 1; f(0); }", 422, CPU_OR | {"stack_bytes"}),
    "promise_chain": Kind(
        "() => { const loop = () => Promise.resolve().then(loop); loop(); }", 422, CPU_OR | {"max_jobs"}
    ),
    "throwing_action": Kind("() => { throw new Error('action exploded'); }", 422, frozenset({None})),
    "huge_context": Kind("assign({ blob: () => 'x'.repeat(500000) })", 422, CPU_OR | {"max_context_bytes"}),
    # each await is answered by the host: the entry's wall time, job count or CPU stops it, whichever first
    "host_answered_loop": Kind(
        "() => { (async () => { for (;;) await crypto.subtle.digest('SHA-256', new Uint8Array(1)); })(); }",
        422,
        frozenset({"entry_wall_ms", "max_jobs", "cpu_ms"}),
    ),
    # 5 MB of log lines: capped at max_log_bytes, the event itself succeeds
    "log_flood": Kind(
        "() => { for (let i = 0; i < 50; i++) console.log('y'.repeat(100000)); }", 200, frozenset({None})
    ),
}

_HEADER = 'import { createMachine, assign } from "xstate";\n'
_ALLOW = "export const allowRead = () => true;\nexport const allowWrite = () => true;\n"
_TEMPLATE = """
export default createMachine({{
  id: "hostile", {extra} initial: "idle", context: {{ public: {{ n: 0 }} }},
  states: {{
    idle: {{ on: {{
      go: {{ target: "busy", actions: [{action}] }},
      ping: {{ actions: assign({{ public: {ping} }}) }},
    }} }},
    busy: {{ on: {{ back: "idle" }} }},
  }},
}});
"""
_PING = {4: "(c) => ({ n: c.public.n + 1 })", 5: "({ context }) => ({ n: context.public.n + 1 })"}
COUNTER = b"""import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "c", predictableActionArguments: true, initial: "on", context: { public: { seen: [] } },
  states: { on: { on: { add: { actions: assign({ public: (c, e) => ({ seen: [...c.public.seen, e.n] }) }) } } } },
});
"""


def hostile_source(kind: str, major: int) -> bytes:
    extra = "predictableActionArguments: true," if major == 4 else ""
    body = _TEMPLATE.format(extra=extra, action=KINDS[kind].action, ping=_PING[major])
    return (_HEADER + _ALLOW + body).encode()


@dataclass
class Report:
    engine: str
    hostile_machines: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"baseline": [], "hostile": []})
    """Ordinary events' latencies (seconds) per phase."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """``kind status limit`` -> answers."""
    violations: list[str] = field(default_factory=list)
    ordinary_events: int = 0
    rss_kib: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    machines_hit: int = 0
    """Hostile machines that were sent their event at least once."""
    kind_seconds: dict[str, float] = field(default_factory=dict)
    """The longest answer to each hostile kind."""
    """Wall time of the uploads and of each phase."""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "engine": self.engine,
            "hostile_machines": self.hostile_machines,
            "hostile_machines_hit": self.machines_hit,
            "ordinary_events": self.ordinary_events,
            "hostile_answers": dict(sorted(self.outcomes.items())),
            "violations": self.violations,
            "server_rss_mib": round(self.rss_kib / 1024, 1),
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "slowest_hostile_answer_s": {k: round(v, 2) for k, v in sorted(self.kind_seconds.items())},
        }
        for phase, samples in self.latencies.items():
            if samples:
                out[phase] = {
                    "events": len(samples),
                    "p50_ms": round(percentile(samples, 0.5) * 1000, 2),
                    "p99_ms": round(percentile(samples, 0.99) * 1000, 2),
                }
        if self.latencies["baseline"] and self.latencies["hostile"]:
            out["p99_ratio"] = round(out["hostile"]["p99_ms"] / out["baseline"]["p99_ms"], 2)
        return out


class _Api:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, org: str | None = None) -> None:
        self.session = session
        self.url = url
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        if org is not None:
            self.headers["x-statebacked-org-id"] = org

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=self.headers) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def deploy(self, slug: str, source: bytes, major: int) -> None:
        status, body = await self.call("POST", "/machines", {"slug": slug})
        assert status in (201, 409), (status, body)
        status, provisional = await self.call("POST", f"/machines/{slug}/v?gzip")
        assert status == 200, provisional
        form = aiohttp.FormData()
        for key, value in provisional["codeUploadFields"].items():
            form.add_field(key, value)
        form.add_field("content-encoding", "gzip")
        form.add_field("file", gzip.compress(source), filename="machine.ts", content_type="application/javascript")
        async with self.session.post(provisional["codeUploadUrl"], data=form) as response:
            assert response.status == 204, await response.text()
        status, body = await self.call(
            "PUT",
            f"/machines/{slug}/v/{provisional['machineVersionId']}",
            {"clientInfo": "bench.hostile", "makeCurrent": True, "xstateMajor": major},
        )
        assert status == 200, (slug, status, body)


def hostile_slugs(count: int) -> list[tuple[str, str, int]]:
    """(slug, kind, major) for ``count`` machines: every kind on both majors, then round again."""
    names = sorted(KINDS)
    out = []
    for n in range(count):
        kind = names[(n // 2) % len(names)]
        major = 4 + n % 2
        out.append((f"h{n:02d}-{kind.replace('_', '-')}-v{major}", kind, major))
    return out


async def run(
    server: StatehostServer,
    *,
    machines: int,
    clients: int,
    hostile_clients: int,
    seconds: float | None,
    events_per_client: int | None = None,
    hostile_rounds: int = 1,
    windows: int = 2,
) -> Report:
    """Drive a started server. With ``seconds``, each phase window lasts that long; without, each ordinary
    client sends ``events_per_client`` events per phase and the hostile clients send each hostile
    machine's event ``hostile_rounds`` times (the test's bounded, untimed mode)."""
    credentials = server.credentials()
    engine = next((a for a in server.argv if a.startswith("quickjs")), "quickjs-wasm")
    plan = hostile_slugs(machines)
    report = Report(engine, len(plan))
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        api = _Api(session, server.url, credentials["adminToken"], credentials["orgId"])
        await api.deploy("counter", COUNTER, 4)
        # The hostile machines belong to a tenant of their own (an org the same admin creates): the
        # threat is one tenant's code slowing others (a tenant slowing itself is its own business).
        status, org = await api.call("POST", "/orgs", {"name": "hostile tenant"})
        assert status == 200, (status, org)
        tenant = _Api(session, server.url, credentials["adminToken"], org["id"])
        uploads = asyncio.Semaphore(4)

        async def upload(slug: str, kind: str, major: int) -> None:
            async with uploads:
                await tenant.deploy(slug, hostile_source(kind, major), major)
                status, body = await tenant.call("POST", f"/machines/{slug}", {"slug": "i"})
                assert status == 200, (slug, status, body)

        started = time.perf_counter()
        await asyncio.gather(*(upload(*entry) for entry in plan))
        report.seconds["uploads"] = time.perf_counter() - started
        acked: dict[int, list[int]] = {c: [] for c in range(clients)}
        for c in range(clients):
            status, body = await api.call("POST", "/machines/counter", {"slug": f"o{c}"})
            assert status == 200, body

        async def ordinary(c: int, phase: str, stop: asyncio.Event) -> None:
            sent = 0
            while not stop.is_set() and (events_per_client is None or sent < events_per_client):
                n = len(acked[c])
                started = time.perf_counter()
                status, body = await api.call(
                    "POST", f"/machines/counter/i/o{c}/events", {"event": {"type": "add", "n": n}}
                )
                report.latencies[phase].append(time.perf_counter() - started)
                sent += 1
                if status != 200:
                    report.violations.append(f"ordinary event {n} to o{c}: {status} {body}")
                    continue
                acked[c].append(n)

        queues = [[p for r in range(hostile_rounds) for p in plan][h::hostile_clients] for h in range(hostile_clients)]
        position = [0] * hostile_clients
        """Each hostile client's place in its queue, kept across windows (timed mode cycles)."""
        hit: set[str] = set()

        async def hostile(h: int, stop: asyncio.Event) -> None:
            queue = queues[h]
            while queue and not stop.is_set() and (seconds is not None or position[h] < len(queue)):
                slug, kind, _ = queue[position[h] % len(queue)]
                position[h] += 1
                hit.add(slug)
                started = time.perf_counter()
                status, body = await tenant.call("POST", f"/machines/{slug}/i/i/events", {"event": "go"})
                took = time.perf_counter() - started
                report.kind_seconds[kind] = max(took, report.kind_seconds.get(kind, 0.0))
                limit = body.get("limit") if isinstance(body, dict) else None
                report.outcomes[f"{kind} {status} {limit}"] += 1
                expected = KINDS[kind]
                if status != expected.status or limit not in expected.limits:
                    report.violations.append(f"{slug}: {status} {body} (expected {expected.status} {expected.limits})")
                elif status == 422 and body.get("code") != "machine-error":
                    report.violations.append(f"{slug}: code {body.get('code')!r}, not machine-error")
                elif status == 200 and kind == "log_flood":
                    await tenant.call("POST", f"/machines/{slug}/i/i/events", {"event": "back"})  # flood again

        # Timed mode alternates the phases ``windows`` times (B H B H ...), so that a drift of the
        # machine's other load hits both alike.
        for phase in ("baseline", "hostile") * (windows if seconds is not None else 1):
            started = time.perf_counter()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(ordinary(c, phase, stop)) for c in range(clients)]
            attackers = (
                [asyncio.create_task(hostile(h, stop)) for h in range(hostile_clients)] if phase == "hostile" else []
            )
            if seconds is not None:
                await asyncio.sleep(seconds)  # the phase's duration (a measurement window, not a synchronisation)
                stop.set()
            await asyncio.gather(*tasks, *attackers)
            report.seconds[phase] = report.seconds.get(phase, 0.0) + time.perf_counter() - started
        report.machines_hit = len(hit)

        report.ordinary_events = sum(len(a) for a in acked.values())
        for c, numbers in acked.items():
            status, state = await api.call("GET", f"/machines/counter/i/o{c}")
            if status != 200 or state["publicContext"]["seen"] != numbers:
                report.violations.append(f"o{c}: history lost or reordered ({status})")
        for slug, kind, _ in plan:
            status, state = await tenant.call("GET", f"/machines/{slug}/i/i")
            want = "busy" if KINDS[kind].status == 200 else "idle"
            if status != 200 or state["state"] not in (want, "idle"):
                report.violations.append(f"{slug}: not at its last good state ({status} {state})")
        status, health = await api.call("GET", "/health")
        if status != 200 or server.process is None or server.process.returncode is not None:
            report.violations.append(f"server not alive: /health {status} {health}")
        report.rss_kib = server.rss_kib()
    return report


async def _main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    engines = ["quickjs-wasm", "quickjs-native"] if args.engine == "both" else [args.engine]
    rows = []
    for engine in engines:
        with tempfile.TemporaryDirectory(prefix="statehost-hostile-", dir=ROOT / "bench") as folder:
            extra = ["--engine", engine, "--cpu-ms", str(args.cpu_ms)]
            if args.workers:
                extra += ["--workers", str(args.workers)]
            server = StatehostServer(Path(folder), extra=extra)
            await server.start()
            try:
                report = await run(
                    server,
                    machines=args.machines,
                    clients=args.clients,
                    hostile_clients=args.hostile_clients,
                    seconds=args.seconds,
                    windows=args.windows,
                )
            finally:
                await server.stop()
        row = report.summary()
        row["settings"] = {
            "cpu_ms": args.cpu_ms,
            "workers": args.workers or "default (two per CPU, at least 4; one org holds at most half)",
            "clients": args.clients,
            "hostile_clients": args.hostile_clients,
            "seconds_per_window": args.seconds,
            "windows": args.windows,
        }
        rows.append(row)
        print(json.dumps(row, indent=2), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("quickjs-wasm", "quickjs-native", "both"), default="both")
    parser.add_argument("--machines", type=int, default=50, help="hostile machines uploaded (default 50)")
    parser.add_argument("--clients", type=int, default=4, help="ordinary clients, one instance each (default 4)")
    parser.add_argument("--hostile-clients", type=int, default=2, help="concurrent hostile senders (default 2)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase window (default 15)")
    parser.add_argument("--windows", type=int, default=2, help="baseline/hostile window pairs (default 2)")
    parser.add_argument("--cpu-ms", type=int, default=200, help="statehost serve --cpu-ms (default 200)")
    parser.add_argument("--workers", type=int, default=0, help="statehost serve --workers (default: its own)")
    parser.add_argument("--quick", action="store_true", help="22 machines, 2 s phases, one engine; nothing written")
    args = parser.parse_args()
    if args.quick:
        args.machines, args.seconds, args.windows = 2 * len(KINDS), 2.0, 1
        if args.engine == "both":
            args.engine = "quickjs-wasm"
    rows = asyncio.run(_main_async(args))
    info = machine_info()
    print(machine_line(info))
    command = "python -m bench.hostile " + " ".join(sys.argv[1:])
    for row in rows:
        ratio = row.get("p99_ratio")
        print(
            f"{row['engine']}: ordinary p99 {row['baseline']['p99_ms']} ms alone, {row['hostile']['p99_ms']} ms"
            f" beside {row['hostile_machines']} hostile machines ({row['hostile_machines_hit']} hit):"
            f" ratio {ratio} (target <= 2); violations: {len(row['violations'])}"
        )
    if not args.quick:
        # one file per machine: each invocation (e.g. default and more workers) kept under its command
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        kept = [
            i for i in previous.get("invocations", []) if previous.get("machine") == info and i["command"] != command
        ]
        document = {"machine": info, "invocations": [*kept, {"command": command, "runs": rows}]}
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    if any(row["violations"] for row in rows):
        for row in rows:
            for violation in row["violations"][:20]:
                print(f"VIOLATION ({row['engine']}): {violation}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
