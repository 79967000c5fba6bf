"""Random event programs run against a real ``statehost serve`` under SIGKILL, checked against real
XState in node (tests/node/drive.mjs) on a fake clock.

A *program* is plain JSON, so that a failing one prints as a test you can paste::

    {"fixture": "timed_job", "major": 5, "steps": [
        {"send": [{"type": "start", "n": 3}]},                  # one event, acknowledged before the next step
        {"send": [{"type": "ping"}, {"type": "bogus"}]},         # concurrent senders: any order the server picks
        {"wait": 2000},                                          # move the server's clock; timers fire
        {"bad": "no-type"},                                      # a malformed request: 400, nothing changes
        {"kill": true},                                          # SIGKILL between steps, then restart
        {"send": [{"type": "ping"}], "kill_after_ms": 4}         # SIGKILL 4 ms (real) into the step
    ]}

How it runs (:class:`Server`, :func:`run_program`): every event gets a unique ``eid`` in its payload.
The server runs on a clock only the test moves (tests/oracle/serve.py: ``POST /__oracle/clock``),
so ``wait`` fires timers at their due times without real waiting, in due order, as XState's fake
clock does; after every step and every restart the test waits until no timer is due. A killed
server is restarted on the same database with the clock where the test last set it; a ``wait``
interrupted by a kill is redone. Requests that got no answer because of a kill are *unanswered*.

The check (:func:`check`): the instance's whole history (``GET .../events``), its final state and
full context (``GET .../admin``), and the answer to each event sent alone, must equal what XState produces for the *linearization* the server
chose: the program's events in program order, the events of a concurrent group in the order the
history shows, an acknowledged event missing from the history placed somewhere in its group (it
must then be one XState ignores there), an unanswered event applied as the history shows (0 or 1
times). Timers are not sent to XState: its fake clock fires them, so each timer row of the history
must be one XState fired, exactly once, at the same point. An acknowledged event appearing twice, an
unanswered one appearing twice, or any event out of its program order fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "machines"
DRIVER = ROOT / "tests" / "node" / "drive.mjs"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)
LEASE_TTL_S = 1.5
START_CAP_S = 60.0
MAX_CANDIDATES = 40
"""Node runs per program at most, when acknowledged-but-unrecorded events of concurrent groups could
sit in several places (see check)."""

# Which fixtures, and the events a program draws from (besides unknown types). All of these
# machines settle within a window (no fetch), so an event's request is answered with its effects.
ALPHABETS: dict[str, list[dict[str, Any]]] = {
    "timed_job": [
        *({"type": "start", "n": n} for n in range(6)),
        *({"type": "retry", "n": n} for n in range(4)),
        {"type": "ping"},
        {"type": "snooze"},
        {"type": "nap"},
        {"type": "unsnooze"},
        {"type": "wake"},
    ],
    "traffic_light": [{"type": "emergency"}],
    "delayed_send": [{"type": "arm"}, {"type": "disarm"}, {"type": "stop"}, {"type": "ring"}],
    "invoke_reject": [{"type": "retry"}],
    "counter": [{"type": "inc"}, {"type": "dec"}, *({"type": "set", "value": v} for v in (-1, 0, 3, 10, 11))],
}
UNKNOWN_EVENTS = [{"type": "bogus"}, {"type": "START"}, {"type": "ping.more"}]
WAITS = [2000, 3000, 5000, 10000, 30000, 60000, 0, 1, 999, 1000, 2999, 7000, 20000, 29999, 35000, 55000, 120000]
"""Clock moves (ms): the fixtures' delays, one ms either side of some, and sums of them (hypothesis
shrinks towards the first ones)."""
BAD_REQUESTS = [
    "no-type",
    "number",
    "empty-type",
    "extra-key",
    "not-json",
    "missing-instance",
    "forged-timer",
    "forged-done",
]
"""Malformed requests, and events a client may not send (XState's own types: a forged timer or
service result). Each must be answered 400/404 with a code and change nothing."""


@dataclasses.dataclass
class Stats:
    programs: int = 0
    kills: int = 0
    steps: int = 0
    events_acked: int = 0
    events_unanswered: int = 0
    events_checked: int = 0
    """Acknowledged events whose count in the history (1, or 0 where XState ignores them) was checked."""
    timers_checked: int = 0
    """Timer rows of the histories, each matched to one firing of XState's fake clock."""
    history_rows: int = 0
    bad_requests: int = 0
    candidates_tried: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


STATS = Stats()


def slug(fixture: str, major: int) -> str:
    return f"{fixture.replace('_', '-')}-v{major}"


def require_node() -> str:
    """node (``need_tool``: a failure under STATEHOST_REQUIRE_ALL_TOOLS, else a skip, when it or the
    npm dev dependencies are missing)."""
    from tests.support import need_tool, which_or_need

    node = which_or_need("node", "the XState oracle runs the machines in node (make setup)")
    if not (ROOT / "node_modules").exists():
        need_tool("node_modules", "the XState oracle needs the npm dev dependencies (make setup)")
    return node


# ---- the server ------------------------------------------------------------------------------------


class Server:
    """One ``statehost serve`` (on the test clock) over one data directory; killed and restarted."""

    def __init__(self, data_dir: Path, engine: str, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.engine = engine
        self.database_url = database_url
        """PostgreSQL instead of the SQLite file in data_dir; each start is then a new node id, and
        a killed node's leases lapse after LEASE_TTL_S (real time)."""
        self.port = free_port()
        self.now_ms = int(time.time() * 1000)
        """The clock's time as the test last set it (a restart starts there)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.token = ""
        self.org = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        log = self.data_dir / "serve.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n--- serve.log tail ---\n" + "\n".join(text.splitlines()[-lines:])

    async def start(self, session: aiohttp.ClientSession, retries: int = 2) -> None:
        self.starts += 1
        with (self.data_dir / "serve.log").open("ab") as log:
            # Popen, not asyncio's: the process outlives the event loop of one program (asyncio.run)
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-m",
                    "tests.oracle.serve",
                    "--clock-ms",
                    str(self.now_ms),
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--engine",
                    self.engine,
                    "--workers",
                    "2",
                    *self._database_args(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + START_CAP_S
        while True:
            if self.process.poll() is not None:
                if "address already in use" in self.log_tail(5) and retries > 0:
                    # another process took the port while the server was down: move
                    self.port = free_port()
                    await self.start(session, retries - 1)
                    return
                raise AssertionError(f"statehost serve exited ({self.process.returncode}){self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"{self.base}/health", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise AssertionError(f"statehost serve did not answer /health within {START_CAP_S} s{self.log_tail()}")
            await asyncio.sleep(0.02)
        credentials = json.loads((self.data_dir / "admin.json").read_text())
        self.token, self.org = credentials["adminToken"], credentials["orgId"]
        await self.move_clock(session, self.now_ms)  # deliver what came due while it was down

    def _database_args(self) -> list[str]:
        if self.database_url is None:
            return []
        lease = ["--lease-ttl-s", str(LEASE_TTL_S), "--settle-window-ms", "5000"]
        return ["--database-url", self.database_url, "--node-id", f"oracle-{self.starts}", *lease]

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL
            self.kills += 1
            STATS.kills += 1
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", "content-type": "application/json"}

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None, raw: str | None = None
    ):
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with session.request(
            method, self.base + path, data=data, headers=self.headers(), timeout=REQUEST_TIMEOUT
        ) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def move_clock(self, session: aiohttp.ClientSession, to_ms: int) -> None:
        status, body = await self.call(session, "POST", "/__oracle/clock", {"to": to_ms})
        assert status == 200, f"moving the clock to {to_ms}: {status} {body}"
        self.now_ms = to_ms

    async def deploy(self, session: aiohttp.ClientSession, fixture: str, major: int) -> None:
        from client import StatehostClient

        code = (FIXTURES / fixture / f"v{major}" / "machine.ts").read_bytes()
        async with StatehostClient(self.base, self.token, org_id=self.org) as client:
            await client.machines.create(slug(fixture, major))
            await client.versions.create(
                slug(fixture, major), code, filename="machine.ts", make_current=True, xstate_major=major
            )

    async def history(self, session: aiohttp.ClientSession, machine: str, instance: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        cursor = None
        while True:
            path = f"/machines/{machine}/i/{instance}/events" + (f"?cursor={cursor}" if cursor else "")
            status, body = await self.call(session, "GET", path)
            assert status == 200, f"GET {path}: {status} {body}"
            rows += body["transitions"]
            cursor = body.get("cursor")
            if not cursor:
                return rows


# ---- running a program -------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    step: int
    event: dict[str, Any]
    outcome: str = "unanswered"
    """acked | unanswered | rejected (a 4xx/5xx answer: a failure for the events programs send)"""
    answer: Any = None


@dataclasses.dataclass
class Run:
    program: dict[str, Any]
    instance: str
    sent: list[Sent]
    history: list[dict[str, Any]]
    admin: dict[str, Any]
    kills: int
    problems: list[str]


_instances = itertools.count(1)


async def _with_killer(server: Server, kill_after_ms: float | None, work: Any) -> bool:
    """Run ``work`` (a coroutine) while, if asked, the server is SIGKILLed after ``kill_after_ms``
    (real time). Returns whether the server was killed."""
    if kill_after_ms is None:
        await work
        return False

    async def killer() -> None:
        await asyncio.sleep(kill_after_ms / 1000)
        server.kill()

    await asyncio.gather(work, killer())
    return True


async def run_program(server: Server, session: aiohttp.ClientSession, program: dict[str, Any]) -> Run:
    machine = slug(program["fixture"], program["major"])
    instance = f"p{os.getpid()}-{next(_instances)}"
    base = f"/machines/{machine}/i/{instance}"
    sent: list[Sent] = []
    problems: list[str] = []
    kills_before = server.kills

    async def restart_if_dead() -> None:
        if not server.alive:
            await server.start(session)

    # create, retried across kills until it answers 200 (or 409: an unanswered try had created it)
    create_kill = program.get("create_kill_after_ms")
    while True:
        outcome: dict[str, Any] = {}

        async def create(into: dict[str, Any] = outcome) -> None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                into["answer"] = await server.call(session, "POST", f"/machines/{machine}", {"slug": instance})

        await _with_killer(server, create_kill, create())
        create_kill = None
        await restart_if_dead()
        if "answer" in outcome:
            status, body = outcome["answer"]
            if status in (200, 409):
                break
            raise AssertionError(f"creating {instance}: {status} {body}")

    for index, step in enumerate(program["steps"]):
        STATS.steps += 1
        kill_after = step.get("kill_after_ms")
        if "kill" in step:
            server.kill()
        elif "send" in step:
            group = [Sent(index, {**event, "eid": f"e{index}.{k}"}) for k, event in enumerate(step["send"])]
            sent += group

            async def post(item: Sent) -> None:
                try:
                    status, body = await server.call(session, "POST", f"{base}/events", {"event": item.event})
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return
                item.outcome = "acked" if status == 200 else "rejected"
                item.answer = (status, body)

            await _with_killer(server, kill_after, asyncio.gather(*(post(item) for item in group)))
        elif "wait" in step:
            target = server.now_ms + int(step["wait"])
            done = False

            async def wait(into: list[bool], target: int = target) -> None:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, AssertionError):
                    await server.move_clock(session, target)
                    into.append(True)

            flag: list[bool] = []
            await _with_killer(server, kill_after, wait(flag))
            done = bool(flag) and server.alive
            if not done:
                await restart_if_dead()
                await server.move_clock(session, target)  # redo the interrupted advance
        elif "bad" in step:
            STATS.bad_requests += 1
            problem = await _bad_request(server, session, machine, base, step["bad"], kill_after)
            if problem:
                problems.append(f"step {index}: {problem}")
        else:
            raise ValueError(f"unknown step {step!r}")
        await restart_if_dead()
        await server.move_clock(session, server.now_ms)  # timers due now are delivered before the next step

    history = await server.history(session, machine, instance)
    status, admin = await server.call(session, "GET", f"{base}/admin")
    assert status == 200, f"GET {base}/admin: {status} {admin}"
    for item in sent:
        if item.outcome == "rejected":
            problems.append(f"event {item.event} was refused: {item.answer}")
    return Run(program, instance, sent, history, admin, server.kills - kills_before, problems)


async def _bad_request(
    server: Server, session: aiohttp.ClientSession, machine: str, base: str, kind: str, kill_after: float | None
) -> str | None:
    """A malformed request must be answered 4xx with a code (unless a kill took the answer)."""
    path, body, raw, expect = f"{base}/events", None, None, 400
    if kind == "no-type":
        body = {"event": {"n": 1}}
    elif kind == "number":
        body = {"event": 5}
    elif kind == "empty-type":
        body = {"event": {"type": ""}}
    elif kind == "extra-key":
        body = {"event": {"type": "ping"}, "extra": True}
    elif kind == "not-json":
        raw = "{not json"
    elif kind == "forged-timer":
        body = {"event": {"type": "xstate.after(2000)#timed_job.cooling"}}
    elif kind == "forged-done":
        body = {"event": {"type": "done.invoke.job", "data": 1}}
    elif kind == "missing-instance":
        path, body, expect = f"/machines/{machine}/i/no-such-instance/events", {"event": {"type": "ping"}}, 404
    else:
        raise ValueError(f"unknown bad request {kind!r}")
    answer: list[tuple[int, Any]] = []

    async def go() -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            answer.append(await server.call(session, "POST", path, body, raw=raw))

    await _with_killer(server, kill_after, go())
    if not answer:
        return None
    status, parsed = answer[0]
    if status != expect or not isinstance(parsed, dict) or not parsed.get("code") or not parsed.get("error"):
        return f"bad request {kind!r}: expected {expect} with a code and a message, got {status} {parsed}"
    return None


@dataclasses.dataclass
class OracleEnv:
    server: Server
    node: str
    bundles: dict[tuple[str, int], Path]


def replay(env: OracleEnv, program: dict[str, Any]) -> None:
    """Run one program against the server and check it against XState; fail with a reproduction."""

    async def go() -> tuple[list[str], Any]:
        async with aiohttp.ClientSession() as session:
            if not env.server.alive:
                await env.server.start(session)
            run = await run_program(env.server, session, program)
            return await check(env.node, env.bundles[(program["fixture"], program["major"])], run), run

    problems, run = asyncio.run(go())
    log = os.environ.get("STATEHOST_ORACLE_LOG")
    if log:  # every program run, one JSON line each, with what happened to it
        with open(log, "a") as out:
            summary = {"instance": run.instance, "kills": run.kills, "rows": len(run.history), "ok": not problems}
            out.write(json.dumps({"program": program, **summary}) + "\n")
    if problems:
        raise AssertionError(reproduction(program, problems, run))


# ---- the oracle ------------------------------------------------------------------------------------------


def _eid(event: Any) -> str | None:
    return event.get("eid") if isinstance(event, dict) else None


def linearizations(run: Run) -> tuple[list[str], list[list[list[dict[str, Any]]]]]:
    """Problems with the history's events as such (duplicates, strangers), and per program step the
    orders its events may have run in (one, unless acknowledged events of a concurrent group are
    absent from the history: they may have run anywhere in their group)."""
    problems: list[str] = []
    by_eid = {item.event["eid"]: item for item in run.sent}
    counts: dict[str, int] = {}
    for row in run.history:
        eid = _eid(row["event"])
        if eid is None:
            continue
        if eid not in by_eid:
            problems.append(f"the history has an event the program never sent: {row['event']}")
            continue
        counts[eid] = counts.get(eid, 0) + 1
    for eid, n in counts.items():
        if n > 1:
            problems.append(f"event {by_eid[eid].event} ({by_eid[eid].outcome}) is in the history {n} times")
    order = [_eid(row["event"]) for row in run.history if _eid(row["event"]) in by_eid]

    # Per step: the fixed part (events in history order) and the acknowledged events to place.
    per_step: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    for index, step in enumerate(run.program["steps"]):
        if "send" not in step:
            per_step.append(([], []))
            continue
        group = [item for item in run.sent if item.step == index]
        recorded = sorted(
            (item for item in group if item.event["eid"] in counts), key=lambda i: order.index(i.event["eid"])
        )
        missing = [item.event for item in group if item.outcome == "acked" and item.event["eid"] not in counts]
        per_step.append(([item.event for item in recorded], missing))

    def placements(fixed: list[dict[str, Any]], missing: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        options = [list(fixed)]
        for event in missing:
            grown = []
            for option in options:
                # at the end first (most likely: an ignored event changes nothing wherever it is)
                for position in range(len(option), -1, -1):
                    grown.append([*option[:position], event, *option[position:]])
            options = grown
        return options

    return problems, [placements(fixed, missing) for fixed, missing in per_step]


def scenario_steps(run: Run, combo: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The oracle's scenario for one choice of event order per program step."""
    steps: list[dict[str, Any]] = [{"create": {}}]
    for step, events in zip(run.program["steps"], combo, strict=True):
        if "wait" in step:
            steps.append({"advance": int(step["wait"])})
        steps += [{"event": event} for event in events]
    return steps


async def oracle(node: str, bundle: Path, steps: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    scenario = workdir / "scenario.json"
    scenario.write_text(json.dumps({"description": "oracle", "history": True, "steps": steps}))
    process = await asyncio.create_subprocess_exec(
        node,
        str(DRIVER),
        "--bundle",
        str(bundle),
        "--scenario",
        str(scenario),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0:
        raise AssertionError(f"drive.mjs failed ({process.returncode}): {err.decode()[-2000:]}")
    return json.loads(out)


def _init_without_input(event: Any) -> Any:
    """statehost also passes a v5 instance's creation context as ``input`` (docs/decisions.md 4), so
    its ``xstate.init`` event carries ``input: {}`` (the programs create with no context); drive.mjs
    passes no input. Nothing else differs, so the comparison drops exactly that."""
    if isinstance(event, dict) and event.get("type") == "xstate.init" and event.get("input") == {}:
        return {k: v for k, v in event.items() if k != "input"}
    return event


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def compare(run: Run, steps: list[dict[str, Any]], reference: dict[str, Any]) -> list[str]:
    """Differences between the server's run and one oracle run of ``steps``."""
    diffs: list[str] = []
    # The answer to an event sent alone is the settled state right after it (promise 4).
    results = {
        step["event"]["eid"]: result
        for step, result in zip(steps, reference["results"], strict=True)
        if "event" in step
    }
    alone = {item.step for item in run.sent if sum(other.step == item.step for other in run.sent) == 1}
    for item in run.sent:
        if item.outcome != "acked" or item.step not in alone or item.event["eid"] not in results:
            continue
        want = results[item.event["eid"]]
        got = item.answer[1]
        if "error" in want:
            continue
        pairs = [
            ("state", got.get("state"), want["state"]),
            ("publicContext", got.get("publicContext"), want["publicContext"]),
            ("tags", sorted(got.get("tags", [])), want["tags"]),
            ("done", bool(got.get("done")), bool(want["done"])),
        ]
        for field, a, b in pairs:
            if _normal(a) != _normal(b):
                diffs.append(f"the answer to {item.event}: {field} {json.dumps(a)}, XState {json.dumps(b)}")
    errors = [r for r in reference["results"] if "error" in r]
    if errors:
        diffs.append(f"XState itself failed: {errors[0]}")
    ours = [{"state": row["state"], "event": _init_without_input(row["event"])} for row in run.history]
    theirs = reference["history"]
    if _normal(ours) != _normal(theirs):
        for k, (a, b) in enumerate(itertools.zip_longest(ours, theirs)):
            if _normal(a) != _normal(b):
                diffs.append(f"history row {k + 1}: statehost {json.dumps(a)} vs XState {json.dumps(b)}")
                break
        diffs.append(f"history lengths: statehost {len(ours)}, XState {len(theirs)}")
    last = reference["results"][-1]
    if "error" not in last:
        if _normal(run.admin["state"]) != _normal(last["state"]):
            diffs.append(f"final state: statehost {run.admin['state']} vs XState {last['state']}")
        if _normal(run.admin["context"]) != _normal(last["context"]):
            diffs.append(f"final context: statehost {run.admin['context']} vs XState {last['context']}")
        if bool(run.admin["done"]) != bool(last["done"]):
            diffs.append(f"done: statehost {run.admin['done']} vs XState {last['done']}")
    return diffs


async def check(node: str, bundle: Path, run: Run) -> list[str]:
    """[] when the run is one XState allows; else what is wrong, in words.

    Where acknowledged events of concurrent groups are absent from the history, their places are
    searched group by group, keeping the place whose XState history agrees longest with the
    server's: an event XState ignores changes nothing wherever it sits, and one it handles adds a
    row right where it is placed, so the right place never agrees less (sum, not product, of the
    groups' options; at most MAX_CANDIDATES node runs)."""
    problems = list(run.problems)
    structural, choices = linearizations(run)
    problems += structural
    if problems:
        return problems
    current = [0] * len(choices)
    runs = 0
    with tempfile.TemporaryDirectory(prefix="oracle-") as tmp:

        async def attempt(combo: list[int]) -> tuple[list[str], int]:
            nonlocal runs
            runs += 1
            STATS.candidates_tried += 1
            steps = scenario_steps(run, [options[k] for options, k in zip(choices, combo, strict=True)])
            reference = await oracle(node, bundle, steps, Path(tmp))
            return compare(run, steps, reference), agreement(run, reference)

        first, best = await attempt(current)
        if not first:
            _count(run)
            return []
        for group, options in enumerate(choices):
            for k in range(1, len(options)):
                if runs >= MAX_CANDIDATES:
                    return first
                trial = [*current[:group], k, *current[group + 1 :]]
                diffs, score = await attempt(trial)
                if not diffs:
                    _count(run)
                    return []
                if score > best:
                    current, best = trial, score
    return first


def agreement(run: Run, reference: dict[str, Any]) -> int:
    """How many leading history rows the server's and XState's histories share."""
    ours = [{"state": row["state"], "event": _init_without_input(row["event"])} for row in run.history]
    count = 0
    for a, b in zip(ours, reference["history"], strict=False):
        if _normal(a) != _normal(b):
            break
        count += 1
    return count


def _count(run: Run) -> None:
    STATS.programs += 1
    STATS.history_rows += len(run.history)
    STATS.events_acked += sum(item.outcome == "acked" for item in run.sent)
    STATS.events_unanswered += sum(item.outcome == "unanswered" for item in run.sent)
    STATS.events_checked += sum(item.outcome == "acked" for item in run.sent)
    STATS.timers_checked += sum(_is_timer(row["event"]) for row in run.history)


def _is_timer(event: Any) -> bool:
    if not isinstance(event, dict) or _eid(event) is not None:
        return False
    kind = str(event.get("type", ""))
    # `after` timers (v4 xstate.after(N)#..., v5 xstate.after.N....) and delayed self-sends (which
    # carry no eid: only the clock sends them)
    return kind.startswith("xstate.after") or not (
        kind.startswith(("xstate.", "done.", "error.")) or kind in ("xstate.init",)
    )


def reproduction(program: dict[str, Any], problems: list[str], run: Run | None = None) -> str:
    """The failure message: what is wrong, and a pytest test that runs the same program."""
    lines = ["statehost diverged from XState on a random program:", *(f"  - {p}" for p in problems)]
    if run is not None:
        lines.append(
            f"  instance {run.instance}; kills {run.kills}; events: "
            + ", ".join(f"{item.event['eid']}={item.outcome}" for item in run.sent)
        )
        lines.append("  statehost history: " + json.dumps([[r["state"], r["event"]] for r in run.history]))
    lines += [
        "",
        "Reproduce (kill timings are real milliseconds, so a kill may land elsewhere):",
        "",
        "from tests.oracle.harness import replay",
        "",
        "",
        "def test_oracle_regression(oracle_env):",
        f"    replay(oracle_env, {json.dumps(program)})",
    ]
    return "\n".join(lines)
