"""Hostile machines: each hits its limit as a value (an Outcome naming the limit), the instance keeps
its last good state, the test process survives, and a well-behaved machine runs right after."""

from __future__ import annotations

import pytest

from runtime import Limits, Outcome
from tests.support import local, prepare

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
    prepared = prepare(bundler, engine, hostile_machine(action, major), major, limits=SMALL)
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
