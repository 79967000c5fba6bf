"""The HTTP API through a real aiohttp server on loopback: every route's statuses and bodies, the
auth matrix, bad input, CORS. (The official npm packages are exercised in tests/compat.)"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import FormData

from server.routes.machines import confirmation
from tests.server.api_support import GUARDED, TOGGLE, Api, bearer, key_token


async def test_bootstrap_writes_private_credentials(api: Api, tmp_path: Path):
    path = tmp_path / "admin.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    status, orgs = await api.call("GET", "/orgs")
    assert status == 200
    assert orgs["orgs"][0]["id"] == api.org_id and orgs["orgs"][0]["role"] == "admin"
    assert set(orgs["orgs"][0]["limits"]) == {"monthlyEventsLimit", "monthlyReadsLimit"}


async def test_machines_versions_and_instances_routes(api: Api):
    version = await api.deploy("toggle")
    assert await api.call("POST", "/machines", body={"slug": "toggle"}) == (
        409,
        {"error": "machine 'toggle' already exists", "code": "invalid-state"},
    )
    status, listed = await api.call("GET", "/machines")
    assert status == 200 and listed["machines"][0]["slug"] == "toggle"
    assert listed["machines"][0]["currentVersion"]["id"] == version
    status, machine = await api.call("GET", "/machines/toggle")
    assert machine["machine"]["currentVersion"]["clientInfo"] == "test"
    status, versions = await api.call("GET", "/machines/toggle/v")
    assert [v["id"] for v in versions["versions"]] == [version] and "cursor" not in versions

    act = {"x-statebacked-act": json.dumps({"sub": "tester"})}
    status, created = await api.call("POST", "/machines/toggle", headers=api.admin(**act), body={"slug": "i1"})
    assert status == 200
    assert created["state"] == "inactive" and created["publicContext"] == {"toggleCount": 0}
    assert created["tags"] == [] and created["done"] is False and isinstance(created["ts"], int)
    assert (await api.call("POST", "/machines/toggle", body={"slug": "i1"}))[0] == 409
    status, sent = await api.call("POST", "/machines/toggle/i/i1/events", body={"event": "toggle"})
    assert status == 200 and sent["state"] == "active" and sent["ts"] > created["ts"]
    status, sent = await api.call("POST", "/machines/toggle/i/i1/events", body={"event": {"type": "toggle"}})
    assert sent["state"] == "inactive"
    status, got = await api.call("GET", "/machines/toggle/i/i1")
    assert status == 200 and got == sent
    status, instances = await api.call("GET", "/machines/toggle/i")
    assert instances["instances"][0]["slug"] == "i1" and instances["instances"][0]["status"] == "running"
    assert instances["instances"][0]["machineVersion"]["id"] == version
    status, history = await api.call("GET", "/machines/toggle/i/i1/events")
    assert [t["event"]["type"] for t in history["transitions"]] == ["xstate.init", "toggle", "toggle"]
    status, admin = await api.call("GET", "/machines/toggle/i/i1/admin")
    assert admin["context"] == {"public": {"toggleCount": 1}} and admin["machineVersion"]["id"] == version

    # desired version: the current one is fine; another one needs a migration path
    assert (await api.call("PUT", "/machines/toggle/i/i1/v", body={"targetMachineVersionId": version}))[0] == 201
    other = await api.deploy("toggle", make_current=False)
    status, error = await api.call("PUT", "/machines/toggle/i/i1/v", body={"targetMachineVersionId": other})
    assert status == 400 and error["code"] == "no-migration-path"

    # status: paused instances reject events with 409
    assert (await api.call("PUT", "/machines/toggle/i/i1/status", body={"status": "paused"}))[0] == 204
    status, error = await api.call("POST", "/machines/toggle/i/i1/events", body={"event": "toggle"})
    assert status == 409 and error["code"] == "invalid-state"
    assert (await api.call("PUT", "/machines/toggle/i/i1/status", body={"status": "running"}))[0] == 204

    # deletes need the HMAC confirmation; a machine with instances cannot go
    status, error = await api.call(
        "DELETE",
        "/machines/toggle/i/i1",
        body={"dangerDataWillBeDeletedForever": True, "hmacSha256OfMachineInstanceNameWithMachineNameKey": "wrong"},
    )
    assert status == 400 and error["parameter"] == "hmacSha256OfMachineInstanceNameWithMachineNameKey"
    status, error = await api.call(
        "DELETE",
        "/machines/toggle",
        body={
            "dangerDataWillBeDeletedForever": True,
            "hmacSha256OfMachineNameWithMachineNameKey": confirmation("toggle", "toggle"),
        },
    )
    assert status == 409
    assert (
        await api.call(
            "DELETE",
            "/machines/toggle/i/i1",
            body={
                "dangerDataWillBeDeletedForever": True,
                "hmacSha256OfMachineInstanceNameWithMachineNameKey": confirmation("toggle", "i1"),
            },
        )
    )[0] == 204
    assert (await api.call("GET", "/machines/toggle/i/i1"))[0] == 404
    assert (
        await api.call(
            "DELETE",
            "/machines/toggle",
            body={
                "dangerDataWillBeDeletedForever": True,
                "hmacSha256OfMachineNameWithMachineNameKey": confirmation("toggle", "toggle"),
            },
        )
    )[0] == 204
    assert (await api.call("GET", "/machines/toggle"))[0] == 404


def test_delete_confirmations_match_the_spec_test_vectors():
    assert confirmation("m1", "m1") == "aUJoR6L6HwMhrz0J1n4FbSxms3PjOWEO-D_7zgRIP9w"
    assert confirmation("m1", "i1") == "0YXc3drjFKzrlXslHfznpobV-rAe9sM4a4lduUAOl2I"


async def test_version_upload_edge_cases(api: Api):
    await api.call("POST", "/machines", body={"slug": "m"})
    status, provisional = await api.call("POST", "/machines/m/v")
    signed = provisional["machineVersionId"]
    status, error = await api.call("PUT", f"/machines/m/v/{signed}", body={})
    assert status == 400 and "no code was uploaded" in error["error"]
    assert await api.upload(provisional, b"export default 1", filename="m.js", gzipped=False) == 204
    assert await api.upload(provisional, b"again", filename="m.js", gzipped=False) == 409  # single use
    status, error = await api.call("PUT", f"/machines/m/v/{signed}", body={"makeCurrent": True})
    assert status == 400 and error["code"] == "invalid-parameter" and "not an XState machine" in error["error"]
    status, error = await api.call("PUT", f"/machines/m/v/{signed[:-3]}xyz", body={})
    assert status == 404
    # a syntax error comes back located
    status, provisional = await api.call("POST", "/machines/m/v?gzip")
    await api.upload(provisional, b"const x = ;", filename="m.js", gzipped=True)
    status, error = await api.call("PUT", f"/machines/m/v/{provisional['machineVersionId']}", body={})
    assert status == 400 and "m.js:1:" in error["error"]
    # a finalized version cannot be finalized again
    version_source = TOGGLE
    status, provisional = await api.call("POST", "/machines/m/v")
    await api.upload(provisional, version_source, filename="m.ts", gzipped=False)
    assert (await api.call("PUT", f"/machines/m/v/{provisional['machineVersionId']}", body={}))[0] == 200
    assert (await api.call("PUT", f"/machines/m/v/{provisional['machineVersionId']}", body={}))[0] == 409
    # an upload URL that was tampered with is refused
    async with api.client.post("/code-uploads/version.ver_x.9999999999.forged", data=FormData()) as response:
        assert response.status == 404


async def test_key_scopes_and_presets(api: Api):
    await api.deploy("toggle")
    prod_id, prod_secret = await api.key(use="production")
    ci_id, ci_secret = await api.key(use="ci")
    explicit_id, explicit_secret = await api.key(use="production", scopes=["machines.read"])  # scopes win
    prod = bearer(key_token(prod_id, prod_secret, {"sub": "u1"}))
    ci = bearer(key_token(ci_id, ci_secret, {"sub": "ci"}))
    explicit = bearer(key_token(explicit_id, explicit_secret, {"sub": "x"}))
    assert (await api.call("POST", "/machines/toggle", headers=prod, body={"slug": "p1"}))[0] == 200
    assert (await api.call("POST", "/machines/toggle/i/p1/events", headers=prod, body={"event": "toggle"}))[0] == 200
    assert (await api.call("GET", "/machines/toggle/i/p1", headers=prod))[0] == 200
    status, error = await api.call("GET", "/machines", headers=prod)
    assert status == 403 and error["code"] == "missing-scope"
    assert (await api.call("GET", "/machines", headers=ci))[0] == 200
    assert (await api.call("POST", "/machines", headers=ci, body={"slug": "from-ci"}))[0] == 201
    assert (await api.call("POST", "/machines/toggle/i/p1/events", headers=ci, body={"event": "toggle"}))[0] == 403
    assert (await api.call("GET", "/machines", headers=explicit))[0] == 200
    assert (await api.call("POST", "/machines/toggle", headers=explicit, body={"slug": "e1"}))[0] == 403
    status, keys = await api.call("GET", "/keys")
    assert {k["id"] for k in keys["keys"]} >= {prod_id, ci_id, explicit_id}
    assert all("key" not in k and "secret" not in k for k in keys["keys"])
    assert next(k for k in keys["keys"] if k["id"] == explicit_id)["scopes"] == ["machines.read"]
    # a deleted key's tokens stop working at once
    assert (await api.call("DELETE", f"/keys/{prod_id}"))[0] == 204
    status, error = await api.call("GET", "/machines/toggle/i/p1", headers=prod)
    assert status == 403 and error["code"] == "missing-user"
    assert (await api.call("DELETE", f"/keys/{prod_id}"))[0] == 404


async def test_tokens_that_must_be_refused(api: Api):
    key_id, secret = await api.key(use="production")
    for token in (
        key_token(key_id, "sbsec_wrong_secret_of_at_least_32_bytes", {"sub": "u"}),  # forged
        key_token(key_id, secret, {"sub": "u"}, expires_in=-60),  # expired
        key_token("sbk_unknown", secret, {"sub": "u"}),  # unknown key
        jwt.encode({"sub": "x"}, "whatever-secret-of-32-bytes-or-more!!", algorithm="HS256"),  # no kid
        "not-a-jwt",
    ):
        status, error = await api.call("GET", "/machines/x/i/y", headers=bearer(token))
        assert (status, error["code"]) == (403, "missing-user"), token
    status, error = await api.call("GET", "/machines", headers={"content-type": "application/json"})
    assert (status, error["code"]) == (403, "missing-user")
    # a key of this org used with another org's header
    status, error = await api.call(
        "GET", "/machines/x/i/y", headers=bearer(key_token(key_id, secret, {}), **{"x-statebacked-org-id": "org_other"})
    )
    assert (status, error["code"]) == (403, "missing-org")


async def test_admin_roles_orgs_and_impersonation(api: Api):
    await api.deploy("guarded", GUARDED)
    reader = bearer(await api.user_with_role("read"))
    writer = bearer(await api.user_with_role("write"))
    assert (await api.call("GET", "/machines", headers=reader))[0] == 200
    assert (await api.call("POST", "/machines", headers=reader, body={"slug": "r"}))[0] == 403
    assert (await api.call("POST", "/machines", headers=writer, body={"slug": "w"}))[0] == 201
    assert (await api.call("POST", "/keys", headers=writer, body={"name": "k", "use": "ci"}))[0] == 403
    # impersonation: only org admins may set x-statebacked-act, and it is the authContext
    allowed = {"x-statebacked-act": json.dumps({"sub": "u-allowed"})}
    status, error = await api.call("POST", "/machines/guarded", headers={**writer, **allowed}, body={"slug": "g1"})
    assert (status, error["code"]) == (403, "missing-scope")
    status, error = await api.call(
        "POST",
        "/machines/guarded",
        headers=api.admin(**{"x-statebacked-act": '{"sub": "u-other"}'}),
        body={"slug": "g1"},
    )
    assert (status, error["code"]) == (403, "rejected-by-machine-authorizer")
    assert (await api.call("POST", "/machines/guarded", headers=api.admin(**allowed), body={"slug": "g1"}))[0] == 200
    status, error = await api.call(
        "GET", "/machines/guarded/i/g1", headers=api.admin(**{"x-statebacked-act": '{"sub": "nobody"}'})
    )
    assert (status, error["code"]) == (403, "rejected-by-machine-authorizer")
    status, error = await api.call(
        "POST", "/machines/guarded", headers=api.admin(**{"x-statebacked-act": "[1]"}), body={"slug": "g2"}
    )
    assert (status, error["parameter"]) == (400, "x-statebacked-act")
    # an admin in several orgs must name one
    status, created = await api.call("POST", "/orgs", body={"name": "second"})
    assert status == 200 and created["id"].startswith("org_")
    status, error = await api.call("GET", "/machines")
    assert (status, error["code"]) == (400, "specify-org")
    status, listed = await api.call("GET", "/machines", headers=api.admin(**{"x-statebacked-org-id": created["id"]}))
    assert status == 200 and listed["machines"] == []
    status, error = await api.call("GET", "/machines", headers=api.admin(**{"x-statebacked-org-id": "org_nope"}))
    assert (status, error["code"]) == (403, "missing-org")

    # an admin token of a user whose tokens were revoked
    async def revoke(conn):
        await conn.execute("UPDATE users SET token_generation = token_generation + 1")

    await api.engine.store.write(revoke)
    status, error = await api.call("GET", "/orgs")
    assert (status, error["code"]) == (403, "missing-user")


@pytest.mark.parametrize(
    ("method", "path", "raw", "parameter"),
    [
        ("POST", "/machines", b"{not json", "body"),
        ("POST", "/machines", b"[1, 2]", "body"),
        ("POST", "/machines", b'{"slug": "has space"}', "slug"),
        ("POST", "/machines", b'{"slug": "' + b"x" * 129 + b'"}', "slug"),
        ("POST", "/machines", b'{"slug": "ok", "extra": 1}', "extra"),
        ("POST", "/machines", b'{"slug": 5}', "slug"),
        ("POST", "/keys", b'{"name": "k", "scopes": ["nope.read"]}', "scopes"),
        ("POST", "/keys", b'{"name": "k"}', "use"),
        ("POST", "/orgs", b'{"name": ""}', "name"),
    ],
)
async def test_bad_input_gets_400_with_the_parameter_and_changes_nothing(api: Api, method, path, raw, parameter):
    status, before = await api.call("GET", "/machines")
    status, error = await api.call(method, path, data=raw)
    assert status == 400 and error["code"] == "invalid-parameter" and error["parameter"] == parameter
    assert isinstance(error["error"], str) and error["error"]
    assert (await api.call("GET", "/machines"))[1] == before


async def test_instance_bad_input(api: Api):
    await api.deploy("toggle")
    await api.call("POST", "/machines/toggle", body={"slug": "i1"})
    cases = [
        ("POST", "/machines/toggle/i/i1/events", {"event": 5}, "event"),
        ("POST", "/machines/toggle/i/i1/events", {"event": {"no": "type"}}, "event"),
        ("POST", "/machines/toggle/i/i1/events", {"event": {"type": "xstate.after(1)#x"}}, "event"),
        ("POST", "/machines/toggle/i/i1/events", {"event": {"type": "big", "blob": "x" * 70_000}}, "event"),
        ("POST", "/machines/toggle", {"slug": "i2", "context": [1]}, "context"),
        ("PUT", "/machines/toggle/i/i1/status", {"status": "sleeping"}, "status"),
    ]
    for method, path, body, parameter in cases:
        status, error = await api.call(method, path, body=body)
        assert (status, error["code"], error.get("parameter")) == (400, "invalid-parameter", parameter), body
    status, history = await api.call("GET", "/machines/toggle/i/i1/events")
    assert len(history["transitions"]) == 1


async def test_oversized_bodies_are_refused(api: Api):
    status, error = await api.call("POST", "/machines", data=io.BytesIO(b'{"slug": "' + b"x" * 12_000_000 + b'"}'))
    assert status == 413 and error["code"] == "invalid-parameter"


async def test_cors_on_every_route_and_preflight(api: Api):
    for path in ("/machines", "/machines/x/i/y/events", "/tokens", "/code-uploads/anything", "/nowhere"):
        async with api.client.options(
            path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "x-statebacked-act" in response.headers["Access-Control-Allow-Headers"]
    async with api.client.get("/machines", headers={"Origin": "https://app.example"}) as response:
        assert response.status == 403 and response.headers["Access-Control-Allow-Origin"] == "*"


async def test_no_request_gets_a_traceback(api: Api):
    for method, path, raw in [
        ("GET", "/machines/%ff", b""),
        ("PUT", "/nothing-here", b"{}"),
        ("POST", "/tokens", b"\x00\x01"),
        ("GET", "/machines?cursor=@@@", b""),
    ]:
        async with api.client.request(method, path, data=raw, headers=api.admin()) as response:
            text = await response.text()
            assert response.status < 500, (path, text)
            assert "Traceback" not in text
            assert "code" in json.loads(text)


async def test_anonymous_sessions_are_provisioned_with_new_orgs(api: Api):
    status, org = await api.call("POST", "/orgs", body={"name": "public"})
    org_id = org["id"]
    admin = api.admin(**{"x-statebacked-org-id": org_id})
    status, _ = await api.call("POST", "/machines", headers=admin, body={"slug": "toggle"})
    status, provisional = await api.call("POST", "/machines/toggle/v", headers=admin)
    await api.upload(provisional, TOGGLE, filename="t.ts", gzipped=False)
    await api.call(
        "PUT", f"/machines/toggle/v/{provisional['machineVersionId']}", headers=admin, body={"makeCurrent": True}
    )
    issuer = f"https://{org_id}.anonymous.auth.statebacked.dev"
    now = int(time.time())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the key is the 26-byte org id, as the official client does
        subject = jwt.encode(
            {"aud": issuer, "iss": issuer, "iat": now, "exp": now + 86400, "sid": "s1", "did": "d1"},
            org_id,
            algorithm="HS256",
        )
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": f"https://tokens.statebacked.dev/{org_id}/anonymous-statebacked-dev",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": subject,
    }
    async with api.client.post("/tokens", data=form) as response:
        assert response.status == 200
        exchanged = await response.json()
    assert exchanged["token_type"] == "Bearer"
    token = exchanged["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["act"] == {
        "sid": "s1",
        "did": "d1",
        "auth": "anonymous",
    }
    status, state = await api.call("POST", "/machines/toggle", headers=bearer(token), body={"slug": "anon"})
    assert status == 200 and state["state"] == "inactive"
    form["audience"] = f"https://tokens.statebacked.dev/{org_id}/unknown-service"
    async with api.client.post("/tokens", data=form) as response:
        assert response.status == 403 and (await response.json())["code"] == "missing-user"


async def test_billing_answers_with_the_configured_portal(api: Api):
    status, error = await api.call("GET", "/billing")
    assert status == 404 and error["code"] == "not-found"


async def test_the_openapi_document_describes_every_registered_route(api: Api):
    async with api.client.get("/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["openapi"].startswith("3.")
    registered = set()
    for route in api.client.app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        registered.add((route.method.lower(), path))
    described = {(method, path) for path, ops in doc["paths"].items() for method in ops}

    # the document names path parameters as the wire spec does; compare on the path's shape
    def shape(path: str) -> str:
        return "/".join("{}" if part.startswith("{") else part for part in path.split("/"))

    assert {(m, shape(p)) for m, p in registered} == {(m, shape(p)) for m, p in described}


async def test_hostile_inputs_get_4xx_not_500(api: Api):
    """From a review: inputs that used to reach an unhandled exception (500)."""
    await api.deploy("toggle")
    await api.call("POST", "/machines/toggle", body={"slug": "i1"})
    # Non-ASCII in signed values: compare_digest refuses non-ASCII str, so comparisons are on bytes.
    status, body = await api.call("POST", "/code-uploads/version.ver_x.99999999999.\u00e9", data=b"x")
    assert status == 404, body
    assert (await api.call("PUT", "/machines/toggle/v/ver_x.\u00e9", body={"clientInfo": ""}))[0] == 404
    for path, field in (
        ("/machines/toggle", "hmacSha256OfMachineNameWithMachineNameKey"),
        ("/machines/toggle/i/i1", "hmacSha256OfMachineInstanceNameWithMachineNameKey"),
    ):
        status, body = await api.call("DELETE", path, body={"dangerDataWillBeDeletedForever": True, field: "\u00e9"})
        assert (status, body["parameter"]) == (400, field), body
    # Nesting deeper than the JSON parser recurses, in a body and in the act header.
    status, body = await api.call("POST", "/machines", data="[" * 5000)
    assert (status, body["code"]) == (400, "invalid-parameter") and body["parameter"] == "body"
    status, body = await api.call("GET", "/machines", headers=api.admin(**{"x-statebacked-act": "[" * 3000}))
    assert status == 400 and body["parameter"] == "x-statebacked-act"

    # Forged cursors, on every kind of list.
    def b64(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    for forged in ([1, {"a": 1}], [1, [1, 2]], [10**30, "x"], [1, 10**30], [True, "x"], ["1", "x"]):
        for path in ("/machines", "/keys", "/orgs", "/machines/toggle/v", "/machines/toggle/i"):
            status, body = await api.call("GET", f"{path}?cursor={b64(forged)}")
            assert (status, body["parameter"]) == (400, "cursor"), (path, forged, body)
    # /logs instants outside what can be printed back as ISO-8601.
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"):
        status, body = await api.call("GET", f"/logs?from={moment}")
        assert (status, body["parameter"]) == (400, "from"), (moment, body)
    # Nothing stored was touched.
    assert (await api.call("GET", "/machines/toggle/i/i1"))[0] == 200


async def test_verified_tokens_are_cached_but_deletion_and_expiry_still_win(api: Api):
    """A key-signed token is verified once per process (server/auth.py); its exp and nbf are checked
    on every use, and deleting its key refuses it at once."""
    from server.auth import authenticate
    from server.errors import MissingUser

    await api.deploy("toggle")
    key_id, secret = await api.key(use="production")
    token = key_token(key_id, secret, {"sub": "u1"}, expires_in=120)
    store = api.engine.store
    now = int(time.time())

    async def who(at: int) -> str:
        caller = await authenticate(store, token, org_header=None, act_header=None, now_s=at, admin_secret="unused")
        return str(caller.auth_context["sub"])

    assert await who(now) == "u1"
    assert token in store.authority.verified_key_tokens  # verified once, then served from the cache
    assert await who(now + 1) == "u1"
    with pytest.raises(MissingUser, match="expired"):
        await who(now + 3600)  # long past exp (and the leeway): refused although cached
    assert (await api.call("GET", "/machines/toggle/i/nope", headers=bearer(token)))[0] == 404
    assert (await api.call("DELETE", f"/keys/{key_id}"))[0] == 204
    assert token not in store.authority.verified_key_tokens
    status, body = await api.call("GET", "/machines/toggle/i/nope", headers=bearer(token))
    assert status == 403 and body["code"] == "missing-user"
