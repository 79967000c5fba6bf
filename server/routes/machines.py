"""Machines, versions, migrations and the code upload (wire-api 3.5-3.7)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import InvalidParameter
from ..services.machines import Confirmation, Provisional, VersionInfo, confirmation
from ..uploads import read_upload
from .common import MACHINES, MALFORMED, caller, iso, json_body, malformed, name, ok, only, page_response, public_base

__all__ = ["confirmation", "routes", "version_info"]

routes = web.RouteTableDef()


def version_info(info: VersionInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"id": info.id, "createdAt": iso(info.created_ms), "clientInfo": info.client_info}


def confirmation_of(body: dict[str, Any], field: str) -> Confirmation:
    return Confirmation(body.get("dangerDataWillBeDeletedForever"), field, body.get(field))


@routes.get("/machines")
async def list_machines(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.read")
    page = await request.app[MACHINES].machines(org, request.query.get("cursor"))
    machines = []
    for m in page.rows:
        item: dict[str, Any] = {"slug": m.slug, "createdAt": iso(m.created_ms)}
        if m.current_version is not None:
            item["currentVersion"] = version_info(m.current_version)
        machines.append(item)
    return page_response("machines", machines, page.cursor)


@routes.post("/machines")
async def create_machine(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.write")
    body = await json_body(request)
    only(body, {"slug", "indexes"})
    slug = name(body.get("slug"), "slug")
    indexes = body.get("indexes", [])
    if not isinstance(indexes, list):
        raise InvalidParameter("indexes must be a list of names", parameter="indexes")
    for index in indexes:
        name(index, "indexes")
    await request.app[MACHINES].create_machine(org, slug, indexes)
    return web.Response(status=201)


@routes.get("/machines/{machine}")
async def get_machine(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.read")
    detail = await request.app[MACHINES].detail(org, request.match_info["machine"])
    body: dict[str, Any] = {"createdAt": iso(detail.machine.created_ms), "indexes": detail.machine.indexes}
    current = version_info(detail.current_version)
    if current is not None:
        body["currentVersion"] = current
    result: dict[str, Any] = {"machine": body}
    if current is not None:
        result["currentVersion"] = current  # mirrored for an old official example (wire-api 3.5)
    return ok(result)


@routes.delete("/machines/{machine}")
async def delete_machine(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.admin")
    body = await json_body(request)
    confirm = confirmation_of(body, "hmacSha256OfMachineNameWithMachineNameKey")
    await request.app[MACHINES].delete_machine(org, request.match_info["machine"], confirm)
    return web.Response(status=204)


@routes.get("/machines/{machine}/v")
async def list_versions(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.read")
    page = await request.app[MACHINES].versions(org, request.match_info["machine"], request.query.get("cursor"))
    return page_response("versions", [version_info(v) for v in page.rows], page.cursor)


@routes.get("/machines/{machine}/v/{version}/structure")
async def version_structure(request: web.Request) -> web.Response:
    """statehost extension (read-only, for the dashboard's statechart): the version's states,
    nesting, transitions, guards' names, delays and invokes, read from the loaded machine."""
    org = (await caller(request)).require("machine-versions.read")
    version_id = request.match_info["version"]
    structure = await request.app[MACHINES].structure(org, request.match_info["machine"], version_id)
    return ok({"machineVersionId": version_id, **structure})


@routes.post("/machines/{machine}/v")
async def provisionally_create_version(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.write")
    provisional = await request.app[MACHINES].provisional_version(org, request.match_info["machine"])
    return _provisional(request, provisional, "machineVersionId")


def _provisional(request: web.Request, provisional: Provisional, id_field: str) -> web.Response:
    """Step 1's answer for a version or a migration: its signed id and where to upload the code."""
    return ok(
        {
            id_field: provisional.signed_id,
            "codeUploadUrl": f"{public_base(request)}/code-uploads/{provisional.upload_token}",
            "codeUploadFields": {"key": provisional.object_id},
        }
    )


@routes.post("/code-uploads/{token}")
async def upload_code(request: web.Request) -> web.Response:
    machines = request.app[MACHINES]
    kind, object_id = machines.upload_target(request.match_info["token"])
    try:
        data, filename = await read_upload(request)
    except MALFORMED as exc:
        raise malformed(exc, "the multipart upload") from None
    await machines.attach_upload(kind, object_id, data, filename)
    return web.Response(status=204)


@routes.put("/machines/{machine}/v/{signed}")
async def finalize_version(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.write")
    body = await json_body(request, required=False)
    only(body, {"clientInfo", "makeCurrent", "indexSelectors", "xstateMajor"})
    version_id = await request.app[MACHINES].finalize_version(
        org,
        request.match_info["machine"],
        request.match_info["signed"],
        client_info=body.get("clientInfo", ""),
        make_current=body.get("makeCurrent", False),
        selectors=body.get("indexSelectors", {}),
        major=body.get("xstateMajor"),  # statehost extension; official clients never send it
    )
    return ok({"machineVersionId": version_id})


@routes.post("/machines/{machine}/migrations")
async def provisionally_create_migration(request: web.Request) -> web.Response:
    """Step 1 of 3 (wire-api 3.7): a provisional migration between two versions of the machine."""
    org = (await caller(request)).require("machine-versions.write")
    body = await json_body(request)
    # @statebacked/client 0.1.37 (and so smply) sends its whole create request here, the code too
    # (`gzippedCode`, a Uint8Array serialised as an object, or `code`): accepted and ignored.
    only(body, {"fromMachineVersionId", "toMachineVersionId", "gzippedCode", "code"})
    provisional = await request.app[MACHINES].provisional_migration(
        org, request.match_info["machine"], body.get("fromMachineVersionId"), body.get("toMachineVersionId")
    )
    return _provisional(request, provisional, "machineVersionMigrationId")


@routes.put("/machines/{machine}/migrations/{signed}")
async def finalize_migration(request: web.Request) -> web.Response:
    """Step 3 of 3: bundle the uploaded migration and check its exports in the sandbox."""
    org = (await caller(request)).require("machine-versions.write")
    only(await json_body(request, required=False), set())
    migration_id = await request.app[MACHINES].finalize_migration(
        org, request.match_info["machine"], request.match_info["signed"]
    )
    return ok({"machineVersionMigrationId": migration_id})
