"""Revocation everywhere (server/revocation.py, docs/threat-model.md "Revocation"): what is deleted or
revoked through one node stops working on every node, within the documented bound.

Two real apps on loopback share one PostgreSQL database (node A bootstraps it); each test warms
node B's caches first, then deletes or revokes through node A (or straight in the database) and
polls node B with a bound. One SQLite node must revoke at once (before the delete answers)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import jwt
from aiohttp import ClientWebSocketResponse

from server import auth
from server import store_machines as store_module
from server.app import REVOCATIONS
from server.revocation import RECHECK_S
from server.routes.machines import confirmation
from tests.server.api_support import TOGGLE, Api, api_client, bearer, key_token
from tests.server.conftest import eventually

NOTICE_BOUND_S = 10.0
"""Generous for a loaded CI machine: a notice normally arrives within milliseconds."""


async def _status(api: Api, token: str, path: str = "/machines") -> int:
    status, _ = await api.call("GET", path, headers=bearer(token))
    return status


async def _refused(api: Api, token: str) -> bool:
    status, body = await api.call("GET", "/machines", headers=bearer(token))
    if status == 200:
        return False
    assert status == 403 and body["code"] == "missing-user", (status, body)
    return True


async def _subscribe(api: Api, token: str, request_id: str, instance: str) -> ClientWebSocketResponse:
    ws = await api.client.ws_connect(f"/rt?token={token}")
    await _send_subscribe(ws, request_id, instance)
    first = json.loads((await ws.receive(timeout=10)).data)
    assert first["type"] == "instance-update" and first["machineInstanceName"] == instance, first
    return ws


async def _send_subscribe(ws: ClientWebSocketResponse, request_id: str, instance: str) -> None:
    await ws.send_json(
        {"type": "subscribe-to-instance", "requestId": request_id, "machineName": "t", "machineInstanceName": instance}
    )


async def _until_error(ws: ClientWebSocketResponse, request_id: str, within_s: float) -> list[dict[str, Any]]:
    """The messages up to and including the error for ``request_id`` (fails after ``within_s``)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within_s
    while True:
        message = json.loads((await ws.receive(timeout=max(0.01, deadline - time.monotonic()))).data)
        seen.append(message)
        if message["type"] == "error" and message["requestId"] == request_id:
            assert message["status"] == 403 and message["code"] == "missing-user", message
            return seen


async def _revoke_user(api: Api, user_id: str) -> None:
    async def bump(tx: Any) -> None:
        await tx.execute("UPDATE users SET token_generation = token_generation + 1 WHERE id = ?", (user_id,))

    await api.engine.store.write(bump)


def _user_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


# -- keys ---------------------------------------------------------------------------------------------


async def test_a_key_deleted_on_one_node_is_refused_by_the_other_once_its_notice_arrives(nodes, monkeypatch):
    # The TTL fallback is pushed out of reach: only the deletion's notice can make B refuse in time.
    monkeypatch.setattr(auth, "VERIFIED_TOKEN_TTL_S", 3600.0)
    a, b = nodes
    key_id, secret = await a.key(use="ci")
    token = key_token(key_id, secret, {"sub": "u1"})
    assert await _status(a, token) == 200 and await _status(b, token) == 200  # both nodes cached it
    assert any(hit[0].id == key_id for hit in b.engine.store.authority.verified_key_tokens.values())
    status, _ = await a.call("DELETE", f"/keys/{key_id}")
    assert status == 204
    assert await _refused(a, token)  # the deleting node: at once, before anything else
    await eventually(lambda: _refused(b, token), within_s=NOTICE_BOUND_S)
    assert not any(hit[0].id == key_id for hit in b.engine.store.authority.verified_key_tokens.values())


async def test_a_lost_notice_is_covered_by_the_cache_ttl(nodes, monkeypatch):
    monkeypatch.setattr(auth, "VERIFIED_TOKEN_TTL_S", 1.0)
    a, b = nodes
    key_id, secret = await a.key(use="ci")
    token = key_token(key_id, secret, {"sub": "u1"})
    assert await _status(b, token) == 200
    forgotten: list[str] = []
    monkeypatch.setattr(b.engine.store.authority, "forget", forgotten.append)  # B loses every notice
    started = time.monotonic()
    status, _ = await a.call("DELETE", f"/keys/{key_id}")
    assert status == 204
    await eventually(lambda: _refused(b, token), within_s=auth.VERIFIED_TOKEN_TTL_S + NOTICE_BOUND_S)
    assert time.monotonic() - started < auth.VERIFIED_TOKEN_TTL_S + NOTICE_BOUND_S
    await eventually(lambda: _async(f"key:{key_id}" in forgotten), within_s=NOTICE_BOUND_S)  # it was sent


async def _async(value: bool) -> bool:
    return value


async def test_a_node_whose_listener_dropped_forgets_everything_and_listens_again(nodes, monkeypatch):
    monkeypatch.setattr(auth, "VERIFIED_TOKEN_TTL_S", 3600.0)
    monkeypatch.setattr(store_module, "MACHINE_ID_TTL_S", 3600.0)
    a, b = nodes
    key_id, secret = await a.key(use="ci")
    token = key_token(key_id, secret, {"sub": "u1"})
    assert await _status(b, token) == 200
    revocations = b.client.app[REVOCATIONS]
    listener = revocations._listener
    assert listener is not None
    await listener.stop()  # as when the database restarts: notices sent meanwhile are gone
    assert listener.lost
    await eventually(lambda: _async(not b.engine.store.authority.verified_key_tokens), within_s=NOTICE_BOUND_S)
    await eventually(lambda: _async(revocations._listener is not None and not revocations._listener.lost))
    # listening again: a later deletion reaches B by its notice
    assert await _status(b, token) == 200
    status, _ = await a.call("DELETE", f"/keys/{key_id}")
    assert status == 204
    await eventually(lambda: _refused(b, token), within_s=NOTICE_BOUND_S)


async def test_a_deleted_keys_real_time_subscriptions_on_another_node_end(nodes, monkeypatch):
    monkeypatch.setattr(auth, "VERIFIED_TOKEN_TTL_S", 3600.0)
    a, b = nodes
    await a.deploy("t", TOGGLE)
    assert (await a.call("POST", "/machines/t", body={"slug": "i1"}))[0] == 200
    key_id, secret = await a.key(use="production")
    token = key_token(key_id, secret, {"sub": "u1"})
    revoked = await _subscribe(b, token, "r1", "i1")
    watcher = await _subscribe(b, a.admin_token, "w1", "i1")  # an admin on B keeps receiving
    status, _ = await a.call("DELETE", f"/keys/{key_id}")
    assert status == 204
    before = await _until_error(revoked, "r1", NOTICE_BOUND_S)
    assert [m["type"] for m in before] == ["error"]
    # a commit after the revocation reaches the admin, not the revoked socket
    status, state = await a.call("POST", "/machines/t/i/i1/events", body={"event": "toggle"})
    assert status == 200
    update = json.loads((await watcher.receive(timeout=NOTICE_BOUND_S)).data)
    assert update["type"] == "instance-update" and update["state"] == state["state"]
    await _send_subscribe(revoked, "r2", "i1")  # a new subscribe on the socket fails too
    after = await _until_error(revoked, "r2", NOTICE_BOUND_S)
    assert [m["type"] for m in after] == ["error"]
    await revoked.close()
    await watcher.close()


# -- admin users ----------------------------------------------------------------------------------------


async def test_a_revoked_admin_user_is_refused_by_every_node_at_once(nodes):
    a, b = nodes
    token = await a.user_with_role("admin")
    assert await _status(a, token) == 200 and await _status(b, token) == 200
    await _revoke_user(a, _user_of(token))  # the token generation (wire-api 2.11): read on every request
    assert await _refused(b, token)
    assert await _refused(a, token)


async def test_a_revoked_admin_users_real_time_subscriptions_end_within_the_recheck_period(nodes):
    a, b = nodes
    await a.deploy("t", TOGGLE)
    assert (await a.call("POST", "/machines/t", body={"slug": "i1"}))[0] == 200
    token = await a.user_with_role("read")
    ws = await _subscribe(b, token, "r1", "i1")
    await _revoke_user(a, _user_of(token))
    started = time.monotonic()
    messages = await _until_error(ws, "r1", RECHECK_S + NOTICE_BOUND_S)
    assert time.monotonic() - started < RECHECK_S + NOTICE_BOUND_S
    assert all(m["type"] == "instance-update" for m in messages[:-1])
    await ws.close()


# -- machines and providers ------------------------------------------------------------------------------


async def test_a_machine_deleted_and_recreated_on_one_node_is_found_anew_by_the_other(nodes, monkeypatch):
    monkeypatch.setattr(store_module, "MACHINE_ID_TTL_S", 3600.0)  # only the notice can do it
    a, b = nodes
    await a.deploy("t", TOGGLE)
    status, _ = await b.call("GET", "/machines/t/i/nobody")  # B caches the machine's id
    assert status == 404
    old_id = await b.engine.store.machine_id(a.org_id, "t")
    body = {"dangerDataWillBeDeletedForever": True, "hmacSha256OfMachineNameWithMachineNameKey": confirmation("t", "t")}
    status, _ = await a.call("DELETE", "/machines/t", body=body)
    assert status == 204
    await a.deploy("t", TOGGLE)
    assert (await a.call("POST", "/machines/t", body={"slug": "i2"}))[0] == 200

    async def found() -> bool:
        status, _ = await b.call("GET", "/machines/t/i/i2")
        return status == 200

    await eventually(found, within_s=NOTICE_BOUND_S)
    assert await b.engine.store.machine_id(a.org_id, "t") != old_id


async def test_a_token_provider_deleted_on_one_node_stops_exchanges_on_the_other_at_once(nodes):
    a, b = nodes
    issuer = f"https://{a.org_id}.anonymous.auth.statebacked.dev"
    now = int(time.time())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the key is the 26-byte org id, as the official client does
        subject = jwt.encode({"aud": issuer, "iss": issuer, "iat": now, "exp": now + 600, "sid": "s"}, a.org_id)
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": f"https://tokens.statebacked.dev/{a.org_id}/anonymous-statebacked-dev",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": subject,
    }
    async with b.client.post("/tokens", data=form) as response:
        assert response.status == 200
    status, _ = await a.call("DELETE", "/token-providers/anonymous-statebacked-dev")
    assert status == 204
    async with b.client.post("/tokens", data=form) as response:  # providers are read per exchange
        assert response.status == 403 and (await response.json())["code"] == "missing-user"


# -- one node (SQLite) ----------------------------------------------------------------------------------


async def test_one_sqlite_node_revokes_a_key_before_the_delete_answers(tmp_path: Path, bundler, monkeypatch):
    monkeypatch.setattr(auth, "VERIFIED_TOKEN_TTL_S", 3600.0)
    async for api in api_client(tmp_path, bundler):
        assert not api.engine.store.shared
        await api.deploy("t", TOGGLE)
        assert (await api.call("POST", "/machines/t", body={"slug": "i1"}))[0] == 200
        key_id, secret = await api.key(use="production")
        token = key_token(key_id, secret, {"sub": "u1"})
        assert await _status(api, token, "/machines/t/i/i1") == 200
        ws = await _subscribe(api, token, "r1", "i1")
        status, _ = await api.call("DELETE", f"/keys/{key_id}")
        assert status == 204
        assert await _status(api, token, "/machines/t/i/i1") == 403
        # the socket's subscription was ended before the delete answered: its error is already queued
        assert [m["type"] for m in await _until_error(ws, "r1", NOTICE_BOUND_S)] == ["error"]
        await ws.close()


# -- identities cached by the commit relay ------------------------------------------------------------


async def test_a_subscriber_on_another_node_follows_an_instance_deleted_and_recreated_under_its_name(nodes):
    """server/cluster.py maps a subscribed (machine, name) to an instance id: a deleted instance's
    name, created again, is a new id, whose commits the subscriber's node must relay too (as one
    node's hub does, by name)."""
    a, b = nodes
    await a.deploy("t", TOGGLE)
    assert (await a.call("POST", "/machines/t", body={"slug": "i1"}))[0] == 200
    ws = await _subscribe(b, a.admin_token, "r1", "i1")
    body = {
        "dangerDataWillBeDeletedForever": True,
        "hmacSha256OfMachineInstanceNameWithMachineNameKey": confirmation("t", "i1"),
    }
    status, _ = await a.call("DELETE", "/machines/t/i/i1", body=body)
    assert status == 204
    status, created = await a.call("POST", "/machines/t", body={"slug": "i1", "context": {"again": True}})
    assert status == 200
    status, toggled = await a.call("POST", "/machines/t/i/i1/events", body={"event": "toggle"})
    assert status == 200 and toggled["state"] != created["state"]
    states = []
    deadline = time.monotonic() + NOTICE_BOUND_S
    while toggled["state"] not in states:
        message = json.loads((await ws.receive(timeout=max(0.01, deadline - time.monotonic()))).data)
        assert message["type"] == "instance-update", message
        states.append(message["state"])
    assert states == [created["state"], toggled["state"]]  # the new instance's every state, in order
    await ws.close()
