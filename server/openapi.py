"""The OpenAPI 3 document of the server's routes, served at ``GET /openapi.json``.

Built from one table (``ROUTES``) of every route with its scope and success status; a test checks
that every route the app registers is in it, so the document cannot silently drift from the code.
Beside it, per route: the success body's schema (``_SUCCESS``), the query parameters
(``_QUERY``) and the error statuses it can answer (``_errors``). The request schemas say what the
routes really enforce (names' pattern, enums, required fields, lengths), so that a client generated
from the document, or the fuzzer (tests/fuzz), sends requests the server accepts.
"""

from __future__ import annotations

from typing import Any

from .auth import ALL_SCOPES
from .exchange import SUPPORTED_ALGS
from .routes.providers import ACCESS_TOKEN, GRANT_TYPE
from .store_machines import INDEX_OPERATORS

__all__ = ["ROUTES", "document"]

# (method, path, summary, scope or None, success status, request body schema name or None)
ROUTES: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("GET", "/orgs", "List the caller's orgs", "admin token", 200, None),
    (
        "POST",
        "/orgs",
        "Create an org (provisions anonymous sessions unless allowAnonymousAccess is false)",
        "admin token",
        200,
        "CreateOrg",
    ),
    ("GET", "/billing", "The billing portal URL (setting billing_url), else 404", "org.write", 200, None),
    ("GET", "/keys", "List API keys (secrets are never listed)", "tokens.admin", 200, None),
    ("POST", "/keys", "Create an API key; explicit scopes win over use", "org.keys.write", 200, "CreateKey"),
    ("DELETE", "/keys/{keyId}", "Delete an API key; its tokens stop working at once", "org.keys.write", 204, None),
    ("GET", "/machines", "List machines", "machines.read", 200, None),
    ("POST", "/machines", "Create a machine", "machines.write", 201, "CreateMachine"),
    ("GET", "/machines/{machine}", "Get a machine", "machines.read", 200, None),
    (
        "DELETE",
        "/machines/{machine}",
        "Delete a machine without instances (HMAC confirmation)",
        "machines.admin",
        204,
        "DeleteMachine",
    ),
    ("GET", "/machines/{machine}/v", "List versions", "machine-versions.read", 200, None),
    (
        "GET",
        "/machines/{machine}/v/{version}/structure",
        "statehost extension (read-only): the version's states, nesting, initial states, transitions with "
        "events, targets, guards' names and delays, and invokes, read from the loaded machine (XState 4 and 5)",
        "machine-versions.read",
        200,
        None,
    ),
    (
        "POST",
        "/machines/{machine}/v",
        "Provisionally create a version: returns the upload URL and fields",
        "machine-versions.write",
        200,
        None,
    ),
    (
        "PUT",
        "/machines/{machine}/v/{signedVersionId}",
        "Finalize a version: bundle, validate, optionally make current",
        "machine-versions.write",
        200,
        "FinalizeVersion",
    ),
    (
        "POST",
        "/machines/{machine}/migrations",
        "Provisionally create a migration between two versions: returns the upload URL and fields",
        "machine-versions.write",
        200,
        "CreateMigration",
    ),
    (
        "PUT",
        "/machines/{machine}/migrations/{signedMigrationId}",
        "Finalize a migration: bundle it and check that it exports upgradeState and upgradeContext",
        "machine-versions.write",
        200,
        None,
    ),
    ("POST", "/code-uploads/{token}", "Upload code (multipart; pre-signed, no authorization header)", None, 204, None),
    ("POST", "/machines/{machine}", "Create an instance", "instances.write", 200, "CreateInstance"),
    ("GET", "/machines/{machine}/i", "List instances", "instances.read", 200, None),
    (
        "GET",
        "/machines/{machine}/i/{instance}",
        "Read an instance's state (allowRead decides)",
        "state.read",
        200,
        None,
    ),
    (
        "POST",
        "/machines/{machine}/i/{instance}/events",
        "Send an event (allowWrite decides); answers the settled state",
        "instances.write or events.write",
        200,
        "SendEvent",
    ),
    (
        "GET",
        "/machines/{machine}/i/{instance}/events",
        "The instance's transition history, oldest first",
        "instances.admin",
        200,
        None,
    ),
    (
        "GET",
        "/machines/{machine}/i/{instance}/admin",
        "The full instance (private context, status, versions)",
        "instances.admin",
        200,
        None,
    ),
    (
        "PUT",
        "/machines/{machine}/i/{instance}/v",
        "Set the desired version (needs a migration path)",
        "instances.write",
        201,
        "DesiredVersion",
    ),
    (
        "PUT",
        "/machines/{machine}/i/{instance}/status",
        "Pause or resume an instance",
        "instances.admin",
        204,
        "SetStatus",
    ),
    (
        "DELETE",
        "/machines/{machine}/i/{instance}",
        "Delete an instance (HMAC confirmation)",
        "instances.admin",
        204,
        "DeleteInstance",
    ),
    (
        "GET",
        "/machines/{machine}/indexes/{index}/query",
        "Instances by index value (query: op+value, dir asc|desc, limit 1-1000, cursor)",
        "indexes.read",
        200,
        None,
    ),
    ("GET", "/idps", "List identity providers (keys are never listed)", "tokens.admin", 200, None),
    ("POST", "/idps", "Upsert an identity provider (by aud and iss)", "tokens.admin", 204, "IdentityProvider"),
    ("DELETE", "/idps", "Delete an identity provider", "tokens.admin", 204, "IdentityProviderId"),
    ("GET", "/token-providers", "List token providers", "tokens.admin", 200, None),
    ("POST", "/token-providers", "Upsert a token provider (by service)", "tokens.admin", 204, "TokenProvider"),
    ("DELETE", "/token-providers/{service}", "Delete a token provider", "tokens.admin", 204, None),
    ("POST", "/tokens", "Token exchange (RFC 8693, form-encoded; unauthenticated)", None, 200, None),
    (
        "POST",
        "/org-members",
        "Invite someone to the org; answers the invitation code",
        "org-members.write",
        200,
        "Invitation",
    ),
    ("PUT", "/invitations/{code}", "Accept an invitation", "admin token", 200, None),
    ("PUT", "/{code}", "Accept an invitation (the path smply 0.1.18 sends)", "admin token", 200, None),
    (
        "GET",
        "/logs",
        "Log lines after `from` (exclusive), at most 100, never splitting a millisecond",
        "logs.read",
        200,
        None,
    ),
    ("GET", "/rt", "Real-time subscriptions (WebSocket; token in the query)", "state.read", 101, None),
    *(
        (
            method,
            "/http-api/{orgId}/machines/{machineName}/{slug}",
            "The machine's HTTP API mapper (webhooks): its handler maps the request to an event, "
            "its responseMapper makes the answer. No bearer token: the handler authenticates.",
            None,
            200,
            None,
        )
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    ),
    ("GET", "/openapi.json", "This document", None, 200, None),
    (
        "GET",
        "/health",
        "This node, its database's reachability and its instance leases; 503 when the database does not answer",
        None,
        200,
        None,
    ),
    (
        "GET",
        "/dashboard",
        "The web dashboard (HTML; a client of this API). 503 when its assets were not built (make setup)",
        None,
        200,
        None,
    ),
    ("GET", "/dashboard/{path}", "The dashboard's static assets (content-hashed, cached a year)", None, 200, None),
]


_NAME_PATTERN = "^[a-zA-Z0-9_-]{1,128}$"
_NAME: dict[str, Any] = {"type": "string", "pattern": _NAME_PATTERN, "maxLength": 128}


def _id(prefix: str) -> dict[str, Any]:
    """``org_``, ``ver_``, ``sbk_`` + base64url of 16 bytes (wire-api 1.5)."""
    return {"type": "string", "pattern": f"^{prefix}_[A-Za-z0-9_-]{{22}}$"}


_ISO: dict[str, Any] = {"type": "string", "format": "date-time", "description": "ISO-8601 (toISOString form)"}
_SCOPES = sorted(ALL_SCOPES)
_ALGS = list(SUPPORTED_ALGS)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


def _open(required: list[str], **props: Any) -> dict[str, Any]:
    """A response object: the listed fields; clients ignore others."""
    return {"type": "object", "required": required, "properties": props}


def _page(key: str, item: dict[str, Any]) -> dict[str, Any]:
    """A list page (wire-api 1.6): the items, and a cursor unless it is the last page."""
    return _open([key], **{key: {"type": "array", "items": item}, "cursor": {"type": "string"}})


_STATE = {
    "type": "object",
    "required": ["ts", "state", "publicContext", "tags", "done"],
    "properties": {
        "ts": {"type": "integer", "description": "ms since the epoch; monotonic per instance"},
        "state": {"description": "the XState state value"},
        "publicContext": {"type": "object", "description": "context.public ({} when absent)"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "done": {"type": "boolean"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string"},
        "parameter": {"type": "string"},
        "reason": {"type": "string", "description": "statehost extension: why an upload could not be bundled"},
        "diagnostics": {
            "type": "array",
            "description": "statehost extension: where the bundler found each problem in an upload",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "file": {"type": "string"},
                    "line": {"type": "integer", "description": "1-based"},
                    "column": {"type": "integer", "description": "1-based"},
                    "lineText": {"type": "string"},
                },
            },
        },
    },
}
_STRUCTURE_NODE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "key", "path", "type", "tags", "entry", "exit", "invoke", "transitions", "states"],
    "properties": {
        "id": {"type": "string"},
        "key": {"type": "string"},
        "path": {"type": "array", "items": {"type": "string"}},
        "type": {"enum": ["atomic", "compound", "parallel", "final", "history"]},
        "initial": {"type": "string", "description": "a compound state's initial child (its key)"},
        "history": {"enum": ["shallow", "deep"]},
        "historyTarget": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "entry": {"type": "array", "items": {"type": "string"}},
        "exit": {"type": "array", "items": {"type": "string"}},
        "invoke": {"type": "array", "items": {"type": "object"}},
        "transitions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "event": {"type": "string", "description": "empty for an eventless (always) transition"},
                    "kind": {
                        "enum": ["on", "always", "after", "done", "invoke-done", "invoke-error", "invoke-snapshot"]
                    },
                    "targets": {"type": "array", "items": {"type": "string"}, "description": "state ids"},
                    "guard": {"type": "string"},
                    "delay": {"oneOf": [{"type": "number"}, {"type": "string"}]},
                    "reenter": {"type": "boolean"},
                    "actions": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "states": {"type": "array", "items": _ref("StructureNode")},
    },
}
_STRUCTURE = {
    "type": "object",
    "required": ["machineVersionId", "major", "id", "root"],
    "properties": {
        "machineVersionId": {"type": "string"},
        "major": {"enum": [4, 5]},
        "id": {"type": "string"},
        "root": _ref("StructureNode"),
    },
}
_VERSION_INFO = _open(["id", "createdAt", "clientInfo"], id=_id("ver"), createdAt=_ISO, clientInfo={"type": "string"})
_PROVISIONAL = {
    "codeUploadUrl": {"type": "string", "description": "absolute URL; POST the code there (multipart, no token)"},
    "codeUploadFields": {"type": "object", "additionalProperties": {"type": "string"}},
}
_NON_BLANK: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": "\\S"}
_MAPPING: dict[str, Any] = {
    "type": "object",
    "description": "wire-api 2.8: keys ending in .$ take a JSONPath into the claims",
    "additionalProperties": True,
}

_BODIES: dict[str, Any] = {
    "CreateOrg": _closed(
        ["name"], name={**_NON_BLANK, "maxLength": 200}, allowAnonymousAccess={"type": "boolean", "default": True}
    ),
    "CreateKey": {
        **_closed(
            ["name"],
            name=_NON_BLANK,
            scopes={"type": "array", "minItems": 1, "items": {"enum": _SCOPES}},
            use={"enum": ["production", "ci"]},
        ),
        "description": "give scopes, or use (a preset); scopes win when both are given",
        "anyOf": [{"required": ["scopes"]}, {"required": ["use"]}],
    },
    "CreateMachine": _closed(["slug"], slug=_NAME, indexes={"type": "array", "items": _NAME}),
    "DeleteMachine": _closed(
        ["dangerDataWillBeDeletedForever", "hmacSha256OfMachineNameWithMachineNameKey"],
        dangerDataWillBeDeletedForever={"enum": [True]},
        hmacSha256OfMachineNameWithMachineNameKey={
            "type": "string",
            "description": "HMAC-SHA256(key = machine name, data = machine name), base64url without padding",
        },
    ),
    "FinalizeVersion": _closed(
        [],
        clientInfo={"type": "string"},
        makeCurrent={"type": "boolean"},
        indexSelectors={
            "type": "object",
            "description": "the machine's index names to JSONPaths into the context",
            "additionalProperties": {"type": "string", "pattern": "^\\$"},
        },
        xstateMajor={"enum": [4, 5], "description": "statehost extension"},
    ),
    "CreateMigration": _closed(
        ["fromMachineVersionId", "toMachineVersionId"],
        fromMachineVersionId=_id("ver"),
        toMachineVersionId=_id("ver"),
        gzippedCode={"description": "sent by @statebacked/client 0.1.37; accepted and ignored"},
        code={"description": "sent by @statebacked/client 0.1.37; accepted and ignored"},
    ),
    "CodeUpload": {
        "type": "object",
        "required": ["file"],
        "description": "codeUploadFields first, then content-type, content-encoding (gzip) and the file",
        "properties": {
            "key": {"type": "string"},
            "content-type": {"type": "string", "enum": ["application/javascript"]},
            "content-encoding": {"type": "string", "enum": ["gzip"]},
            "file": {"type": "string", "format": "binary"},
        },
    },
    "CreateInstance": _closed(["slug"], slug=_NAME, context={"type": "object"}, machineVersionId=_id("ver")),
    "SendEvent": _closed(
        ["event"],
        event={
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "minLength": 1}}},
            ]
        },
    ),
    "DesiredVersion": _closed(["targetMachineVersionId"], targetMachineVersionId=_id("ver")),
    "SetStatus": _closed(["status"], status={"enum": ["running", "paused"]}),
    "DeleteInstance": _closed(
        ["dangerDataWillBeDeletedForever", "hmacSha256OfMachineInstanceNameWithMachineNameKey"],
        dangerDataWillBeDeletedForever={"enum": [True]},
        hmacSha256OfMachineInstanceNameWithMachineNameKey={
            "type": "string",
            "description": "HMAC-SHA256(key = machine name, data = instance name), base64url without padding",
        },
    ),
    "IdentityProvider": {
        **_closed(
            ["algs", "mapping"],
            aud={"type": "string", "minLength": 1, "maxLength": 2048},
            iss={"type": "string", "minLength": 1, "maxLength": 2048},
            algs={
                "description": "HS* or asymmetric algorithms, not both",
                "oneOf": [
                    {"type": "array", "minItems": 1, "items": {"enum": [a for a in _ALGS if a.startswith("HS")]}},
                    {"type": "array", "minItems": 1, "items": {"enum": [a for a in _ALGS if not a.startswith("HS")]}},
                ],
            },
            mapping=_MAPPING,
            key={
                "type": "string",
                "minLength": 2,
                "maxLength": 2048,
                "pattern": "^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$",
                "description": "base64url: for HS* the secret's bytes, else a PEM, DER SPKI or JWK public key",
            },
            jwksUrl={"type": "string", "maxLength": 2048, "pattern": "^https?://[^/?#]"},
        ),
        "description": "identified by aud and iss (at least one); exactly one of key and jwksUrl",
        "allOf": [
            {"anyOf": [{"required": ["aud"]}, {"required": ["iss"]}]},
            {"oneOf": [{"required": ["key"]}, {"required": ["jwksUrl"]}]},
        ],
    },
    "IdentityProviderId": _closed(
        [], aud={"type": "string", "maxLength": 2048}, iss={"type": "string", "maxLength": 2048}
    ),
    "TokenProvider": _closed(["keyId", "service", "mapping"], keyId=_id("sbk"), service=_NAME, mapping=_MAPPING),
    "Invitation": _closed(
        ["email", "role"], email={"type": "string", "pattern": "@"}, role={"enum": ["admin", "write", "read"]}
    ),
    "TokenExchange": _closed(
        ["grant_type", "subject_token", "audience"],
        grant_type={"enum": [GRANT_TYPE]},
        subject_token={"type": "string", "minLength": 1, "description": "a JWT of one of the org's identity providers"},
        audience={
            "type": "string",
            "pattern": "^https://tokens\\.statebacked\\.dev/org_[A-Za-z0-9_-]{22}/[a-zA-Z0-9_-]{1,128}$",
            "description": "https://tokens.statebacked.dev/<orgId>/<token provider's service>",
        },
        requested_token_type={"enum": [ACCESS_TOKEN]},
    ),
}

_ORG = _open(
    ["id", "name", "role", "createdAt", "limits"],
    id=_id("org"),
    name={"type": "string"},
    role={"enum": ["admin", "write", "read"]},
    createdAt=_ISO,
    limits=_open(
        ["monthlyEventsLimit", "monthlyReadsLimit"],
        monthlyEventsLimit={"type": "integer"},
        monthlyReadsLimit={"type": "integer"},
    ),
)

# The body of each route's success answer (the 201s and 204s have none).
_SUCCESS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/orgs"): _page("orgs", _ORG),
    ("POST", "/orgs"): _open(["id"], id=_id("org")),
    ("GET", "/billing"): _open(["url"], url={"type": "string"}),
    ("GET", "/keys"): _page(
        "keys",
        _open(
            ["id", "name", "scopes", "createdAt"],
            id=_id("sbk"),
            name={"type": "string"},
            scopes={"type": "array", "items": {"enum": _SCOPES}},
            createdAt=_ISO,
        ),
    ),
    ("POST", "/keys"): _open(["id", "key"], id=_id("sbk"), key={"type": "string", "pattern": "^sbsec_"}),
    ("GET", "/machines"): _page(
        "machines", _open(["slug", "createdAt"], slug=_NAME, createdAt=_ISO, currentVersion=_ref("VersionInfo"))
    ),
    ("GET", "/machines/{machine}"): _open(
        ["machine"],
        machine=_open(
            ["createdAt", "indexes"],
            createdAt=_ISO,
            indexes={"type": "array", "items": _NAME},
            currentVersion=_ref("VersionInfo"),
        ),
        currentVersion={**_ref("VersionInfo"), "description": "mirrored for an old official example"},
    ),
    ("GET", "/machines/{machine}/v"): _page("versions", _ref("VersionInfo")),
    ("GET", "/machines/{machine}/v/{version}/structure"): _ref("Structure"),
    ("POST", "/machines/{machine}/v"): _open(
        ["machineVersionId", "codeUploadUrl", "codeUploadFields"],
        machineVersionId={"type": "string", "description": "signed; the path segment of the finalize call"},
        **_PROVISIONAL,
    ),
    ("PUT", "/machines/{machine}/v/{signedVersionId}"): _open(["machineVersionId"], machineVersionId=_id("ver")),
    ("POST", "/machines/{machine}/migrations"): _open(
        ["machineVersionMigrationId", "codeUploadUrl", "codeUploadFields"],
        machineVersionMigrationId={"type": "string", "description": "signed; the path segment of the finalize call"},
        **_PROVISIONAL,
    ),
    ("PUT", "/machines/{machine}/migrations/{signedMigrationId}"): _open(
        ["machineVersionMigrationId"], machineVersionMigrationId={"type": "string"}
    ),
    ("POST", "/machines/{machine}"): _ref("State"),
    ("GET", "/machines/{machine}/i"): _page(
        "instances",
        _open(
            ["slug", "createdAt", "status", "machineVersion"],
            slug=_NAME,
            createdAt=_ISO,
            status={"enum": ["running", "paused"]},
            machineVersion=_ref("VersionInfo"),
        ),
    ),
    ("GET", "/machines/{machine}/i/{instance}"): _ref("State"),
    ("POST", "/machines/{machine}/i/{instance}/events"): _ref("State"),
    ("GET", "/machines/{machine}/i/{instance}/events"): _page(
        "transitions",
        _open(
            ["createdAt", "state", "event"],
            createdAt=_ISO,
            state={"description": "the XState state value"},
            event=_open(["type"], type={"type": "string"}),
        ),
    ),
    ("GET", "/machines/{machine}/i/{instance}/admin"): _open(
        ["state", "context", "status", "tags", "done", "machineVersion", "createdAt"],
        state={"description": "the XState state value"},
        context={"type": "object", "description": "the full context, private parts too"},
        status={"enum": ["running", "paused"]},
        tags={"type": "array", "items": {"type": "string"}},
        done={"type": "boolean"},
        machineVersion=_ref("VersionInfo"),
        desiredMachineVersion=_ref("VersionInfo"),
        createdAt=_ISO,
    ),
    ("GET", "/machines/{machine}/indexes/{index}/query"): _page(
        "instances", _open(["indexValue", "slug"], indexValue={"type": "string"}, slug=_NAME)
    ),
    ("GET", "/idps"): _page(
        "idps",
        _open(
            ["algs", "mapping"],
            aud={"type": "string"},
            iss={"type": "string"},
            algs={"type": "array", "items": {"enum": _ALGS}},
            jwksUrl={"type": "string"},
            mapping={"type": "object"},
        ),
    ),
    ("GET", "/token-providers"): _page(
        "tokenProviders",
        _open(["service", "keyId", "mapping"], service=_NAME, keyId=_id("sbk"), mapping={"type": "object"}),
    ),
    ("POST", "/tokens"): _open(
        ["access_token", "issued_token_type", "token_type"],
        access_token={"type": "string"},
        issued_token_type={"enum": [ACCESS_TOKEN]},
        token_type={"enum": ["Bearer"]},
    ),
    ("POST", "/org-members"): _open(["code"], code={"type": "string"}),
    ("PUT", "/invitations/{code}"): _open(["orgId"], orgId=_id("org")),
    ("PUT", "/{code}"): _open(["orgId"], orgId=_id("org")),
    ("GET", "/logs"): _open(
        ["maxTimestamp", "logs"],
        maxTimestamp=_ISO,
        logs={
            "type": "array",
            "items": _open(
                ["timestamp", "orgId", "machineName", "instanceName", "machineVersionId", "outputType", "log"],
                timestamp=_ISO,
                orgId=_id("org"),
                machineName=_NAME,
                instanceName=_NAME,
                machineVersionId=_id("ver"),
                outputType={"type": "string"},
                log={"type": "string"},
            ),
        },
    ),
    ("GET", "/openapi.json"): _open(["openapi", "info", "paths"], openapi={"type": "string"}),
    ("GET", "/health"): _ref("Health"),
}
_HEALTH = _open(
    ["node", "database", "status"],
    node={"type": "string"},
    status={"enum": ["ok", "unavailable"]},
    database=_open(["kind"], kind={"type": "string"}, reachable={"type": "boolean"}, latency_ms={"type": "number"}),
    leases={"type": "object"},
    error={"type": "string"},
)

_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "from the previous page"}
_LISTS = {
    "/orgs",
    "/keys",
    "/machines",
    "/machines/{machine}/v",
    "/machines/{machine}/i",
    "/machines/{machine}/i/{instance}/events",
    "/idps",
    "/token-providers",
}
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/machines/{machine}/indexes/{index}/query"): [
        {"name": "op", "in": "query", "schema": {"enum": list(INDEX_OPERATORS)}, "description": "with value"},
        {"name": "value", "in": "query", "schema": {"type": "string"}, "description": "with op"},
        {"name": "dir", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "asc"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        _CURSOR,
    ],
    ("GET", "/logs"): [
        {"name": "from", "in": "query", "required": True, "schema": _ISO, "description": "exclusive"},
        {"name": "to", "in": "query", "schema": _ISO},
        {"name": "machine", "in": "query", "schema": _NAME},
        {"name": "instance", "in": "query", "schema": _NAME},
        {"name": "version", "in": "query", "schema": _id("ver")},
    ],
    ("POST", "/machines/{machine}/v"): [
        {
            "name": "gzip",
            "in": "query",
            "allowEmptyValue": True,
            "schema": {"type": "string"},
            "description": "present: the upload will be gzipped",
        }
    ],
}
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "machine": _NAME,
    "machineName": _NAME,
    "instance": _NAME,
    "index": _NAME,
    "service": _NAME,
    "slug": _NAME,
    "keyId": _id("sbk"),
    "version": _id("ver"),
    "orgId": _id("org"),
}
_ORG_HEADER = {
    "name": "x-statebacked-org-id",
    "in": "header",
    "schema": _id("org"),
    "description": "the org to act in, for an admin who belongs to several (else 400 specify-org)",
}
_MESSAGES = {
    400: "invalid input (code invalid-parameter, specify-org or no-migration-path; parameter names the field)",
    403: "no valid token, a missing scope, or the machine's authorizer refused",
    404: "no such machine, instance, version, key or resource",
    409: "exists already, paused, or moved on meanwhile (invalid-state)",
    413: "the request body is too large",
    422: "the machine's code threw or hit a limit (machine-error)",
    503: "the server is shutting down, or another writer took the instance meanwhile: retry",
    504: "the settle window ended before any transition (timeout)",
}
_CONFLICTS = {
    ("POST", "/code-uploads/{token}"),
    ("POST", "/machines"),
    ("DELETE", "/machines/{machine}"),
    ("PUT", "/machines/{machine}/v/{signedVersionId}"),
    ("PUT", "/machines/{machine}/migrations/{signedMigrationId}"),
    ("POST", "/machines/{machine}"),
    ("POST", "/machines/{machine}/i/{instance}/events"),
    ("PUT", "/invitations/{code}"),
    ("PUT", "/{code}"),
}
_RUNS_MACHINE_CODE = {
    ("POST", "/machines/{machine}"),
    ("GET", "/machines/{machine}/i/{instance}"),
    ("POST", "/machines/{machine}/i/{instance}/events"),
    ("GET", "/machines/{machine}/v/{version}/structure"),
    ("PUT", "/machines/{machine}/i/{instance}/v"),
}


def _errors(method: str, path: str, scope: str | None, body: bool) -> set[int]:
    """The error statuses a route answers (wire-api 1.4)."""
    if path == "/openapi.json" or path.startswith("/dashboard"):
        return {404, 503} if path.startswith("/dashboard") else set()
    if path == "/health":
        return {503}
    if path.startswith("/http-api/"):
        return {400, 403, 404, 409, 413, 422, 503, 504}
    statuses = {400, 413, 503}
    if scope is not None or path == "/tokens":
        statuses.add(403)
    if "{" in path or path == "/billing" or body:
        statuses.add(404)
    if (method, path) in _CONFLICTS or path.startswith("/machines/{machine}/i/{instance}"):
        statuses.add(409)
    if (method, path) in _RUNS_MACHINE_CODE:
        statuses |= {422, 504}
    return statuses


def _operation_id(method: str, path: str) -> str:
    """``POST /machines/{machine}/i/{instance}/events`` -> ``post_machines_machine_i_instance_events``."""
    words = [part.strip("{}").replace("-", "_").replace(".", "_") for part in path.split("/") if part]
    return "_".join([method.lower(), *words])


_MACHINE = {"machine": "$request.path.machine"}
_INSTANCE = {**_MACHINE, "instance": "$request.body#/slug"}
# What a success answer leads to (OpenAPI links): the resource it created, named by the request or
# the response, so that a client or the fuzzer's stateful run can follow on from it.
_LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("POST", "/machines"): {
        "GetMachine": ("GET", "/machines/{machine}", {"machine": "$request.body#/slug"}),
        "CreateVersion": ("POST", "/machines/{machine}/v", {"machine": "$request.body#/slug"}),
        "CreateInstance": ("POST", "/machines/{machine}", {"machine": "$request.body#/slug"}),
        "ListInstances": ("GET", "/machines/{machine}/i", {"machine": "$request.body#/slug"}),
    },
    ("POST", "/machines/{machine}/v"): {
        "FinalizeVersion": (
            "PUT",
            "/machines/{machine}/v/{signedVersionId}",
            {**_MACHINE, "signedVersionId": "$response.body#/machineVersionId"},
        ),
    },
    ("PUT", "/machines/{machine}/v/{signedVersionId}"): {
        "GetStructure": (
            "GET",
            "/machines/{machine}/v/{version}/structure",
            {**_MACHINE, "version": "$response.body#/machineVersionId"},
        ),
    },
    ("POST", "/machines/{machine}/migrations"): {
        "FinalizeMigration": (
            "PUT",
            "/machines/{machine}/migrations/{signedMigrationId}",
            {**_MACHINE, "signedMigrationId": "$response.body#/machineVersionMigrationId"},
        ),
    },
    ("POST", "/machines/{machine}"): {
        "GetInstance": ("GET", "/machines/{machine}/i/{instance}", _INSTANCE),
        "SendEvent": ("POST", "/machines/{machine}/i/{instance}/events", _INSTANCE),
        "GetAdmin": ("GET", "/machines/{machine}/i/{instance}/admin", _INSTANCE),
        "ListTransitions": ("GET", "/machines/{machine}/i/{instance}/events", _INSTANCE),
        "SetStatus": ("PUT", "/machines/{machine}/i/{instance}/status", _INSTANCE),
        "DeleteInstance": ("DELETE", "/machines/{machine}/i/{instance}", _INSTANCE),
    },
    ("POST", "/keys"): {"DeleteKey": ("DELETE", "/keys/{keyId}", {"keyId": "$response.body#/id"})},
    ("POST", "/token-providers"): {
        "DeleteTokenProvider": ("DELETE", "/token-providers/{service}", {"service": "$request.body#/service"}),
    },
    ("POST", "/org-members"): {
        "AcceptInvitation": ("PUT", "/invitations/{code}", {"code": "$response.body#/code"}),
    },
}


def document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, scope, status, body in ROUTES:
        success: dict[str, Any] = {"description": "success"}
        schema = _SUCCESS.get((method, path))
        if schema is not None:
            success["content"] = {"application/json": {"schema": schema}}
        elif status == 200:
            media = "text/html" if path.startswith("/dashboard") else "application/json"
            success["content"] = {media: {"schema": {"type": "string"} if media == "text/html" else {}}}
        links = _LINKS.get((method, path), {})
        if links:
            success["links"] = {
                name: {"operationId": _operation_id(*target), "parameters": parameters}
                for name, (*target, parameters) in links.items()
            }
        responses: dict[str, Any] = {str(status): success}
        if path.startswith("/http-api/"):
            responses["default"] = {"description": "whatever the machine's responseMapper answers"}
        for error in sorted(_errors(method, path, scope, body is not None)):
            if str(error) in responses:
                continue
            schema = _ref("Health") if path == "/health" else _ref("Error")
            responses[str(error)] = {
                "description": _MESSAGES.get(error, "an error"),
                "content": {"application/json": {"schema": schema}},
            }
        operation: dict[str, Any] = {
            "operationId": _operation_id(method, path),
            "summary": summary,
            "responses": responses,
        }
        if scope is None:
            operation["security"] = []
        else:
            operation["x-statebacked-scope"] = scope
        if body is not None:
            operation["requestBody"] = {
                "required": body not in ("FinalizeVersion", "IdentityProviderId"),
                "content": {"application/json": {"schema": _ref(body)}},
            }
        elif (method, path) == ("POST", "/tokens"):
            operation["requestBody"] = {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": _ref("TokenExchange")}},
            }
        elif (method, path) == ("POST", "/code-uploads/{token}"):
            operation["requestBody"] = {
                "required": True,
                "content": {"multipart/form-data": {"schema": _ref("CodeUpload")}},
            }
        parameters: list[dict[str, Any]] = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": _PATH_PARAMETERS.get(p, {"type": "string", "minLength": 1}),
            }
            for p in (part[1:-1] for part in path.split("/") if part.startswith("{"))
        ]
        parameters += _QUERY.get((method, path), [])
        if method == "GET" and path in _LISTS:
            parameters.append(_CURSOR)
        if scope is not None and path != "/rt":
            parameters.append(_ORG_HEADER)
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "statehost",
            "version": "0.1.0",
            "description": "State Backed-compatible API of a statehost server (../shared/spec/wire-api.md).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "State": _STATE,
                "Error": _ERROR,
                "Structure": _STRUCTURE,
                "StructureNode": _STRUCTURE_NODE,
                "VersionInfo": _VERSION_INFO,
                "Health": _HEALTH,
                **_BODIES,
            },
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
