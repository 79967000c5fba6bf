"""Machines, versions, migrations and the code upload (wire-api 3.5-3.7)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from aiohttp import web

from runtime import BundleError, InvalidMachineError, Upload

from ..errors import Conflict, InvalidParameter, NotFound
from ..indexes import check_selectors, inherit_selectors
from ..store_directory import VersionInfo
from ..uploads import read_upload, sign_id, unsign_id, upload_token, verify_upload_token
from .common import (
    ENGINE,
    MALFORMED,
    SECRETS,
    caller,
    iso,
    json_body,
    malformed,
    name,
    ok,
    only,
    page_response,
    public_base,
)

routes = web.RouteTableDef()


def version_info(info: VersionInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"id": info.id, "createdAt": iso(info.created_ms), "clientInfo": info.client_info}


def confirmation(key: str, data: str) -> str:
    """HMAC-SHA256(key, data), base64url without padding: the delete confirmations (wire-api 3.5, 3.9)."""
    digest = hmac.new(key.encode(), data.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_confirmation(body: dict[str, Any], field: str, expected: str) -> None:
    if body.get("dangerDataWillBeDeletedForever") is not True:
        raise InvalidParameter("set dangerDataWillBeDeletedForever to true", parameter="dangerDataWillBeDeletedForever")
    given = body.get(field)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidParameter(f"{field} does not match", parameter=field)


@routes.get("/machines")
async def list_machines(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.read")
    page = await request.app[ENGINE].store.machines_page(org, request.query.get("cursor"))
    machines = []
    for r in page.rows:
        item: dict[str, Any] = {"slug": r["slug"], "createdAt": iso(r["created_ms"])}
        if r["current_version_id"]:
            item["currentVersion"] = {
                "id": r["current_version_id"],
                "createdAt": iso(r["version_created_ms"]),
                "clientInfo": r["client_info"] or "",
            }
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
    engine = request.app[ENGINE]
    await engine.store.create_machine(org, slug, indexes, engine.clock.now_ms())
    return web.Response(status=201)


@routes.get("/machines/{machine}")
async def get_machine(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.read")
    store = request.app[ENGINE].store
    machine = await store.machine(org, request.match_info["machine"])
    body: dict[str, Any] = {"createdAt": iso(machine.created_ms), "indexes": machine.indexes}
    current = version_info(await store.version_info(machine.current_version_id))
    if current is not None:
        body["currentVersion"] = current
    result: dict[str, Any] = {"machine": body}
    if current is not None:
        result["currentVersion"] = current  # mirrored for an old official example (wire-api 3.5)
    return ok(result)


@routes.delete("/machines/{machine}")
async def delete_machine(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machines.admin")
    slug = request.match_info["machine"]
    body = await json_body(request)
    store = request.app[ENGINE].store
    machine = await store.machine(org, slug)
    check_confirmation(body, "hmacSha256OfMachineNameWithMachineNameKey", confirmation(slug, slug))
    await store.delete_machine(machine.id)
    return web.Response(status=204)


@routes.get("/machines/{machine}/v")
async def list_versions(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.read")
    store = request.app[ENGINE].store
    machine = await store.machine(org, request.match_info["machine"])
    page = await store.versions_page(machine.id, request.query.get("cursor"))
    versions = [{"id": r["id"], "createdAt": iso(r["created_ms"]), "clientInfo": r["client_info"]} for r in page.rows]
    return page_response("versions", versions, page.cursor)


@routes.get("/machines/{machine}/v/{version}/structure")
async def version_structure(request: web.Request) -> web.Response:
    """statehost extension (read-only, for the dashboard's statechart): the version's states,
    nesting, transitions, guards' names, delays and invokes, read from the loaded machine."""
    org = (await caller(request)).require("machine-versions.read")
    engine = request.app[ENGINE]
    machine = await engine.store.machine(org, request.match_info["machine"])
    version_id = request.match_info["version"]
    version = await engine.store.get_version(version_id)
    if version.machine_id != machine.id:
        raise NotFound(f"machine version {version_id!r} not found")
    return ok({"machineVersionId": version_id, **await engine.instances.structure(version_id)})


@routes.post("/machines/{machine}/v")
async def provisionally_create_version(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.write")
    engine = request.app[ENGINE]
    machine = await engine.store.machine(org, request.match_info["machine"])
    version_id = await engine.store.create_provisional_version(machine.id, engine.clock.now_ms())
    return _provisional(request, "version", version_id, "machineVersionId")


def _provisional(request: web.Request, kind: str, object_id: str, id_field: str) -> web.Response:
    """Step 1's answer for a version or a migration: its signed id and where to upload the code."""
    secret = request.app[SECRETS]["uploads"]
    token = upload_token(secret, kind, object_id, request.app[ENGINE].clock.now_ms() // 1000)
    return ok(
        {
            id_field: sign_id(secret, kind, object_id),
            "codeUploadUrl": f"{public_base(request)}/code-uploads/{token}",
            "codeUploadFields": {"key": object_id},
        }
    )


@routes.post("/code-uploads/{token}")
async def upload_code(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    kind, object_id = verify_upload_token(
        request.app[SECRETS]["uploads"], request.match_info["token"], engine.clock.now_ms() // 1000
    )
    try:
        data, filename = await read_upload(request)
    except MALFORMED as exc:
        raise malformed(exc, "the multipart upload") from None
    if kind == "migration":
        await engine.store.store_migration_upload(object_id, data, filename)
    else:
        await engine.store.store_upload(object_id, data, filename)
    return web.Response(status=204)


@routes.put("/machines/{machine}/v/{signed}")
async def finalize_version(request: web.Request) -> web.Response:
    org = (await caller(request)).require("machine-versions.write")
    engine = request.app[ENGINE]
    body = await json_body(request, required=False)
    only(body, {"clientInfo", "makeCurrent", "indexSelectors", "xstateMajor"})
    machine = await engine.store.machine(org, request.match_info["machine"])
    version_id = unsign_id(request.app[SECRETS]["uploads"], "version", request.match_info["signed"])
    row = await engine.store.provisional_version(version_id)
    if row is None or row["machine_id"] != machine.id:
        raise InvalidParameter("unknown machine version", parameter="machineVersionId")
    if row["status"] == "final":
        raise Conflict("this version is already finalized")
    if row["source"] is None:
        raise InvalidParameter("no code was uploaded for this version yet", parameter="file")
    client_info = body.get("clientInfo", "")
    make_current = body.get("makeCurrent", False)
    selectors = body.get("indexSelectors", {})
    major = body.get("xstateMajor")  # statehost extension; official clients never send it
    if not isinstance(client_info, str):
        raise InvalidParameter("clientInfo must be a string", parameter="clientInfo")
    if not isinstance(make_current, bool):
        raise InvalidParameter("makeCurrent must be a boolean", parameter="makeCurrent")
    if not isinstance(selectors, dict) or not all(isinstance(v, str) for v in selectors.values()):
        raise InvalidParameter("indexSelectors must map index names to JSONPath strings", parameter="indexSelectors")
    unknown = sorted(set(selectors) - set(machine.indexes))
    if unknown:
        raise InvalidParameter(f"{unknown[0]!r} is not an index of this machine", parameter="indexSelectors")
    check_selectors(selectors)
    if major is not None and major not in (4, 5):
        raise InvalidParameter("xstateMajor must be 4 or 5", parameter="xstateMajor")
    upload = Upload(_js_name(row["source_name"]), bytes(row["source"]), xstate_major=major)
    try:
        bundle, prepared = await engine.instances.prepare_upload(upload)
    except (BundleError, InvalidMachineError) as exc:
        raise upload_error(exc) from None
    # omitted selectors inherit the current version's (read now: bundling may have taken a while)
    current = await engine.store.version_selectors(await engine.store.current_version_id(machine.id))
    selectors = inherit_selectors(selectors, current, machine.indexes)
    await engine.store.finalize_version(
        version_id,
        bundle=bundle.code,
        bundle_hash=bundle.hash,
        xstate_major=prepared.major,
        self_contained=bundle.self_contained,
        client_info=client_info,
        index_selectors=selectors,
        make_current=make_current,
    )
    engine.instances.remember(version_id, prepared)
    return ok({"machineVersionId": version_id})


@routes.post("/machines/{machine}/migrations")
async def provisionally_create_migration(request: web.Request) -> web.Response:
    """Step 1 of 3 (wire-api 3.7): a provisional migration between two versions of the machine."""
    org = (await caller(request)).require("machine-versions.write")
    engine = request.app[ENGINE]
    body = await json_body(request)
    # @statebacked/client 0.1.37 (and so smply) sends its whole create request here, the code too
    # (`gzippedCode`, a Uint8Array serialised as an object, or `code`): accepted and ignored.
    only(body, {"fromMachineVersionId", "toMachineVersionId", "gzippedCode", "code"})
    machine = await engine.store.machine(org, request.match_info["machine"])
    versions = []
    for field in ("fromMachineVersionId", "toMachineVersionId"):
        value = body.get(field)
        if not isinstance(value, str):
            raise InvalidParameter(f"{field} must be a machine version id", parameter=field)
        try:
            version = await engine.store.get_version(value)
        except NotFound:
            version = None
        if version is None or version.machine_id != machine.id:
            raise InvalidParameter(f"{value!r} is not a version of machine {machine.slug!r}", parameter=field)
        versions.append(value)
    if versions[0] == versions[1]:
        raise InvalidParameter("a migration leads from one version to another", parameter="toMachineVersionId")
    migration_id = await engine.store.create_provisional_migration(
        machine.id, versions[0], versions[1], engine.clock.now_ms()
    )
    return _provisional(request, "migration", migration_id, "machineVersionMigrationId")


@routes.put("/machines/{machine}/migrations/{signed}")
async def finalize_migration(request: web.Request) -> web.Response:
    """Step 3 of 3: bundle the uploaded migration and check its exports in the sandbox."""
    org = (await caller(request)).require("machine-versions.write")
    engine = request.app[ENGINE]
    only(await json_body(request, required=False), set())
    machine = await engine.store.machine(org, request.match_info["machine"])
    migration_id = unsign_id(request.app[SECRETS]["uploads"], "migration", request.match_info["signed"])
    row = await engine.store.migration(migration_id)
    if row is None or row["machine_id"] != machine.id:
        raise InvalidParameter("unknown migration", parameter="machineVersionMigrationId")
    if row["status"] == "final":
        raise Conflict("this migration is already finalized")
    if row["source"] is None:
        raise InvalidParameter("no code was uploaded for this migration yet", parameter="file")
    upload = Upload(_js_name(row["source_name"]), bytes(row["source"]))
    try:
        bundle, prepared = await engine.instances.prepare_migration_upload(upload)
    except (BundleError, InvalidMachineError) as exc:
        raise upload_error(exc) from None
    await engine.store.finalize_migration(migration_id, bundle=bundle.code, bundle_hash=bundle.hash)
    engine.instances.remember_migration(migration_id, prepared)
    return ok({"machineVersionMigrationId": migration_id})


def upload_error(exc: BundleError | InvalidMachineError) -> InvalidParameter:
    """The 400 for an upload that cannot be a version or migration. statehost extension: a bundling
    failure also carries ``reason`` (BundleError's stable code) and ``diagnostics`` (each with
    ``message`` and, where esbuild located it, ``file``, 1-based ``line`` and ``column``, and
    ``lineText``), so an editor can mark the line. Official clients read only ``error``."""
    if not isinstance(exc, BundleError):
        return InvalidParameter(str(exc), parameter="code")
    diagnostics = []
    for d in exc.diagnostics:
        item: dict[str, Any] = {"message": d.message}
        for key, value in (("file", d.file), ("line", d.line), ("column", d.column), ("lineText", d.line_text)):
            if value is not None:
                item[key] = value
        diagnostics.append(item)
    return InvalidParameter(str(exc), parameter="code", reason=exc.code, diagnostics=diagnostics)


def _js_name(filename: str | None) -> str:
    """Uploads are pre-built ES modules ("<machine>.js"); keep a safe name for diagnostics."""
    base = (filename or "machine.js").rsplit("/", 1)[-1]
    return base if base.endswith((".js", ".mjs", ".ts")) else base + ".js"
