"""The settle window: persist before effect, at-most-once services (cut off by the window or by a
crash), ephemeral timers inside the window, and restores in the middle of an `after`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from runtime import FetchRequest, Limits, Outcome, Round, StepRequest, SystemClock, run_window
from runtime.settle import Delivery, Inbox
from tests.support import HEADER, local, prepare

MAJORS = [4, 5]


class Service:
    """A real HTTP server on loopback that counts hits: /fast answers at once, /slow never in time."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.slow_started = asyncio.Event()
        self.url = ""

    async def fast(self, request: web.Request) -> web.Response:
        self.hits["fast"] += 1
        return web.json_response({"value": 42})

    async def slow(self, request: web.Request) -> web.Response:
        self.hits["slow"] += 1
        self.slow_started.set()
        await asyncio.sleep(600)  # "never": far beyond any bound a test waits for (cleanup ends it)
        return web.json_response({"value": "late"})


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service()
    app = web.Application()
    app.router.add_get("/fast", svc.fast)
    app.router.add_get("/slow", svc.slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    svc.url = f"http://127.0.0.1:{port}"
    try:
        yield svc
    finally:
        await runner.cleanup()


def loader(major: int) -> str:
    """idle --load{path}--> loading (invokes fetch) --> loaded | failed; `ping` counts in any state."""
    if major == 4:
        return """
export default createMachine({
  id: "loader", predictableActionArguments: true, initial: "idle",
  context: { public: { pings: 0, value: null, error: null } },
  on: { ping: { actions: assign({ public: (c) => ({ ...c.public, pings: c.public.pings + 1 }) }) } },
  states: {
    idle: { on: { load: "loading" } },
    loading: {
      invoke: {
        id: "fetcher",
        src: (c, e) => fetch(c.baseUrl + e.path).then((r) => r.json()),
        onDone: { target: "loaded", actions: assign({ public: (c, e) => ({ ...c.public, value: e.data.value }) }) },
        onError: { target: "failed", actions: assign({ public: (c, e) => ({ ...c.public, error: e.data.name + ": " + e.data.message }) }) },
      },
    },
    loaded: { on: { load: "loading" } },
    failed: { on: { load: "loading" } },
  },
});
"""
    return """
export default setup({
  actors: { fetcher: fromPromise(async ({ input }) => (await fetch(input.url)).json()) },
}).createMachine({
  id: "loader", initial: "idle",
  context: { public: { pings: 0, value: null, error: null } },
  on: { ping: { actions: assign({ public: ({ context }) => ({ ...context.public, pings: context.public.pings + 1 }) }) } },
  states: {
    idle: { on: { load: "loading" } },
    loading: {
      invoke: {
        id: "fetcher", src: "fetcher",
        input: ({ context, event }) => ({ url: context.baseUrl + event.path }),
        onDone: { target: "loaded", actions: assign({ public: ({ context, event }) => ({ ...context.public, value: event.output.value }) }) },
        onError: { target: "failed", actions: assign({ public: ({ context, event }) => ({ ...context.public, error: event.error.name + ": " + event.error.message }) }) },
      },
    },
    loaded: { on: { load: "loading" } },
    failed: { on: { load: "loading" } },
  },
});
"""


class RecordingTransport:
    """The real transport, with a log of when each fetch started relative to commits."""

    def __init__(self, inner, events: list[str]) -> None:
        self.inner = inner
        self.events = events

    async def fetch(self, request: FetchRequest, limits: Limits):
        self.events.append(f"fetch {request.url.rsplit('/', 1)[-1]}")
        return await self.inner.fetch(request, limits)


@pytest.mark.parametrize("major", MAJORS)
async def test_a_fetch_runs_only_after_the_transition_that_started_it_is_committed(
    major, bundler, engine, executor, transport, clock, service
):
    prepared = prepare(bundler, engine, loader(major), major)
    inst = local(prepared, executor, transport, clock)
    await inst.create({"baseUrl": service.url})
    events: list[str] = []

    async def commit(round_: Round, tag: object) -> None:
        await inst._commit(round_)
        events.extend(f"commit {t.state}" for t in round_.transitions)

    request = StepRequest("event", inst.name, {}, persisted=inst.persisted, event={"type": "load", "path": "/fast"})
    result = await run_window(
        prepared,
        request,
        executor=executor,
        commit=commit,
        transport=RecordingTransport(transport, events),
        clock=clock,
    )
    assert result.ok and not result.cut_off
    assert events == ["commit loading", "fetch fast", "commit loaded"]
    assert inst.current is not None and inst.current.public_context["value"] == 42
    assert inst.persisted is not None and inst.persisted["inflight"] == []


@pytest.mark.parametrize("major", MAJORS)
async def test_a_service_cut_off_by_the_window_is_not_rerun_and_errors_first(
    major, bundler, engine, executor, transport, service
):
    prepared = prepare(bundler, engine, loader(major), major, limits=Limits(settle_window_ms=300))
    inst = local(prepared, executor, transport, SystemClock())
    await inst.create({"baseUrl": service.url})
    result = await inst.send({"type": "load", "path": "/slow"})
    # The window ended with the service running: the latest state is returned, and the service is
    # recorded as in flight.
    assert result.ok and result.cut_off
    assert inst.current is not None and inst.current.state == "loading"
    assert inst.persisted is not None and len(inst.persisted["inflight"]) == 1
    # The next event first delivers the service's error event, then itself; nothing is re-run.
    result = await inst.send("ping")
    assert result.ok and not result.cut_off
    assert inst.current.state == "failed"
    assert inst.current.public_context["pings"] == 1
    assert inst.current.public_context["error"].startswith("ServiceCutOff: ")
    assert [t.event["type"] for t in result.committed[0].transitions] == [
        "error.platform.fetcher" if major == 4 else "xstate.error.actor.fetcher",
        "ping",
    ]
    assert service.hits["slow"] == 1
    assert inst.persisted["inflight"] == []


class Crash(Exception):
    pass


@pytest.mark.parametrize("major", MAJORS)
async def test_a_crash_after_commit_neither_loses_the_transition_nor_reruns_the_service(
    major, bundler, engine, executor, transport, clock, service
):
    prepared = prepare(bundler, engine, loader(major), major)
    inst = local(prepared, executor, transport, clock)
    await inst.create({"baseUrl": service.url})

    async def commit_then_die(round_: Round, tag: object) -> None:
        await inst._commit(round_)
        raise Crash  # the process dies right after the durable commit

    request = StepRequest("event", inst.name, {}, persisted=inst.persisted, event={"type": "load", "path": "/fast"})
    with pytest.raises(Crash):
        await run_window(prepared, request, executor=executor, commit=commit_then_die, transport=transport, clock=clock)
    assert inst.current is not None and inst.current.state == "loading"
    assert service.hits["fast"] == 0  # persist before effect: the request never went out
    # "Restart": a fresh sandbox from the committed row. The service is not re-run.
    result = await inst.send("ping")
    assert result.ok
    assert inst.current.state == "failed"
    assert service.hits["fast"] == 0


@pytest.mark.parametrize("major", MAJORS)
async def test_child_machine_timers_fire_inside_the_window_and_are_never_persisted(
    major, bundler, engine, executor, transport
):
    if major == 4:
        body = """
const child = createMachine({ id: "kid", initial: "wait", states: { wait: { after: { 40: "done" } }, done: { type: "final" } } });
export default createMachine({ id: "parent", predictableActionArguments: true, initial: "idle", states: {
  idle: { on: { go: "waiting" } },
  waiting: { invoke: { id: "kid", src: child, onDone: "finished" } },
  finished: {},
} });
"""
    else:
        body = """
const child = createMachine({ id: "kid", initial: "wait", states: { wait: { after: { 40: "done" } }, done: { type: "final" } } });
export default setup({ actors: { child } }).createMachine({ id: "parent", initial: "idle", states: {
  idle: { on: { go: "waiting" } },
  waiting: { invoke: { id: "kid", src: "child", onDone: "finished" } },
  finished: {},
} });
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, SystemClock())
    await inst.create()
    result = await inst.send("go")
    assert result.ok and not result.cut_off
    assert inst.current is not None and inst.current.state == "finished"
    assert inst.timers == {}


@pytest.mark.parametrize("major", MAJORS)
async def test_set_timeout_inside_a_promise_service_runs_on_the_host_clock(major, bundler, engine, executor, transport):
    wait = "new Promise((resolve) => setTimeout(() => resolve(7), 25))"
    if major == 4:
        body = f"""
export default createMachine({{ id: "t", predictableActionArguments: true, initial: "idle", context: {{ public: {{}} }}, states: {{
  idle: {{ on: {{ go: "waiting" }} }},
  waiting: {{ invoke: {{ src: () => {wait}, onDone: {{ target: "done", actions: assign({{ public: (c, e) => ({{ got: e.data }}) }}) }} }} }},
  done: {{}},
}} }});
"""
    else:
        body = f"""
export default setup({{ actors: {{ wait: fromPromise(() => {wait}) }} }}).createMachine({{ id: "t", initial: "idle", context: {{ public: {{}} }}, states: {{
  idle: {{ on: {{ go: "waiting" }} }},
  waiting: {{ invoke: {{ src: "wait", onDone: {{ target: "done", actions: assign({{ public: ({{ event }}) => ({{ got: event.output }}) }}) }} }} }},
  done: {{}},
}} }});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, SystemClock())
    await inst.create()
    assert (await inst.send("go")).ok
    assert inst.current is not None and inst.current.public_context == {"got": 7}


@pytest.mark.parametrize("major", MAJORS)
async def test_restoring_mid_after_neither_rearms_nor_loses_the_timer(
    major, bundler, engine, executor, transport, clock
):
    body = f"""
export default createMachine({{ id: "a", {"predictableActionArguments: true," if major == 4 else ""} initial: "armed",
  context: {{ public: {{ pings: 0 }} }},
  states: {{
    armed: {{
      after: {{ 5000: "fired" }},
      on: {{ ping: {{ actions: assign({{ public: {"(c) => ({ pings: c.public.pings + 1 })" if major == 4 else "({ context }) => ({ pings: context.public.pings + 1 })"} }}) }} }},
    }},
    fired: {{}},
  }},
}});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create()
    (timer_row,) = inst.timers
    due = inst.timers[timer_row].due_ms
    clock.advance(3000)
    result = await inst.send("ping")  # restores mid-after in a fresh sandbox
    assert result.ok
    assert all(op.op != "set" for r in result.committed for op in r.timers)  # nothing re-armed
    assert inst.timers[timer_row].due_ms == due  # the original deadline stands
    await inst.advance_to(due, clock.set)
    assert inst.current is not None and inst.current.state == "fired"
    assert inst.current.public_context == {"pings": 1}


async def test_an_oversized_initial_context_commits_nothing(bundler, engine, executor, transport, clock):
    source_body = 'export default createMachine({ id: "d", initial: "a", states: { a: {} } });'
    prepared = prepare(bundler, engine, source_body, 4)
    commits: list[Round] = []

    async def commit(round_: Round, tag: object) -> None:
        commits.append(round_)

    request = StepRequest("create", "x", {}, context={"blob": "x" * 100_000})
    result = await run_window(prepared, request, executor=executor, commit=commit, transport=transport, clock=clock)
    assert result.outcome is Outcome.EXCEEDED_EVENT_SIZE
    assert commits == []


@pytest.mark.parametrize("major", MAJORS)
async def test_events_join_an_open_window_without_waiting_for_its_services(
    major, bundler, engine, executor, transport, service
):
    body = loader(major).replace("loading: {\n      invoke", 'loading: {\n      on: { cancel: "idle" },\n      invoke')
    authorizers = (
        "export const allowRead = () => true;\n"
        "export const allowWrite = ({ event }) => !event || event.type !== 'forbidden';\n"
    )
    prepared = prepare(bundler, engine, HEADER[major] + authorizers + body, major, header=False)
    inst = local(prepared, executor, transport, SystemClock())
    await inst.create({"baseUrl": service.url})
    inbox = Inbox()
    tags: list[object] = []

    async def commit(round_: Round, tag: object) -> None:
        await inst._commit(round_)
        tags.append(tag)

    request = StepRequest("event", inst.name, {}, persisted=inst.persisted, event={"type": "load", "path": "/slow"})
    window = asyncio.ensure_future(
        run_window(
            prepared,
            request,
            executor=executor,
            commit=commit,
            transport=transport,
            clock=SystemClock(),
            tag="load",
            inbox=inbox,
        )
    )
    await asyncio.wait_for(service.slow_started.wait(), 60)  # the fetch went out: the window is open
    denied = Delivery({"type": "forbidden"}, {"user": "x"}, tag="forbidden")
    inbox.put(denied)
    assert (await denied.accepted).outcome is Outcome.DENIED
    cancel = Delivery({"type": "cancel"}, {"user": "x"}, tag="cancel")
    inbox.put(cancel)
    assert (await cancel.accepted).ok
    # settles long before /slow would answer: leaving `loading` stopped the service
    result = await asyncio.wait_for(window, 120)
    assert result.ok and not result.cut_off
    assert [t.state for t in inst.history] == ["idle", "loading", "idle"]
    assert tags == ["load", "cancel"]
    assert inst.persisted is not None and inst.persisted["inflight"] == []


@pytest.mark.parametrize("major", MAJORS)
async def test_a_fire_and_forget_fetch_from_an_action_is_performed_after_commit(
    major, bundler, engine, executor, transport, clock, service
):
    signature = "(c)" if major == 4 else "({ context: c })"
    body = f"""
export default createMachine({{ id: "n", {"predictableActionArguments: true," if major == 4 else ""} initial: "idle",
  states: {{ idle: {{ on: {{ notify: {{ target: "notified", actions: {signature} => {{ fetch(c.url + "/fast"); }} }} }} }},
            notified: {{}} }} }});
"""
    inst = local(prepare(bundler, engine, body, major), executor, transport, clock)
    await inst.create({"url": service.url})
    result = await inst.send("notify")
    assert result.ok and not result.cut_off  # settled: no service waits for the request ...
    assert inst.current is not None and inst.current.state == "notified"
    await asyncio.gather(*result.detached)  # ... but the committed effect still happens
    assert service.hits["fast"] == 1
