"""The OpenAPI 3 document of the server's routes, served at ``GET /openapi.json``.

Built from one table (``ROUTES``) of every route with its scope and success status; a test checks
that every route the app registers is in it, so the document cannot silently drift from the code.
"""

from __future__ import annotations

from typing import Any

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

# The routes that answer with the State object (wire-api 3.8).
_STATE_ROUTES = {
    ("POST", "/machines/{machine}"),
    ("GET", "/machines/{machine}/i/{instance}"),
    ("POST", "/machines/{machine}/i/{instance}/events"),
}

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
        "states": {"type": "array", "items": {"$ref": "#/components/schemas/StructureNode"}},
    },
}
_STRUCTURE = {
    "type": "object",
    "required": ["machineVersionId", "major", "id", "root"],
    "properties": {
        "machineVersionId": {"type": "string"},
        "major": {"enum": [4, 5]},
        "id": {"type": "string"},
        "root": {"$ref": "#/components/schemas/StructureNode"},
    },
}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


_NAME = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,128}$"}
_BODIES = {
    "CreateOrg": _obj(["name"], name={"type": "string"}, allowAnonymousAccess={"type": "boolean"}),
    "CreateKey": _obj(
        ["name"],
        name={"type": "string"},
        scopes={"type": "array", "items": {"type": "string"}},
        use={"enum": ["production", "ci"]},
    ),
    "CreateMachine": _obj(["slug"], slug=_NAME, indexes={"type": "array", "items": _NAME}),
    "DeleteMachine": _obj(
        ["dangerDataWillBeDeletedForever", "hmacSha256OfMachineNameWithMachineNameKey"],
        dangerDataWillBeDeletedForever={"const": True},
        hmacSha256OfMachineNameWithMachineNameKey={"type": "string"},
    ),
    "FinalizeVersion": _obj(
        [],
        clientInfo={"type": "string"},
        makeCurrent={"type": "boolean"},
        indexSelectors={"type": "object", "additionalProperties": {"type": "string"}},
        xstateMajor={"enum": [4, 5], "description": "statehost extension"},
    ),
    "CreateMigration": _obj(
        ["fromMachineVersionId", "toMachineVersionId"],
        fromMachineVersionId={"type": "string"},
        toMachineVersionId={"type": "string"},
    ),
    "CreateInstance": _obj(["slug"], slug=_NAME, context={"type": "object"}, machineVersionId={"type": "string"}),
    "SendEvent": _obj(["event"], event={"oneOf": [{"type": "string"}, {"type": "object", "required": ["type"]}]}),
    "DesiredVersion": _obj(["targetMachineVersionId"], targetMachineVersionId={"type": "string"}),
    "SetStatus": _obj(["status"], status={"enum": ["running", "paused"]}),
    "DeleteInstance": _obj(
        ["dangerDataWillBeDeletedForever", "hmacSha256OfMachineInstanceNameWithMachineNameKey"],
        dangerDataWillBeDeletedForever={"const": True},
        hmacSha256OfMachineInstanceNameWithMachineNameKey={"type": "string"},
    ),
    "IdentityProvider": _obj(
        ["algs", "mapping"],
        aud={"type": "string"},
        iss={"type": "string"},
        algs={"type": "array", "items": {"type": "string"}},
        mapping={"type": "object"},
        key={"type": "string", "description": "base64url"},
        jwksUrl={"type": "string"},
    ),
    "IdentityProviderId": _obj([], aud={"type": "string"}, iss={"type": "string"}),
    "TokenProvider": _obj(
        ["keyId", "service", "mapping"], keyId={"type": "string"}, service=_NAME, mapping={"type": "object"}
    ),
    "Invitation": _obj(["email", "role"], email={"type": "string"}, role={"enum": ["admin", "write", "read"]}),
}


def document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, scope, status, body in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {"description": "success"}
                if status in (201, 204)
                else {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {
                    "description": "an error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if (method, path) in _STATE_ROUTES:
            operation["responses"]["200"]["content"]["application/json"]["schema"] = {
                "$ref": "#/components/schemas/State"
            }
        if (method, path) == ("GET", "/machines/{machine}/v/{version}/structure"):
            operation["responses"]["200"]["content"]["application/json"]["schema"] = {
                "$ref": "#/components/schemas/Structure"
            }
        if scope is None:
            operation["security"] = []
        else:
            operation["x-statebacked-scope"] = scope
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            }
        params = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if params:
            operation["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ]
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
                **_BODIES,
            },
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
