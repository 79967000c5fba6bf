"""``GET /rt``: the real-time WebSocket (wire-api section 4).

The upgrade is never refused: a bad or expired token is answered per subscribe with an ``error``
(403 missing-user), because the official client reconnects in a tight loop when an upgrade fails.

statehost extension: an ``x-statebacked-act`` query parameter does on the socket what the header
does on HTTP (an admin acting as an end user, for ``statehost instances watch --auth-context``).
The official client never sends it (wire-api 4.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError, NotFound
from ..subscriptions import Connection, Hub, Subscription, update_message
from .common import AUTH, HUB, INSTANCE_ADMIN, MACHINES, SETTINGS

routes = web.RouteTableDef()


def _error(request_id: Any, exc: ApiError) -> str:
    return json.dumps({"type": "error", "requestId": request_id, "status": exc.status, "code": exc.code})


@routes.get("/rt")
async def realtime(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    ws = web.WebSocketResponse(max_msg_size=64 * 1024)
    await ws.prepare(request)
    # Registered before anything awaits, so that a shutdown starting now closes this socket too.
    connection = Connection(ws, None, None)
    hub.connections.add(connection)
    if hub.closing:
        hub.connections.discard(connection)
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        return ws
    try:
        connection.caller = await request.app[AUTH].caller(
            request.query.get("token"),
            org_header=request.query.get("x-statebacked-org-id") or None,
            act_header=request.query.get("x-statebacked-act"),
        )
    except ApiError as exc:
        connection.auth_error = exc
    writer = asyncio.create_task(connection.writer())
    idle = request.app[SETTINGS].rt_idle_timeout_s
    try:
        while True:
            try:
                message = await ws.receive(timeout=idle)
            except TimeoutError:
                await ws.close(code=1000, message=b"idle")
                break
            if message.type != WSMsgType.TEXT:
                break
            try:
                data = json.loads(message.data)
            except (ValueError, RecursionError):
                continue  # like the client: frames that cannot be parsed are ignored
            if isinstance(data, dict):
                await _handle(request, hub, connection, data)
    finally:
        hub.drop(connection)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await writer
    return ws


async def _handle(request: web.Request, hub: Hub, connection: Connection, data: dict[str, Any]) -> None:
    kind, request_id = data.get("type"), data.get("requestId")
    if kind == "unsubscribe-from-instance":
        subscription = connection.subscriptions.get(str(request_id))
        if subscription is not None:
            hub.remove(subscription)
        return
    if kind != "subscribe-to-instance" or str(request_id) in connection.subscriptions:
        return  # pings, unknown types, and repeated subscribes are no-ops
    try:
        await _subscribe(request, hub, connection, str(request_id), data)
    except ApiError as exc:
        connection.send(_error(request_id, exc))


async def _subscribe(
    request: web.Request, hub: Hub, connection: Connection, request_id: str, data: dict[str, Any]
) -> None:
    caller = connection.caller  # read once: a revocation may clear it while this subscribe awaits
    if caller is None:
        raise connection.auth_error if isinstance(connection.auth_error, ApiError) else NotFound("no caller")
    org = caller.require("state.read")
    machine_slug, instance_name = data.get("machineName"), data.get("machineInstanceName")
    if not isinstance(machine_slug, str) or not isinstance(instance_name, str):
        raise NotFound("subscribe needs machineName and machineInstanceName")
    machine = await request.app[MACHINES].machine(org, machine_slug)
    subscription = Subscription(connection, request_id, machine.id, machine_slug, instance_name, caller.auth_context)
    if connection.caller is not caller:  # revoked meanwhile
        raise connection.auth_error if isinstance(connection.auth_error, ApiError) else NotFound("no caller")
    # Registered before the current state is read, so no committed update can fall in between.
    hub.add(subscription)
    try:
        await hub.watch(subscription)
        state = await request.app[INSTANCE_ADMIN].subscriber_state(
            org, machine.id, machine_slug, instance_name, subscription.auth_context
        )
    except ApiError:
        hub.remove(subscription)
        raise
    if connection.subscriptions.get(request_id) is not subscription:
        return  # revoked while it was being set up (server/revocation.py sent its error)
    subscription.offer(state.ts, update_message(machine_slug, instance_name, state))
