"""Instances (wire-api 3.8-3.9): create, read, send events, list, history, admin, status, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import InvalidParameter
from .common import INSTANCE_ADMIN, INSTANCES, caller, iso, json_body, name, ok, only, page_response
from .machines import confirmation_of, version_info

routes = web.RouteTableDef()


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
    if version is not None and not isinstance(version, str):
        raise InvalidParameter("machineVersionId must be a string", parameter="machineVersionId")
    state = await request.app[INSTANCE_ADMIN].create(
        org, request.match_info["machine"], slug, context=context, auth_context=found.auth_context, version_id=version
    )
    return ok(state.wire())


@routes.get("/machines/{machine}/i/{instance}")
async def get_instance(request: web.Request) -> web.Response:
    found = await caller(request)
    org = found.require("state.read")
    # InstanceService.read answers 404 for a missing machine or instance before allowRead runs
    state = await request.app[INSTANCES].read(
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
    state = await request.app[INSTANCES].send_event(
        org, request.match_info["machine"], request.match_info["instance"], event, found.auth_context
    )
    return ok(state.wire())


@routes.get("/machines/{machine}/i")
async def list_instances(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.read")
    page = await request.app[INSTANCE_ADMIN].instances(org, request.match_info["machine"], request.query.get("cursor"))
    instances = [
        {
            "slug": i.name,
            "createdAt": iso(i.created_ms),
            "status": i.status,
            "machineVersion": version_info(i.version),
        }
        for i in page.rows
    ]
    return page_response("instances", instances, page.cursor)


@routes.get("/machines/{machine}/i/{instance}/events")
async def list_transitions(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    page = await request.app[INSTANCE_ADMIN].transitions(
        org, request.match_info["machine"], request.match_info["instance"], request.query.get("cursor")
    )
    transitions = [{"createdAt": iso(t.created_ms), "state": t.state, "event": t.event} for t in page.rows]
    return page_response("transitions", transitions, page.cursor)


@routes.get("/machines/{machine}/i/{instance}/admin")
async def admin_instance(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    view = await request.app[INSTANCE_ADMIN].view(org, request.match_info["machine"], request.match_info["instance"])
    body: dict[str, Any] = {
        "state": view.state,
        "context": view.context,
        "status": view.status,
        "tags": view.tags,
        "done": view.done,
        "machineVersion": version_info(view.version),
        "createdAt": iso(view.created_ms),
    }
    desired = version_info(view.desired_version)
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
    await request.app[INSTANCE_ADMIN].set_desired_version(
        org, request.match_info["machine"], request.match_info["instance"], target
    )
    return web.Response(status=201)


@routes.put("/machines/{machine}/i/{instance}/status")
async def set_status(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    body = await json_body(request)
    only(body, {"status"})
    status = body.get("status")
    if status not in ("running", "paused"):
        raise InvalidParameter("status must be running or paused", parameter="status")
    await request.app[INSTANCE_ADMIN].set_status(
        org, request.match_info["machine"], request.match_info["instance"], status
    )
    return web.Response(status=204)


@routes.delete("/machines/{machine}/i/{instance}")
async def delete_instance(request: web.Request) -> web.Response:
    org = (await caller(request)).require("instances.admin")
    body = await json_body(request)
    confirm = confirmation_of(body, "hmacSha256OfMachineInstanceNameWithMachineNameKey")
    await request.app[INSTANCE_ADMIN].delete(
        org, request.match_info["machine"], request.match_info["instance"], confirm
    )
    return web.Response(status=204)
