"""The HTTP API mapper (wire-api 3.16) through real HTTP requests on loopback: a webhook machine
that checks an HMAC signature with crypto.subtle, creates its instance on the first call, answers
through its responseMapper, and the failure modes (bad signature, unknown slug, a machine without a
mapper, a handler returning nonsense, a throwing responseMapper, allowWrite saying no)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from client import StatehostClient
from tests.server.api_support import Api

SECRET = "whsec_test"

WEBHOOK = {
    4: """import { createMachine, assign } from "xstate";
const pay = assign({ paid: (ctx, e) => ctx.paid + e.amount });
const covers = (ctx, e) => ctx.paid + e.amount >= 100;
const config = { predictableActionArguments: true };
const payment = [{ target: "settled", cond: covers, actions: pay }, { actions: pay }];""",
    5: """import { createMachine, assign } from "npm:xstate@5";
const pay = assign({ paid: ({ context, event }) => context.paid + event.amount });
const covers = ({ context, event }) => context.paid + event.amount >= 100;
const config = {};
const payment = [{ target: "settled", guard: covers, actions: pay }, { actions: pay }];""",
}
BODY = """
export const allowRead = () => true;
export const allowWrite = ({ authContext }) => authContext.via === "webhook" && authContext.customer !== "banned";

async function verified(req) {
  const key = await crypto.subtle.importKey(
    "raw", new TextEncoder().encode("SECRET"), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(req.body)));
  const hex = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== req.headers["x-signature"]) throw new Error("bad signature");
  return JSON.parse(req.body);
}

export const httpApiMapper = {
  payments: {
    async handler(req) {
      const payload = await verified(req);
      console.log("payment for " + payload.customer);
      return {
        machineInstanceName: payload.customer,
        event: { type: "payment", amount: payload.amount },
        authContext: { via: "webhook", customer: payload.customer },
        initialContext: { paid: 0 },
      };
    },
    responseMapper({ state, context }) {
      return { statusCode: 202, headers: { "x-state": String(state) }, body: { state, paid: context.paid } };
    },
  },
  status: {
    handler(req) {
      return { machineInstanceName: req.query.customer, event: "ping", authContext: { via: "webhook" } };
    },
    responseMapper() { throw new Error("no answer for you"); },
  },
  nonsense: { handler: () => ({ machineInstanceName: "../../etc", event: 42 }) },
};

export default createMachine({
  ...config,
  id: "billing",
  context: { paid: 0 },
  initial: "open",
  states: {
    open: { on: { payment, ping: {} } },
    settled: { on: { ping: {} } },
  },
});
""".replace("SECRET", SECRET)


def signed(payload: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"content-type": "text/plain", "x-signature": signature}


@pytest.mark.parametrize("major", [4, 5])
async def test_a_signed_webhook_drives_its_instance(api: Api, admin: StatehostClient, major: int):
    await admin.machines.create("billing")
    await admin.versions.create("billing", (WEBHOOK[major] + BODY).encode(), filename="billing.ts", make_current=True)
    url = f"/http-api/{api.org_id}/machines/billing/payments"
    body, headers = signed({"customer": "acme", "amount": 40})
    async with api.client.post(url, data=body, headers=headers) as response:  # no bearer token
        assert response.status == 202, await response.text()
        assert response.headers["x-state"] == "open"
        assert await response.json() == {"state": "open", "paid": 40}
    body, headers = signed({"customer": "acme", "amount": 60})
    async with api.client.post(url, data=body, headers=headers) as response:
        assert response.status == 202 and await response.json() == {"state": "settled", "paid": 100}
    history = await admin.instances.transitions("billing", "acme")
    assert [t["event"]["type"] for t in history] == ["xstate.init", "payment", "payment"]
    logs = (await admin.logs.retrieve("2020-01-01T00:00:00.000Z", machine="billing"))["logs"]
    assert "payment for acme" in [e["log"] for e in logs]

    # A forged signature: the handler throws, nothing happens.
    body, headers = signed({"customer": "mallory", "amount": 1000})
    headers["x-signature"] = "0" * 64
    async with api.client.post(url, data=body, headers=headers) as response:
        assert response.status == 400
        error = await response.json()
        assert error["code"] == "http-handler-error" and "bad signature" in error["error"]
    assert "mallory" not in {i["slug"] for i in await admin.instances.list("billing")}
    # allowWrite still decides, with the handler's authContext.
    body, headers = signed({"customer": "banned", "amount": 1})
    async with api.client.post(url, data=body, headers=headers) as response:
        assert response.status == 403 and (await response.json())["code"] == "rejected-by-machine-authorizer"

    # No initialContext: an unknown instance is a 404; a throwing responseMapper answers 200 {"ok": true}.
    status_url = f"/http-api/{api.org_id}/machines/billing/status"
    async with api.client.get(status_url, params={"customer": "nobody"}) as response:
        assert response.status == 404
    async with api.client.get(status_url, params={"customer": "acme"}) as response:
        assert response.status == 200 and await response.json() == {"ok": True}
    async with api.client.post(f"/http-api/{api.org_id}/machines/billing/nonsense") as response:
        assert response.status == 422 and "machineInstanceName" in (await response.json())["error"]
    async with api.client.post(f"/http-api/{api.org_id}/machines/billing/missing") as response:
        assert response.status == 404 and "httpApiMapper.missing" in (await response.json())["error"]
    async with api.client.post("/http-api/org_nope/machines/billing/payments") as response:
        assert response.status == 404


async def test_a_machine_without_a_mapper_has_no_http_api(api: Api):
    await api.deploy("toggle")
    async with api.client.post(f"/http-api/{api.org_id}/machines/toggle/anything", data=b"{}") as response:
        assert response.status == 404 and (await response.json())["code"] == "not-found"
