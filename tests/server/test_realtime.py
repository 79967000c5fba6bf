"""/rt through real WebSockets on loopback: subscribe, updates per committed transition (client
events and timers), allowRead on subscribe and on every push, bad tokens, fan-out under load."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.server.api_support import Api, key_token

MACHINE = b"""import { createMachine, assign } from "xstate";
export const allowRead = ({ authContext, context }) => authContext.sub !== "blocked" && !(context.hidden && authContext.sub === "watcher");
export const allowWrite = () => true;
export default createMachine({
  id: "rt", predictableActionArguments: true, initial: "idle", context: { public: { n: 0 }, secret: "s", hidden: false },
  states: {
    idle: { on: {
      bump: { actions: assign({ public: (c) => ({ n: c.public.n + 1 }) }) },
      hide: { actions: assign({ hidden: () => true }) },
      start: "ticking",
    } },
    ticking: { after: { 300: "idle" } },
  },
});
"""


async def _socket(api: Api, token: str | None, session: aiohttp.ClientSession | None = None):
    query = f"?token={token}" if token is not None else ""
    if session is None:
        return await api.client.ws_connect("/rt" + query)
    return await session.ws_connect(api.client.make_url("/rt" + query))


async def _next(ws, within: float = 60.0) -> dict[str, Any]:
    message = await ws.receive(timeout=within)
    return json.loads(message.data)


def _subscribe(request_id: str, instance: str = "i1") -> dict[str, str]:
    return {
        "type": "subscribe-to-instance",
        "requestId": request_id,
        "machineName": "rt",
        "machineInstanceName": instance,
    }


async def _setup(api: Api) -> str:
    await api.deploy("rt", MACHINE, filename="rt.ts")
    key_id, secret = await api.key(use="production")
    await api.call("POST", "/machines/rt", body={"slug": "i1"})
    return key_token(key_id, secret, {"sub": "alice"}), key_id, secret  # type: ignore[return-value]


async def test_subscribers_see_the_current_state_then_every_committed_transition(api: Api):
    token, _key_id, _secret = await _setup(api)
    ws = await _socket(api, token)
    await ws.send_json(_subscribe("r1"))
    first = await _next(ws)
    assert first == {
        "type": "instance-update",
        "machineName": "rt",
        "machineInstanceName": "i1",
        "ts": first["ts"],
        "state": "idle",
        "publicContext": {"n": 0},
        "tags": [],
        "done": False,
    }
    _status, sent = await api.call("POST", "/machines/rt/i/i1/events", body={"event": "bump"})
    update = await _next(ws)
    assert update["publicContext"] == {"n": 1} and update["ts"] == sent["ts"]  # same ts as the HTTP answer
    assert "secret" not in json.dumps(update)
    # a timer-driven transition reaches subscribers without any client event
    await api.call("POST", "/machines/rt/i/i1/events", body={"event": "start"})
    assert (await _next(ws))["state"] == "ticking"
    assert (await _next(ws))["state"] == "idle"
    # unsubscribe by requestId; a second subscription to the same instance stays
    await ws.send_json(_subscribe("r2"))
    await _next(ws)  # r2's current state
    await ws.send_json(
        {"type": "unsubscribe-from-instance", "requestId": "r1", "machineName": "rt", "machineInstanceName": "i1"}
    )
    await ws.send_json({"type": "ping"})
    await api.call("POST", "/machines/rt/i/i1/events", body={"event": "bump"})
    assert (await _next(ws))["publicContext"] == {"n": 2}
    # exactly one update per commit: r1 is gone (its copy of n=2 would come before n=3)
    await api.call("POST", "/machines/rt/i/i1/events", body={"event": "bump"})
    assert (await _next(ws))["publicContext"] == {"n": 3}
    await ws.close()


async def test_errors_are_messages_and_bad_tokens_do_not_refuse_the_upgrade(api: Api):
    token, key_id, secret = await _setup(api)
    for bad in ("garbage", None, key_token(key_id, "sbsec_wrong_secret_of_at_least_32_bytes", {"sub": "x"})):
        ws = await _socket(api, bad)  # the upgrade succeeds
        await ws.send_json(_subscribe("x1"))
        assert await _next(ws) == {"type": "error", "requestId": "x1", "status": 403, "code": "missing-user"}
        await ws.close()
    ws = await _socket(api, token)
    await ws.send_json(_subscribe("m1", instance="missing"))
    assert (await _next(ws))["status"] == 404
    blocked = await _socket(api, key_token(key_id, secret, {"sub": "blocked"}))
    await blocked.send_json(_subscribe("b1"))
    assert await _next(blocked) == {
        "type": "error",
        "requestId": "b1",
        "status": 403,
        "code": "rejected-by-machine-authorizer",
    }
    await ws.send_json("not json at all")
    await ws.send_str("{broken")
    await ws.send_str("[" * 30_000)  # nesting deeper than the JSON parser recurses
    await ws.send_json(_subscribe("ok"))
    assert (await _next(ws))["type"] == "instance-update"  # the socket survived the garbage
    await ws.close()
    await blocked.close()


async def test_admins_subscribe_as_an_end_user_with_the_act_parameter(api: Api):
    """statehost extension: ``x-statebacked-act`` as a query parameter, for admin tokens only."""
    token, _key_id, _secret = await _setup(api)
    blocked = quote(json.dumps({"sub": "blocked"}))
    ws = await api.client.ws_connect(f"/rt?token={api.admin_token}&x-statebacked-act={blocked}")
    await ws.send_json(_subscribe("a1"))
    assert (await _next(ws))["code"] == "rejected-by-machine-authorizer"  # allowRead saw sub=blocked
    await ws.close()
    alice = quote(json.dumps({"sub": "alice"}))
    ws = await api.client.ws_connect(f"/rt?token={api.admin_token}&x-statebacked-act={alice}")
    await ws.send_json(_subscribe("a2"))
    assert (await _next(ws))["type"] == "instance-update"
    await ws.close()
    # A key-signed token may not act as someone else: its own authContext stays its own.
    ws = await api.client.ws_connect(f"/rt?token={token}&x-statebacked-act={alice}")
    await ws.send_json(_subscribe("a3"))
    assert await _next(ws) == {"type": "error", "requestId": "a3", "status": 403, "code": "missing-scope"}
    await ws.close()
    ws = await api.client.ws_connect(f"/rt?token={api.admin_token}&x-statebacked-act=%7Bnot-json")
    await ws.send_json(_subscribe("a4"))
    assert await _next(ws) == {"type": "error", "requestId": "a4", "status": 400, "code": "invalid-parameter"}
    await ws.close()


async def test_allow_read_is_rechecked_before_every_push(api: Api):
    token, key_id, secret = await _setup(api)
    watcher = await _socket(api, key_token(key_id, secret, {"sub": "watcher"}))
    other = await _socket(api, token)
    for ws in (watcher, other):
        await ws.send_json(_subscribe("s"))
        await _next(ws)
    await api.call("POST", "/machines/rt/i/i1/events", body={"event": "hide"})  # the watcher may no longer read
    assert (await _next(other))["type"] == "instance-update"
    with pytest.raises(asyncio.TimeoutError):
        await _next(watcher, within=0.5)
    await watcher.close()
    await other.close()


@pytest.mark.slow
@pytest.mark.timeout(600)  # 1,500 sockets: minutes on a busy machine
async def test_fan_out_500_subscribers_on_one_instance_and_200_instances_with_5_each(api: Api):
    token, _key_id, _secret = await _setup(api)
    # Our own client session: the test client's pool stops at 100 connections.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await _fan_out(api, token, session)


async def _fan_out(api: Api, token: str, session: aiohttp.ClientSession) -> None:
    sockets = [await _socket(api, token, session) for _ in range(500)]
    for n, ws in enumerate(sockets):
        await ws.send_json(_subscribe(f"r{n}"))
    for ws in sockets:
        assert (await _next(ws))["state"] == "idle"
    for _ in range(10):
        await api.call("POST", "/machines/rt/i/i1/events", body={"event": "bump"})

    async def collect(ws) -> list[int]:
        return [(await _next(ws))["publicContext"]["n"] for _ in range(10)]

    received = await asyncio.gather(*(collect(ws) for ws in sockets))  # speed: bench/realtime_fanout.py
    assert all(seen == list(range(1, 11)) for seen in received)
    for ws in sockets:
        await ws.close()

    names = [f"m{n}" for n in range(200)]
    for name in names:
        await api.call("POST", "/machines/rt", body={"slug": name})
    watchers = {name: [await _socket(api, token, session) for _ in range(5)] for name in names}
    for name, group in watchers.items():
        for n, ws in enumerate(group):
            await ws.send_json(_subscribe(f"{name}-{n}", instance=name))
            await _next(ws)
    await asyncio.gather(*(api.call("POST", f"/machines/rt/i/{name}/events", body={"event": "bump"}) for name in names))
    for group in watchers.values():
        for ws in group:
            assert (await _next(ws))["publicContext"] == {"n": 1}
            await ws.close()


async def test_shutdown_closes_sockets_with_going_away(tmp_path, bundler):
    """aiohttp waits for open handlers before cleanup: sockets must be closed in on_shutdown, or a
    stop hangs and clients see 1006 instead of a close frame (found by the interop tests)."""
    from aiohttp.test_utils import TestServer

    from server.app import create_app
    from server.config import Settings

    app = create_app(
        Settings(database=tmp_path / "db", bootstrap_file=tmp_path / "admin.json", workers=2), bundler=bundler
    )
    server = TestServer(app)
    await server.start_server()
    token = json.loads((tmp_path / "admin.json").read_text())["adminToken"]
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url(f"/rt?token={token}"))
        started = time.monotonic()
        closing = asyncio.ensure_future(server.close())
        message = await ws.receive(timeout=60)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == aiohttp.WSCloseCode.GOING_AWAY
        await ws.close()
        await asyncio.wait_for(closing, 60)
        # A hang would last aiohttp's shutdown timeout (60 s): half of it tells them apart on a busy machine
        assert time.monotonic() - started < 30
