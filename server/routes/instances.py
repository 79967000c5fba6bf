"""Instances (wire-api 3.8-3.9): create, read, send events, list, history, admin, status, delete."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import InvalidParameter, NotFound
from ..store import InstanceRow
from ..upgrades import migration_chain
from .common import ENGINE, caller, iso, json_body, name, ok, only, page_response
from .machines import check_confirmation, confirmation, version_info

routes = web.RouteTableDef()


async def _instance(request: web.Request, org: str) -> tuple[int, InstanceRow]:
    """The instance row; 404 for a missing machine or instance, before any authorizer runs."""
    store = request.app[ENGINE].store
    machine = await store.machine(org, request.match_info["machine"])
    row = await store.find_instance(machine.id, request.match_info["instance"])
    if row is None:
        raise NotFound(f"instance {request.match_info['instance']!r} not found")
    return machine.id, row


@routes.post("/machines/{machine}")
async def create_instance(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("instances.write")
    body = await json_body(request)
    only(body, {"slug", "context", "machineVersionId"})
    slug = name(body.get("slug"), "slug")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidParameter("context must be a JSON object", parameter="context")
    version = body.get("machineVersionId")
    engine = request.app[ENGINE]
    if version is not None:
        if not isinstance(version, str):
            raise InvalidParameter("machineVersionId must be a string", parameter="machineVersionId")
        machine = await engine.store.machine(org, request.match_info["machine"])
        row = await engine.store.get_version(version)
        if row.machine_id != machine.id:
            raise NotFound(f"machine version {version!r} not found")
    state = await engine.instances.create(
        org, request.match_info["machine"], slug, context=context, auth_context=found.auth_context, version_id=version
    )
    return ok(state.wire())


@routes.get("/machines/{machine}/i/{instance}")
async def get_instance(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("state.read")
    # InstanceService.read answers 404 for a missing machine or instance before allowRead runs
    state = await request.app[ENGINE].instances.read(
        org, request.match_info["machine"], request.match_info["instance"], found.auth_context
    )
    return ok(state.wire())


@routes.post("/machines/{machine}/i/{instance}/events")
async def send_event(request: web.Request) -> web.Response:
    found = await caller(request)
    if "instances.write" not in found.scopes and "events.write" in found.scopes:
        org = found.require("events.write")
    else:
        org = found.require("instances.write")
    body = await json_body(request)
    only(body, {"event"})
    event = body.get("event")
    if isinstance(event, str):
        event = {"type": event}
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
        raise InvalidParameter("event must be a string or an object with a string type", parameter="event")
    # 404 for a missing machine or instance comes from the instance's window, before allowWrite
    state = await request.app[ENGINE].instances.send_event(
        org, request.match_info["machine"], request.match_info["instance"], event, found.auth_context
    )
    return ok(state.wire())


@routes.get("/machines/{machine}/i")
async def list_instances(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.read")
    store = request.app[ENGINE].store
    machine = await store.machine(org, request.match_info["machine"])
    page = await store.instances_page(machine.id, request.query.get("cursor"))
    instances = [
        {
            "slug": r["name"],
            "createdAt": iso(r["created_ms"]),
            "status": r["status"],
            "machineVersion": {
                "id": r["version_id"],
                "createdAt": iso(r["version_created_ms"]),
                "clientInfo": r["client_info"],
            },
        }
        for r in page.rows
    ]
    return page_response("instances", instances, page.cursor)


@routes.get("/machines/{machine}/i/{instance}/events")
async def list_transitions(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    _, row = await _instance(request, org)
    page = await request.app[ENGINE].store.transitions_page(row.id, request.query.get("cursor"))
    transitions = [
        {"createdAt": iso(r["created_ms"]), "state": json.loads(r["state_json"]), "event": json.loads(r["event_json"])}
        for r in page.rows
    ]
    return page_response("transitions", transitions, page.cursor)


@routes.get("/machines/{machine}/i/{instance}/admin")
async def admin_instance(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    _, row = await _instance(request, org)
    store = request.app[ENGINE].store
    body: dict[str, Any] = {
        "state": row.state,
        "context": row.context,
        "status": row.status,
        "tags": row.tags,
        "done": row.done,
        "machineVersion": version_info(await store.version_info(row.version_id)),
        "createdAt": iso(row.created_ms),
    }
    desired = version_info(await store.version_info(row.desired_version_id))
    if desired is not None:
        body["desiredMachineVersion"] = desired
    return ok(body)


@routes.put("/machines/{machine}/i/{instance}/v")
async def set_desired_version(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.write")
    body = await json_body(request)
    only(body, {"targetMachineVersionId"})
    target = body.get("targetMachineVersionId")
    if not isinstance(target, str):
        raise InvalidParameter("targetMachineVersionId must be a version id", parameter="targetMachineVersionId")
    machine_id, row = await _instance(request, org)
    store = request.app[ENGINE].store
    version = await store.get_version(target)
    if version.machine_id != machine_id:
        raise NotFound(f"machine version {target!r} not found")
    if target == row.version_id:
        await store.set_desired_version(row.id, None)
        return web.Response(status=201)
    if migration_chain(await store.migration_edges(machine_id), row.version_id, target) is None:
        raise NoMigrationPath(f"no chain of migrations leads from {row.version_id} to {target}")
    await store.set_desired_version(row.id, target)
    return web.Response(status=201)


class NoMigrationPath(InvalidParameter):
    code = "no-migration-path"


@routes.put("/machines/{machine}/i/{instance}/status")
async def set_status(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    body = await json_body(request)
    only(body, {"status"})
    status = body.get("status")
    if status not in ("running", "paused"):
        raise InvalidParameter("status must be running or paused", parameter="status")
    _, row = await _instance(request, org)
    await request.app[ENGINE].store.set_status(row.id, status)
    return web.Response(status=204)


@routes.delete("/machines/{machine}/i/{instance}")
async def delete_instance(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("instances.admin")
    body = await json_body(request)
    machine, instance = request.match_info["machine"], request.match_info["instance"]
    _, row = await _instance(request, org)
    check_confirmation(body, "hmacSha256OfMachineInstanceNameWithMachineNameKey", confirmation(machine, instance))
    await request.app[ENGINE].store.delete_instance(row.id)
    return web.Response(status=204)
