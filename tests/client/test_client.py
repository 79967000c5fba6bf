"""The Python client against a real server on loopback: every method, error mapping, tokens, logs,
subscriptions."""

from __future__ import annotations

import asyncio
import base64
import datetime
import time
import warnings

import jwt
import pytest

from client import (
    ConflictError,
    ExchangedToken,
    MissingUserError,
    NotFoundError,
    RejectedByMachineAuthorizerError,
    StatehostClient,
    SyncStatehostClient,
    UnauthorizedError,
    anonymous_subject_token,
    sign_token,
)
from client.tokens import SHORT_KEY_WARNING
from tests.server.api_support import GUARDED, TOGGLE, Api
from tests.support import eventually


async def test_machines_versions_and_instances(admin: StatehostClient):
    await admin.machines.create("toggle")
    with pytest.raises(ConflictError):
        await admin.machines.create("toggle")
    version = await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", client_info="v1", make_current=True)
    assert (await admin.machines.get("toggle"))["currentVersion"]["id"] == version
    assert [v["id"] for v in await admin.versions.list("toggle")] == [version]
    assert [m["slug"] for m in await admin.machines.list()] == ["toggle"]

    with pytest.raises(NotFoundError):
        await admin.instances.get("toggle", "i1")
    state = await admin.instances.get_or_create("toggle", "i1")
    assert state["state"] == "inactive"
    assert (await admin.instances.get_or_create("toggle", "i1"))["ts"] == state["ts"]
    state = await admin.instances.send_event("toggle", "i1", "toggle")
    assert state["state"] == "active" and state["publicContext"] == {"toggleCount": 1}
    assert [i["slug"] for i in await admin.instances.list("toggle")] == ["i1"]
    assert [t["event"]["type"] for t in await admin.instances.transitions("toggle", "i1")] == ["xstate.init", "toggle"]
    assert (await admin.instances.admin("toggle", "i1"))["context"]["public"]["toggleCount"] == 1
    await admin.instances.set_status("toggle", "i1", "paused")
    with pytest.raises(ConflictError):
        await admin.instances.send_event("toggle", "i1", "toggle")
    await admin.instances.set_status("toggle", "i1", "running")
    await admin.instances.set_desired_version("toggle", "i1", version)
    await admin.instances.delete("toggle", "i1")
    with pytest.raises(NotFoundError):
        await admin.instances.get("toggle", "i1")
    await admin.machines.delete("toggle")
    assert await admin.machines.list() == []


async def test_keys_tokens_and_authorizers(admin: StatehostClient):
    await admin.machines.create("guarded")
    await admin.versions.create("guarded", GUARDED, filename="g.ts", make_current=True)
    key = await admin.keys.create("app", use="production")
    assert key["id"] in {k["id"] for k in await admin.keys.list()}
    token = sign_token(key["id"], key["key"], {"sub": "u-allowed"})
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": key["id"]}
    async with StatehostClient(admin.api_host, token) as user:
        assert (await user.instances.create("guarded", "g1"))["state"] == "a"
    async with StatehostClient(admin.api_host, sign_token(key["id"], key["key"], {"sub": "someone"})) as other:
        with pytest.raises(RejectedByMachineAuthorizerError):
            await other.instances.send_event("guarded", "g1", "go")
    impersonating = StatehostClient(admin.api_host, admin._token, act_as={"sub": "u-allowed"})
    assert (await impersonating.instances.send_event("guarded", "g1", "go"))["state"] == "b"
    await impersonating.close()
    await admin.keys.delete(key["id"])
    assert key["id"] not in {k["id"] for k in await admin.keys.list()}


async def test_logs_and_subscriptions(admin: StatehostClient):
    await admin.machines.create("toggle")
    await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", make_current=True)
    await admin.instances.create("toggle", "i1")
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    updates = admin.instances.subscribe("toggle", "i1")
    assert (await anext(updates))["state"] == "inactive"
    await admin.instances.send_event("toggle", "i1", "toggle")
    update = await asyncio.wait_for(anext(updates), 60)
    assert update["state"] == "active" and update["publicContext"] == {"toggleCount": 1}
    await updates.aclose()
    page = await admin.logs.retrieve(since, machine="toggle")
    assert page["maxTimestamp"].endswith("Z")
    watched = []

    async def watch() -> None:
        async for entry in admin.logs.watch(since, machine="toggle", idle_s=0.05):
            watched.append(entry)

    task = asyncio.create_task(watch())

    async def caught_up() -> bool:
        return len(watched) >= len(page["logs"])

    await eventually(caught_up, within_s=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(watched) == len(page["logs"])


async def test_anonymous_sessions(api: Api, admin: StatehostClient):
    await admin.machines.create("toggle")
    await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", make_current=True)
    async with StatehostClient.anonymous(admin.api_host, api.org_id, session_id="sess-1") as anon:
        assert (await anon.instances.get_or_create("toggle", "a1"))["state"] == "inactive"
        assert (await anon.instances.send_event("toggle", "a1", "toggle"))["state"] == "active"
        token = await anon.token()
        assert token is not None and await anon.token() == token  # cached until close to expiry
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["act"] == {"sid": "sess-1", "did": "sess-1", "auth": "anonymous"}
    # The subject token is exactly what @statebacked/client signs (wire-api 2.9).
    subject = anonymous_subject_token(api.org_id, "s", now_s=1_000)
    issuer = f"https://{api.org_id}.anonymous.auth.statebacked.dev"
    assert jwt.get_unverified_header(subject) == {"alg": "HS256", "typ": "JWT"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SHORT_KEY_WARNING)  # the org ID is the key, by design
        claims = jwt.decode(
            subject, api.org_id.encode(), algorithms=["HS256"], audience=issuer, options={"verify_exp": False}
        )
    assert claims == {"aud": issuer, "iss": issuer, "iat": 1_000, "exp": 87_400, "sid": "s", "did": "s"}
    # An org that does not exist: the exchange is refused with the server's code, not a crash.
    async with StatehostClient.anonymous(admin.api_host, "org_doesnotexist") as stranger:
        with pytest.raises(MissingUserError):
            await stranger.instances.get("toggle", "a1")


async def test_token_exchange_with_own_identity_provider(api: Api, admin: StatehostClient):
    await admin.machines.create("guarded")
    await admin.versions.create("guarded", GUARDED, filename="g.ts", make_current=True)
    key = await admin.keys.create("exchange", use="production")
    secret = b"idp-secret-of-at-least-32-bytes!!"
    await admin.identity_providers.upsert(
        aud="my-app",
        iss="https://idp.example",
        algs=["HS256"],
        key=base64.urlsafe_b64encode(secret).rstrip(b"=").decode(),
        mapping={"sub.$": "$.sub"},
    )
    await admin.token_providers.upsert("app", key["id"], {"sub.$": "$.sub", "via": "exchange"})
    assert "app" in {p["service"] for p in await admin.token_providers.list()}
    assert any(i.get("aud") == "my-app" for i in await admin.identity_providers.list())
    minted = 0

    async def subject() -> str:
        nonlocal minted
        minted += 1
        now = int(time.time())
        return jwt.encode(
            {"aud": "my-app", "iss": "https://idp.example", "sub": "u-allowed", "iat": now, "exp": now + 600},
            secret,
            algorithm="HS256",
        )

    async with StatehostClient.exchanging(admin.api_host, api.org_id, "app", subject) as user:
        assert (await user.instances.create("guarded", "g1"))["state"] == "a"
        assert (await user.instances.send_event("guarded", "g1", "go"))["state"] == "b"
        act = jwt.decode(await user.token() or "", options={"verify_signature": False})["act"]
        assert act == {"sub": "u-allowed", "via": "exchange"}
    assert minted == 1  # one exchange served every call
    # A token inside the refresh margin of its expiry is exchanged afresh.
    async with StatehostClient(admin.api_host) as plain:
        expiring = ExchangedToken(plain, api.org_id, "app", subject, refresh_margin_s=10**9)
        await expiring()
        await expiring()
    assert minted == 3

    # A subject token signed with the wrong secret is refused by the exchange.
    async def forged() -> str:
        return jwt.encode(
            {"aud": "my-app", "iss": "https://idp.example", "sub": "u-allowed", "exp": int(time.time()) + 600},
            b"not-the-secret-not-the-secret-!!",
            algorithm="HS256",
        )

    async with StatehostClient.exchanging(admin.api_host, api.org_id, "app", forged) as intruder:
        with pytest.raises(UnauthorizedError):
            await intruder.instances.get("guarded", "g1")
    await admin.token_providers.delete("app")
    await admin.identity_providers.delete(aud="my-app", iss="https://idp.example")
    assert "app" not in {p["service"] for p in await admin.token_providers.list()}


async def test_sync_client(api: Api, admin: StatehostClient):
    """The blocking façade, used from a plain thread while the server runs on the test's loop."""
    await admin.machines.create("toggle")
    await admin.versions.create("toggle", TOGGLE, filename="toggle.ts", make_current=True)

    def script() -> list[str]:
        seen = []
        with SyncStatehostClient(admin.api_host, lambda: api.admin_token) as client:
            assert client.instances.get_or_create("toggle", "s1")["state"] == "inactive"
            updates = client.instances.subscribe("toggle", "s1")
            seen.append(next(updates)["state"])
            client.instances.send_event("toggle", "s1", "toggle")
            seen.append(next(updates)["state"])
            updates.close()
            with pytest.raises(NotFoundError):
                client.instances.get("toggle", "missing")
            assert [i["slug"] for i in client.instances.list("toggle")] == ["s1"]
        with SyncStatehostClient.anonymous(admin.api_host, api.org_id, session_id="sync") as anon:
            seen.append(anon.instances.send_event("toggle", "s1", "toggle")["state"])
            assert anon.session_id == "sync"
        return seen

    assert await asyncio.to_thread(script) == ["inactive", "active", "inactive"]
