"""Hostile machines: each hits its limit as a value (an Outcome naming the limit), the instance keeps
its last good state, the test process survives, and a well-behaved machine runs right after."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from runtime import Limits, Outcome, ReadRequest, StepRequest
from tests.support import HEADER, local, prepare

# A machine whose `go` event runs ACTION (v4 and v5 action signatures both ignore their arguments).
TEMPLATE = """
export default createMachine({{
  id: "hostile", {extra} initial: "idle", context: {{ public: {{ n: 0 }} }},
  states: {{
    idle: {{ on: {{ go: {{ target: "busy", actions: [{action}] }}, ping: {{ actions: assign({{ public: {ping} }}) }} }} }},
    busy: {{ on: {{ back: "idle" }} }},
  }},
}});
"""
PING = {4: "(c) => ({ n: c.public.n + 1 })", 5: "({ context }) => ({ n: context.public.n + 1 })"}

HOSTILE = {
    "infinite_loop": ("() => { for (;;) {} }", Outcome.EXCEEDED_CPU),
    "loop_catching_interrupts": (
        "() => { for (;;) { try { for (;;) {} } catch (e) {} } }",
        Outcome.EXCEEDED_CPU,
    ),
    "memory_bomb": (
        "() => { const a = []; for (;;) a.push(new Array(1e5).fill(7)); }",
        Outcome.EXCEEDED_MEMORY,
    ),
    "object_bomb": (
        "() => { const o = {}; for (let i = 0; ; i++) o['k' + i] = { i, s: 'v' + i }; }",
        Outcome.EXCEEDED_MEMORY,
    ),
    # QuickJS-NG's rope strings reach its own length cap (2**30) before the heap limit: a guest error.
    "string_doubling": ("() => { let s = 'x'; for (;;) s = s + s; }", Outcome.GUEST_ERROR),
    "deep_recursion": ("() => { const f = (n) => f(n + 1) + 1; f(0); }", Outcome.EXCEEDED_STACK),
    "promise_chain": (
        "() => { const loop = () => Promise.resolve().then(loop); loop(); }",
        Outcome.EXCEEDED_JOBS,
    ),
    "throwing_action": ("() => { throw new Error('action exploded'); }", Outcome.GUEST_ERROR),
}


def hostile_machine(action: str, major: int) -> str:
    extra = "predictableActionArguments: true," if major == 4 else ""
    return TEMPLATE.format(extra=extra, action=action, ping=PING[major])


SMALL = Limits(memory_bytes=32 * 2**20, cpu_ms=300, max_jobs=20_000)


def limits_for(outcome: Outcome) -> Limits:
    """SMALL, with every limit but the one the case must hit out of reach, so that limit wins by
    construction however busy the machine is: a CPU case gets no wall limit to speak of (a loaded
    machine stretches 300 ms of CPU over seconds of wall time); every other case gets two minutes of
    CPU (measured: the bombs reach 32 MB in under 0.2 s of CPU, the promise chain its 20,000 jobs
    in under 0.1 s), which also keeps the WASM engine's epoch backstop (2 x cpu_ms + 2 s of wall
    time) out of the way."""
    if outcome is Outcome.EXCEEDED_CPU:
        return replace(SMALL, entry_wall_ms=600_000)
    return replace(SMALL, cpu_ms=120_000, entry_wall_ms=600_000)


async def _assert_still_healthy(inst, bundler, engine, executor, transport, clock, major) -> None:
    # The instance that misbehaved keeps its last good state and takes other events ...
    assert inst.current is not None and inst.current.state == "idle"
    ok = await inst.send("ping")
    assert ok.ok, ok.error
    assert inst.current.public_context == {"n": 1}
    # ... and an unrelated, well-behaved machine runs right after in this process.
    other = local(prepare(bundler, engine, hostile_machine("() => {}", major), major), executor, transport, clock)
    await other.create()
    assert (await other.send("go")).ok
    assert other.current is not None and other.current.state == "busy"


@pytest.mark.parametrize("major", [4, 5])
@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_action_hits_its_limit(name, major, bundler, engine, executor, transport, clock):
    action, outcome = HOSTILE[name]
    prepared = prepare(bundler, engine, hostile_machine(action, major), major, limits=limits_for(outcome))
    inst = local(prepared, executor, transport, clock)
    assert (await inst.create()).ok
    before = (inst.persisted, dict(inst.timers), len(inst.history))
    result = await inst.send("go")
    assert result.outcome is outcome, result.error
    if outcome.limit is not None:
        assert outcome.limit in (result.error or ""), result.error
    assert (inst.persisted, dict(inst.timers), len(inst.history)) == before
    assert any(line.stream == "stderr" and outcome.value in line.text for line in inst.logs)
    await _assert_still_healthy(inst, bundler, engine, executor, transport, clock, major)


@pytest.mark.parametrize("major", [4, 5])
async def test_huge_context_is_refused_and_nothing_is_committed(major, bundler, engine, executor, transport, clock):
    grow = "assign({ blob: () => 'x'.repeat(500000) })"
    prepared = prepare(bundler, engine, hostile_machine(grow, major), major)
    inst = local(prepared, executor, transport, clock)
    await inst.create()
    before = inst.persisted
    result = await inst.send("go")
    assert result.outcome is Outcome.EXCEEDED_CONTEXT_SIZE
    assert "max_context_bytes" in (result.error or "")
    assert inst.persisted == before
    await _assert_still_healthy(inst, bundler, engine, executor, transport, clock, major)


@pytest.mark.parametrize("major", [4, 5])
async def test_throwing_guard_is_a_guest_error(major, bundler, engine, executor, transport, clock):
    body = hostile_machine("() => {}", major).replace(
        'go: { target: "busy"',
        'go: { target: "busy", ' + ("cond" if major == 4 else "guard") + ": () => { throw new Error('bad guard'); }",
    )
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    result = await inst.send("go")
    assert result.outcome is Outcome.GUEST_ERROR
    assert "bad guard" in (result.error or "")
    await _assert_still_healthy(inst, bundler, engine, executor, transport, clock, major)


@pytest.mark.parametrize("major", [4, 5])
async def test_prototype_pollution_does_not_leak_to_another_instance(
    major, bundler, engine, executor, transport, clock
):
    polluter = "() => { Object.prototype.polluted = 'yes'; Array.prototype.extra = 1; globalThis.leak = 1; }"
    prepared = prepare(bundler, engine, hostile_machine(polluter, major), major)
    a = local(prepared, executor, transport, clock, name="a")
    await a.create()
    # Whether the polluter survives its own pollution depends on the XState major (v5's for...in
    # loops trip over an enumerable Object.prototype property); what matters is that nobody else sees it.
    await a.send("go")
    probe = "() => console.log(JSON.stringify([({}).polluted, typeof globalThis.leak, [].extra]))"
    b = local(prepare(bundler, engine, hostile_machine(probe, major), major), executor, transport, clock, name="b")
    await b.create()
    await b.send("go")
    assert b.logs[-1].text == '[null,"undefined",null]'
    # The polluting instance's own next event starts from a fresh sandbox too.
    assert (await a.send("ping")).ok


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/",
        "http://localhost:9/",
        "http://10.0.0.1/",
        "file:///etc/passwd",
    ],
)
@pytest.mark.parametrize("major", [4, 5])
async def test_fetch_to_internal_addresses_is_refused(
    target, major, bundler, engine, executor, strict_transport, clock
):
    src = f"() => fetch({target!r}).then((r) => r.text())"
    if major == 4:
        invoke = f"invoke: {{ src: {src}, onDone: 'busy', onError: {{ target: 'failed', actions: assign({{ public: (c, e) => ({{ error: String(e.data && e.data.message) }}) }}) }} }}"
        extra = "predictableActionArguments: true,"
        fetching = f"fetching: {{ {invoke} }},"
        machine = f"""
export default createMachine({{ id: "f", {extra} initial: "idle", context: {{ public: {{}} }},
  states: {{ idle: {{ on: {{ go: "fetching" }} }}, {fetching} busy: {{}}, failed: {{}} }} }});
"""
    else:
        machine = f"""
export default setup({{ actors: {{ get: fromPromise({src}) }} }}).createMachine({{ id: "f", initial: "idle", context: {{ public: {{}} }},
  states: {{ idle: {{ on: {{ go: "fetching" }} }},
    fetching: {{ invoke: {{ src: "get", onDone: "busy", onError: {{ target: "failed", actions: assign({{ public: ({{ event }}) => ({{ error: String(event.error && event.error.message) }}) }}) }} }} }},
    busy: {{}}, failed: {{}} }} }});
"""
    inst = local(prepare(bundler, engine, machine, major), executor, strict_transport, clock)
    await inst.create()
    result = await inst.send("go")
    assert result.ok
    assert inst.current is not None and inst.current.state == "failed"
    error = inst.current.public_context["error"]
    assert "refused" in error or "only http" in error, error


# -- guest data and budget attacks (from the runtime review) -------------------------------------

# Only the wall limit is within reach: ten minutes of CPU, no job limit to speak of, so each loop
# below (endless otherwise) can end only at entry_wall_ms, however busy the machine is.
WALL = Limits(cpu_ms=600_000, entry_wall_ms=400, max_jobs=2**31 - 1)


@pytest.mark.parametrize(
    "action",
    [
        "() => { (async () => { for (;;) await crypto.subtle.digest('SHA-256', new Uint8Array(1)); })(); }",
        "() => { (async () => { for (;;) { try { await fetch('http://127.0.0.1:9/'); } catch (e) {} } })(); }",
        "() => { const burn = () => { const t = Date.now(); let i = 0; while (i < 3e6) i++; return Promise.resolve().then(burn); }; burn(); }",
    ],
    ids=["host-answered-loop", "refused-fetch-loop", "cpu-per-job"],
)
async def test_an_entry_never_outlives_its_wall_time(action, bundler, engine, executor, strict_transport, clock):
    prepared = prepare(bundler, engine, hostile_machine(action, 4), 4, limits=replace(WALL, max_fetches=0))
    inst = local(prepared, executor, strict_transport, clock)
    await inst.create()
    started = time.monotonic()
    result = await inst.send("go")
    assert result.outcome is Outcome.EXCEEDED_WALL_TIME, result.error
    assert "entry_wall_ms = 400" in (result.error or "")
    # The loops are endless: the wall limit ended them. 400 ms of wall time plus what a loaded machine
    # adds (a bound on a hang, not a figure: figures live in bench/).
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("major", [4, 5])
@pytest.mark.parametrize(
    "action",
    [
        # nested deeper than Python's json module can parse
        "assign({ deep: () => { let v = 1; for (let i = 0; i < 5000; i++) v = [v]; return v; } })",
        # the machine replaces JSON.stringify to forge what the host reads
        '() => { JSON.stringify = () => \'{"transitions": 5, "nextTimerMs": 1e400}\'; }',
        # an integer Python refuses to parse, inside a delayed event
        "() => { Object.prototype.toJSON = undefined; }",
    ],
    ids=["deep-context", "forged-stringify", "prototype-tojson"],
)
async def test_malformed_guest_data_is_a_guest_error_never_a_host_exception(
    action, major, bundler, engine, executor, transport, clock
):
    inst = local(prepare(bundler, engine, hostile_machine(action, major), major), executor, transport, clock)
    await inst.create()
    result = await inst.send("go")
    assert result.outcome in (Outcome.OK, Outcome.GUEST_ERROR, Outcome.EXCEEDED_STACK), result.error
    if result.ok:  # the forgery did not reach the host: the transition happened as usual
        assert inst.current is not None and inst.current.state == "busy"
        await inst.send("back")
    await _assert_still_healthy(inst, bundler, engine, executor, transport, clock, major)


async def test_a_sandbox_that_fails_to_start_answers_with_the_fault(bundler, engine, executor, transport, clock):
    body = "let spin = 0; for (let i = 0; i < 2e7; i++) spin += i;\n" + hostile_machine("() => {}", 4)
    prepared = prepare(bundler, engine, body, 4)
    prepared.limits = replace(prepared.limits, cpu_ms=5)  # the next sandboxes cannot finish loading
    with prepared.new_instance() as sandbox:
        round_ = sandbox.begin(StepRequest("create", "x", {}), clock.now_ms())
    if engine.name == "quickjs-wasm":
        # The WASM engine ran the machine's top-level code once, into its memory image, at prepare:
        # windows start from that image and never load the machine again.
        assert round_.ok, round_.error
        return
    assert round_.outcome is Outcome.EXCEEDED_CPU
    assert "failed to load" in (round_.error or "")
    decision = prepared.authorize_read(ReadRequest("x", "idle", {}, {}))
    assert not decision.allowed and decision.outcome is Outcome.EXCEEDED_CPU


@pytest.mark.parametrize("major", [4, 5])
async def test_clients_cannot_send_xstate_internal_events(major, bundler, engine, executor, transport, clock):
    after = "xstate.after(60000)#m.armed" if major == 4 else "xstate.after.60000.m.armed"
    body = f"""
export default createMachine({{ id: "m", {"predictableActionArguments: true," if major == 4 else ""} initial: "armed",
  states: {{ armed: {{ after: {{ 60000: "expired" }} }}, expired: {{}} }} }});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    for forged in (after, "error.platform.x", "xstate.error.actor.x", "done.invoke.x"):
        result = await inst.send({"type": forged}, {"user": "mallory"})
        assert result.outcome is Outcome.INVALID_EVENT, forged
        assert "reserved" in (result.error or "")
    assert inst.current is not None and inst.current.state == "armed"
    assert (await inst.send({"type": after}, None)).ok  # the host delivering the timer may
    assert inst.current.state == "expired"


@pytest.mark.parametrize("major", [4, 5])
async def test_the_persisted_snapshot_is_size_limited_too(major, bundler, engine, executor, transport, clock):
    # v4 keeps the last event in its snapshot twice (event and _event): 1.5 MB of service output
    # makes a 3 MB snapshot. v5 keeps none of it; its history row holds the event: 2.1 MB.
    size = 1_500_000 if major == 4 else 2_100_000
    big = f"() => Promise.resolve({{ blob: 'x'.repeat({size}) }})"
    if major == 4:
        body = f"""
export default createMachine({{ id: "m", predictableActionArguments: true, initial: "idle", states: {{
  idle: {{ on: {{ go: "working" }} }},
  working: {{ invoke: {{ src: {big}, onDone: "done" }} }},
  done: {{}} }} }});
"""
    else:
        body = f"""
export default setup({{ actors: {{ big: fromPromise({big}) }} }}).createMachine({{ id: "m", initial: "idle", states: {{
  idle: {{ on: {{ go: "working" }} }},
  working: {{ invoke: {{ src: "big", onDone: "done" }} }},
  done: {{}} }} }});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    result = await inst.send("go")
    failed = result.late_fault or result  # the promise may settle inside the first entry or later
    assert failed.outcome is Outcome.EXCEEDED_SNAPSHOT_SIZE, failed.error
    assert "max_snapshot_bytes" in (failed.error or "")
    assert inst.current is not None and inst.current.state in ("idle", "working")
    assert len(json.dumps(inst.persisted)) < 100_000


async def test_authorizer_log_floods_are_capped(bundler, engine, executor, transport, clock):
    source = (
        HEADER[4]
        + hostile_machine("() => {}", 4)
        + (
            "export const allowWrite = () => true;\n"
            "export const allowRead = () => { for (let i = 0; i < 50; i++) console.log('y'.repeat(100000)); return true; };\n"
        )
    )
    prepared = prepare(bundler, engine, source, 4, header=False)
    decision = prepared.authorize_read(ReadRequest("x", "idle", {}, {}))
    assert decision.allowed
    assert sum(len(line.text) for line in decision.logs) <= prepared.limits.max_log_bytes + 1000
    assert any("log limit reached" in line.text for line in decision.logs)
