"""The statehost Python client: async, speaking only the State Backed wire contract.

It mirrors ``@statebacked/client`` (snake_case), so that statehost's own tests exercise the wire
contract from the outside, independently of the server's code::

    async with StatehostClient("http://127.0.0.1:8787", token) as client:
        await client.machines.create("toggle")
        await client.versions.create("toggle", source, filename="toggle.ts", make_current=True)
        state = await client.instances.get_or_create("toggle", "i1")
        state = await client.instances.send_event("toggle", "i1", "toggle")
        async for update in client.instances.subscribe("toggle", "i1"):
            ...
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip as gzip_module
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from .errors import ConflictError, NotFoundError, error_for
from .tokens import ANONYMOUS_SERVICE, anonymous_subject_token

__all__ = ["ExchangedToken", "StatehostClient", "exchange_token"]

JSON = Any
Items = list[Any]
"""A list result (named so that methods called ``list`` do not shadow the builtin in annotations)."""
TokenSource = str | Callable[[], Awaitable[str]]


def _confirmation(key: str, data: str) -> str:
    digest = hmac.new(key.encode(), data.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def iso(moment: datetime.datetime) -> str:
    """JavaScript toISOString() form."""
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


async def exchange_token(
    session: aiohttp.ClientSession, api_host: str, org_id: str, service: str, subject_token: str
) -> str:
    """Trade an identity provider's token for a statehost token through the org's token provider
    ``service`` (``POST /tokens``, RFC 8693 form, no authorization header)."""
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "audience": f"https://tokens.statebacked.dev/{org_id}/{service}",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token": subject_token,
    }
    async with session.post(api_host.rstrip("/") + "/tokens", data=form) as response:
        text = await response.text()
        try:
            parsed: Any = json.loads(text) if text else None
        except ValueError:
            parsed = None
        info = parsed if isinstance(parsed, dict) else {}
        if response.status != 200 or not isinstance(info.get("access_token"), str):
            raise error_for(response.status, info.get("code"), info.get("error"), info.get("parameter"))
        return str(info["access_token"])


class ExchangedToken:
    """A token source that exchanges a fresh subject token when the last access token is within
    ``refresh_margin_s`` of expiring (the exchanged token never outlives its subject token)."""

    def __init__(
        self,
        client: StatehostClient,
        org_id: str,
        service: str,
        subject_token: Callable[[], Awaitable[str]],
        *,
        refresh_margin_s: float = 60.0,
    ) -> None:
        self._client = client
        self._org_id = org_id
        self._service = service
        self._subject_token = subject_token
        self._margin_s = refresh_margin_s
        self._token: str | None = None
        self._expires_s = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is None or time.time() >= self._expires_s - self._margin_s:
                subject = await self._subject_token()
                self._token = await exchange_token(
                    self._client.session, self._client.api_host, self._org_id, self._service, subject
                )
                claims = json.loads(base64.urlsafe_b64decode(_padded(self._token.split(".")[1])))
                self._expires_s = float(claims.get("exp", 0))
            return self._token


def _padded(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


class StatehostClient:
    @classmethod
    def exchanging(
        cls, api_host: str, org_id: str, service: str, subject_token: Callable[[], Awaitable[str]]
    ) -> StatehostClient:
        """A client authenticated by exchanging your identity provider's tokens (``subject_token``
        returns a current one) at the org's token provider ``service``."""
        client = cls(api_host)
        client._token = ExchangedToken(client, org_id, service, subject_token)
        return client

    @classmethod
    def anonymous(
        cls, api_host: str, org_id: str, *, session_id: str | None = None, device_id: str | None = None
    ) -> StatehostClient:
        """An anonymous session, as ``new StateBackedClient({ anonymous: { orgId } })``: the
        machine's authorizers see ``{sid, did, auth: "anonymous"}``; ``session_id`` defaults to one
        random UUID per client."""
        sid = session_id or str(uuid.uuid4())

        async def subject() -> str:
            return anonymous_subject_token(org_id, sid, device_id)

        client = cls.exchanging(api_host, org_id, ANONYMOUS_SERVICE, subject)
        client.session_id = sid
        return client

    def __init__(
        self,
        api_host: str,
        token: TokenSource | None = None,
        *,
        org_id: str | None = None,
        act_as: dict[str, Any] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.api_host = api_host.rstrip("/")
        self._token = token
        self.org_id = org_id
        self.act_as = act_as
        self._session = session
        self._own_session = session is None
        self.session_id: str | None = None
        """The anonymous session's ID (see ``anonymous``), else None."""
        self.machines = _Machines(self)
        self.versions = _Versions(self)
        self.instances = _Instances(self)
        self.keys = _Keys(self)
        self.orgs = _Orgs(self)
        self.logs = _Logs(self)
        self.migrations = _Migrations(self)
        self.identity_providers = _IdentityProviders(self)
        self.token_providers = _TokenProviders(self)

    async def __aenter__(self) -> StatehostClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def token(self) -> str | None:
        if self._token is None or isinstance(self._token, str):
            return self._token
        return await self._token()

    async def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        token = await self.token()
        if token:
            headers["authorization"] = f"Bearer {token}"
        if self.org_id:
            headers["x-statebacked-org-id"] = self.org_id
        if self.act_as is not None:
            headers["x-statebacked-act"] = json.dumps(self.act_as)
        return headers

    async def request(self, method: str, path: str, body: JSON = None, params: dict[str, str] | None = None) -> JSON:
        """One API call: JSON in, JSON out; errors raised as the official client's error classes."""
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method, self.api_host + path, data=data, params=params, headers=await self.headers()
        ) as response:
            text = await response.text()
            if response.status in (201, 204):
                return None
            parsed: Any = None
            if text:
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
            if 200 <= response.status < 300:
                return parsed
            info = parsed if isinstance(parsed, dict) else {}
            raise error_for(response.status, info.get("code"), info.get("error"), info.get("parameter"))

    async def upload(self, provisional: JSON, code: bytes | str, filename: str, gzip: bool) -> None:
        """Step 2 of a version or migration create: the code to the pre-signed URL (no auth)."""
        data = code.encode() if isinstance(code, str) else code
        form = aiohttp.FormData()
        for key, value in provisional["codeUploadFields"].items():
            form.add_field(key, value)
        form.add_field("content-type", "application/javascript")
        if gzip:
            form.add_field("content-encoding", "gzip")
        form.add_field(
            "file",
            gzip_module.compress(data) if gzip else data,
            filename=filename,
            content_type="application/javascript",
        )
        async with self.session.post(provisional["codeUploadUrl"], data=form) as response:
            if not 200 <= response.status < 300:
                raise error_for(response.status, None, "error uploading code")

    async def pages(self, path: str, key: str, params: dict[str, str] | None = None) -> AsyncIterator[JSON]:
        """Every item of a paginated list, following cursors."""
        cursor: str | None = None
        while True:
            query = dict(params or {})
            if cursor:
                query["cursor"] = cursor
            page = await self.request("GET", path, params=query or None)
            for item in page[key]:
                yield item
            cursor = page.get("cursor")
            if not cursor:
                return


class _Group:
    def __init__(self, client: StatehostClient) -> None:
        self.client = client


class _Orgs(_Group):
    async def list(self) -> Items:
        return [org async for org in self.client.pages("/orgs", "orgs")]

    async def create(self, name: str, allow_anonymous_access: bool = True) -> str:
        body = await self.client.request(
            "POST", "/orgs", {"name": name, "allowAnonymousAccess": allow_anonymous_access}
        )
        return str(body["id"])


class _Keys(_Group):
    async def create(self, name: str, *, use: str | None = None, scopes: list[str] | None = None) -> JSON:
        body: dict[str, Any] = {"name": name}
        if use is not None:
            body["use"] = use
        if scopes is not None:
            body["scopes"] = scopes
        return await self.client.request("POST", "/keys", body)

    async def list(self) -> Items:
        return [key async for key in self.client.pages("/keys", "keys")]

    async def delete(self, key_id: str) -> None:
        await self.client.request("DELETE", f"/keys/{key_id}")


class _IdentityProviders(_Group):
    async def upsert(
        self,
        *,
        algs: list[str],
        mapping: dict[str, Any],
        aud: str | None = None,
        iss: str | None = None,
        key: str | None = None,
        jwks_url: str | None = None,
    ) -> None:
        """Create or replace the identity provider identified by ``aud`` and ``iss``; ``key`` is
        base64url (for HS* the raw secret's bytes), or give ``jwks_url`` instead."""
        body: dict[str, Any] = {"algs": algs, "mapping": mapping}
        for field, value in (("aud", aud), ("iss", iss), ("key", key), ("jwksUrl", jwks_url)):
            if value is not None:
                body[field] = value
        await self.client.request("POST", "/idps", body)

    async def list(self) -> Items:
        return [idp async for idp in self.client.pages("/idps", "idps")]

    async def delete(self, *, aud: str | None = None, iss: str | None = None) -> None:
        body = {field: value for field, value in (("aud", aud), ("iss", iss)) if value is not None}
        await self.client.request("DELETE", "/idps", body)


class _TokenProviders(_Group):
    async def upsert(self, service: str, key_id: str, mapping: dict[str, Any]) -> None:
        await self.client.request("POST", "/token-providers", {"service": service, "keyId": key_id, "mapping": mapping})

    async def list(self) -> Items:
        return [provider async for provider in self.client.pages("/token-providers", "tokenProviders")]

    async def delete(self, service: str) -> None:
        await self.client.request("DELETE", f"/token-providers/{service}")


class _Machines(_Group):
    async def create(self, slug: str, indexes: list[str] | None = None) -> None:
        body: dict[str, Any] = {"slug": slug}
        if indexes:
            body["indexes"] = indexes
        await self.client.request("POST", "/machines", body)

    async def get(self, slug: str) -> JSON:
        return (await self.client.request("GET", f"/machines/{slug}"))["machine"]

    async def list(self) -> Items:
        return [machine async for machine in self.client.pages("/machines", "machines")]

    async def delete(self, slug: str) -> None:
        await self.client.request(
            "DELETE",
            f"/machines/{slug}",
            {
                "dangerDataWillBeDeletedForever": True,
                "hmacSha256OfMachineNameWithMachineNameKey": _confirmation(slug, slug),
            },
        )


class _Versions(_Group):
    async def create(
        self,
        machine: str,
        code: bytes | str,
        *,
        filename: str | None = None,
        client_info: str = "",
        make_current: bool = False,
        xstate_major: int | None = None,
        index_selectors: dict[str, str] | None = None,
        gzip: bool = True,
    ) -> str:
        """The three-step create: provisional version, upload to its URL (no auth), finalize.
        ``index_selectors`` maps the machine's index names to JSONPaths into the context (those
        left out are inherited from the current version)."""
        provisional = await self.client.request("POST", f"/machines/{machine}/v" + ("?gzip" if gzip else ""))
        await self.client.upload(provisional, code, filename or f"{machine}.js", gzip)
        body: dict[str, Any] = {"clientInfo": client_info, "makeCurrent": make_current}
        if xstate_major is not None:
            body["xstateMajor"] = xstate_major
        if index_selectors is not None:
            body["indexSelectors"] = index_selectors
        finalized = await self.client.request("PUT", f"/machines/{machine}/v/{provisional['machineVersionId']}", body)
        return str(finalized["machineVersionId"])

    async def list(self, machine: str) -> Items:
        return [version async for version in self.client.pages(f"/machines/{machine}/v", "versions")]


class _Migrations(_Group):
    async def create(
        self,
        machine: str,
        from_version: str,
        to_version: str,
        code: bytes | str,
        *,
        filename: str | None = None,
        gzip: bool = True,
    ) -> str:
        """The three-step create of a migration module (``upgradeState`` and ``upgradeContext``)
        from one version of the machine to another; returns the migration's id."""
        provisional = await self.client.request(
            "POST",
            f"/machines/{machine}/migrations" + ("?gzip" if gzip else ""),
            {"fromMachineVersionId": from_version, "toMachineVersionId": to_version},
        )
        await self.client.upload(provisional, code, filename or f"{machine}-migration.js", gzip)
        signed = provisional["machineVersionMigrationId"]
        finalized = await self.client.request("PUT", f"/machines/{machine}/migrations/{signed}")
        return str(finalized["machineVersionMigrationId"])


class _Instances(_Group):
    async def create(self, machine: str, slug: str, *, context: JSON = None, version_id: str | None = None) -> JSON:
        body: dict[str, Any] = {"slug": slug}
        if context is not None:
            body["context"] = context
        if version_id is not None:
            body["machineVersionId"] = version_id
        return await self.client.request("POST", f"/machines/{machine}", body)

    async def get(self, machine: str, instance: str) -> JSON:
        return await self.client.request("GET", f"/machines/{machine}/i/{instance}")

    async def get_or_create(self, machine: str, instance: str, *, context: JSON = None) -> JSON:
        """As the official client: GET; on 404 create; on 409 (created meanwhile) GET again."""
        try:
            return await self.get(machine, instance)
        except NotFoundError:
            pass
        try:
            return await self.create(machine, instance, context=context)
        except ConflictError:
            return await self.get(machine, instance)

    async def send_event(self, machine: str, instance: str, event: str | dict[str, Any]) -> JSON:
        return await self.client.request("POST", f"/machines/{machine}/i/{instance}/events", {"event": event})

    async def list(self, machine: str) -> Items:
        return [item async for item in self.client.pages(f"/machines/{machine}/i", "instances")]

    async def query(
        self,
        machine: str,
        index: str,
        *,
        op: str | None = None,
        value: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> Items:
        """Instances by index value (``[{indexValue, slug}]``), in index order; ``op`` (eq, ne, gt,
        gte, lt, lte) and ``value`` filter together. ``limit`` caps the whole result."""
        if (op is None) != (value is None):
            raise ValueError("op and value go together")
        params = {"dir": "desc" if descending else "asc"}
        if op is not None and value is not None:
            params.update(op=op, value=value)
        if limit is not None:
            params["limit"] = str(min(limit, 1000))
        found: Items = []
        async for item in self.client.pages(f"/machines/{machine}/indexes/{index}/query", "instances", params):
            found.append(item)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def transitions(self, machine: str, instance: str) -> Items:
        path = f"/machines/{machine}/i/{instance}/events"
        return [item async for item in self.client.pages(path, "transitions")]

    async def admin(self, machine: str, instance: str) -> JSON:
        return await self.client.request("GET", f"/machines/{machine}/i/{instance}/admin")

    async def set_status(self, machine: str, instance: str, status: str) -> None:
        await self.client.request("PUT", f"/machines/{machine}/i/{instance}/status", {"status": status})

    async def set_desired_version(self, machine: str, instance: str, version_id: str) -> None:
        await self.client.request("PUT", f"/machines/{machine}/i/{instance}/v", {"targetMachineVersionId": version_id})

    async def delete(self, machine: str, instance: str) -> None:
        await self.client.request(
            "DELETE",
            f"/machines/{machine}/i/{instance}",
            {
                "dangerDataWillBeDeletedForever": True,
                "hmacSha256OfMachineInstanceNameWithMachineNameKey": _confirmation(machine, instance),
            },
        )

    async def subscribe(self, machine: str, instance: str, *, reconnect_delay_s: float = 0.5) -> AsyncIterator[JSON]:
        """Every state of the instance from now on: the current one first, then one per transition.

        Reconnects when the socket closes and re-subscribes (updates committed meanwhile are not
        replayed; the current state comes again, as with the official client).
        """
        url = self.client.api_host.replace("http", "ws", 1) + "/rt"
        params = {"token": await self.client.token() or ""}
        if self.client.org_id:
            params["x-statebacked-org-id"] = self.client.org_id
        if self.client.act_as is not None:  # a statehost extension (docs/realtime.md)
            params["x-statebacked-act"] = json.dumps(self.client.act_as)
        request_id = secrets.token_hex(6)
        newest = -1
        while True:
            try:
                async with self.client.session.ws_connect(url, params=params) as ws:
                    await ws.send_json(
                        {
                            "type": "subscribe-to-instance",
                            "requestId": request_id,
                            "machineName": machine,
                            "machineInstanceName": instance,
                        }
                    )
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(message.data)
                        if data.get("type") == "error" and data.get("requestId") == request_id:
                            raise error_for(int(data.get("status", 500)), data.get("code"), "subscription refused")
                        if data.get("type") == "instance-update" and data["ts"] > newest:
                            newest = data["ts"]
                            yield data
            except (aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(reconnect_delay_s)


class _Logs(_Group):
    async def retrieve(
        self,
        since: datetime.datetime | str,
        *,
        to: datetime.datetime | None = None,
        machine: str | None = None,
        instance: str | None = None,
        version: str | None = None,
    ) -> JSON:
        params = {"from": since if isinstance(since, str) else iso(since)}
        for key, value in (
            ("to", iso(to) if to else None),
            ("machine", machine),
            ("instance", instance),
            ("version", version),
        ):
            if value:
                params[key] = value
        return await self.client.request("GET", "/logs", params=params)

    async def watch(
        self,
        since: datetime.datetime,
        *,
        machine: str | None = None,
        instance: str | None = None,
        version: str | None = None,
        idle_s: float = 30.0,
    ) -> AsyncIterator[JSON]:
        """Every log line from ``since`` on, as it comes: continues from ``maxTimestamp``, and sleeps
        ``idle_s`` when nothing is new (the server then echoes ``from``)."""
        cursor = iso(since)
        while True:
            page = await self.retrieve(cursor, machine=machine, instance=instance, version=version)
            for entry in page["logs"]:
                yield entry
            if not page["logs"] and page["maxTimestamp"] == cursor:
                await asyncio.sleep(idle_s)
            cursor = page["maxTimestamp"]
