"""``statehost serve`` on a controllable clock — for tests only.

    python -m tests.oracle.serve --clock-ms MS serve --data-dir DIR --port PORT ...

runs the real ``statehost serve`` command (``server.cli.main``: the same arguments, app, database,
timer service and HTTP API) with one difference: the engine's clock is a :class:`FakeClock` that
starts at ``--clock-ms`` and moves only when the test says so, through one extra route that exists
only in this wrapper:

``POST /__oracle/clock {"to": MS}``
    Moves the clock to ``MS`` (never backwards) the way ``statehost run --advance`` and XState's
    fake clock do: to each due timer's time in turn, waiting at each stop until every timer due by
    then has been delivered (or moved to a later retry), so that a timer set by a delivery is due
    relative to the time it fired at; then to ``MS``. ``{"to": <now>}`` just waits for the timers
    already due. Answers ``{"nowMs": MS, "delivered": <deliveries since start>}``.

The clock does not survive the process: a restarted server starts where ``--clock-ms`` says (the
test passes the last time it set). Timers are stored with absolute due times, so a timer due before
that fires at once after the restart, as it would after real downtime. Nothing in ``server/`` knows
about this module; it only uses ``create_app``'s ``clock`` parameter, which exists for injection.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from aiohttp import web

import server.app
from runtime import FakeClock
from server.app import ENGINE
from server.cli import main as statehost_main

DRAIN_CAP_S = 120.0
POLL_S = 0.005


async def _drained(engine: Any, clock: FakeClock) -> None:
    """Wait (bounded) until no timer is due at the clock's time and none is being delivered."""
    timers = engine._timers
    deadline = time.monotonic() + DRAIN_CAP_S
    while True:
        if not timers._in_flight and not await engine.store.due_timers(clock.now_ms(), 1):
            return
        if time.monotonic() > deadline:
            raise web.HTTPGatewayTimeout(text=f"timers due at {clock.now_ms()} were not delivered in {DRAIN_CAP_S} s")
        await asyncio.sleep(POLL_S)


def install(clock: FakeClock) -> None:
    original = server.app.create_app

    def create_app(settings: Any, *, clock: Any = None, bundler: Any = None) -> web.Application:
        app = original(settings, clock=fake, bundler=bundler)
        lock = asyncio.Lock()

        async def move(request: web.Request) -> web.Response:
            body = await request.json()
            target = body.get("to")
            if not isinstance(target, int) or target < fake.now_ms():
                return web.json_response(
                    {"code": "invalid-parameter", "error": f"to must be a time at or after {fake.now_ms()}"},
                    status=400,
                )
            engine = request.app[ENGINE]
            async with lock:
                while True:
                    await _drained(engine, fake)
                    due = await engine.store.next_timer_due()
                    if due is None or due > target:
                        break
                    fake.set(max(due, fake.now_ms()))
                fake.set(target)
                await _drained(engine, fake)
            return web.json_response({"nowMs": fake.now_ms(), "delivered": engine._timers.delivered})

        app.router.add_post("/__oracle/clock", move)
        return app

    fake = clock
    server.app.create_app = create_app  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clock-ms", type=int, required=True, help="the clock's time at start")
    args, rest = parser.parse_known_args()
    install(FakeClock(args.clock_ms))
    sys.exit(statehost_main(rest))


if __name__ == "__main__":
    main()
