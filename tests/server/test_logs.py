"""GET /logs: the contract logs.watch and smply logs watch depend on (wire-api 5)."""

from __future__ import annotations

import re
from urllib.parse import quote

from tests.server.api_support import Api

MACHINE = b"""import { createMachine } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({ id: "loud", predictableActionArguments: true, initial: "idle", states: { idle: { on: {
  say: { actions: (c, e) => { console.log("said " + e.n); console.error("warned " + e.n); } },
  burst: { actions: (c, e) => { for (let i = 0; i < e.count; i++) console.log("burst " + e.tag + " " + i); } },
} } } });
"""
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
EPOCH = "2020-01-01T00:00:00.000Z"


async def _page(api: Api, since: str, **filters: str):
    query = "&".join([f"from={quote(since)}", *(f"{k}={quote(v)}" for k, v in filters.items())])
    status, body = await api.call("GET", f"/logs?{query}")
    assert status == 200, body
    return body


async def _watch(api: Api, since: str, **filters: str) -> list[str]:
    """What logs.watch does: continue from maxTimestamp until a page is empty and echoes from."""
    lines: list[str] = []
    for _ in range(100):
        body = await _page(api, since, **filters)
        lines += [entry["log"] for entry in body["logs"]]
        if not body["logs"]:
            assert body["maxTimestamp"] == since  # the echo that makes the client sleep, not spin
            return lines
        assert ISO.match(body["maxTimestamp"])
        since = body["maxTimestamp"]
    raise AssertionError("the logs never ran dry")


async def test_log_entries_and_their_fields(api: Api):
    version = await api.deploy("loud", MACHINE, filename="loud.ts")
    await api.call("POST", "/machines/loud", body={"slug": "i1"})
    await api.call("POST", "/machines/loud/i/i1/events", body={"event": {"type": "say", "n": 1}})
    body = await _page(api, EPOCH, machine="loud")
    entries = {e["log"]: e for e in body["logs"]}
    assert entries["said 1"]["outputType"] == "stdout" and entries["warned 1"]["outputType"] == "stderr"
    entry = entries["said 1"]
    assert entry["orgId"] == api.org_id and entry["machineName"] == "loud" and entry["instanceName"] == "i1"
    assert entry["machineVersionId"] == version and ISO.match(entry["timestamp"])
    assert body["maxTimestamp"] == max(e["timestamp"] for e in body["logs"])
    assert (await _page(api, EPOCH, machine="other"))["logs"] == []
    assert (await _page(api, EPOCH, instance="i1", version=version))["logs"]
    status, error = await api.call("GET", "/logs")
    assert status == 400 and error["parameter"] == "from"
    status, error = await api.call("GET", "/logs?from=yesterday")
    assert status == 400 and error["parameter"] == "from"


async def test_watching_sees_every_line_once_across_pages(api: Api):
    await api.deploy("loud", MACHINE, filename="loud.ts")
    await api.call("POST", "/machines/loud", body={"slug": "i1"})
    expected = []
    for n in range(60):
        await api.call("POST", "/machines/loud/i/i1/events", body={"event": {"type": "say", "n": n}})
        expected += [f"said {n}", f"warned {n}"]
    seen = await _watch(api, EPOCH, machine="loud")
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen)) == 120
    # more lines later: a watcher that continues from where it stopped sees only the new ones
    last = (await _page(api, EPOCH, machine="loud"))["maxTimestamp"]
    tail = await _watch(api, max(last, (await _page(api, last))["maxTimestamp"]), machine="loud")
    assert tail == []


async def test_a_millisecond_is_never_split_across_pages(api: Api):
    await api.deploy("loud", MACHINE, filename="loud.ts")
    await api.call("POST", "/machines/loud", body={"slug": "i1"})
    # 150 lines committed together share one timestamp: they come in one page, not 100 + 50.
    await api.call("POST", "/machines/loud/i/i1/events", body={"event": {"type": "burst", "count": 150, "tag": "a"}})
    body = await _page(api, EPOCH, machine="loud")
    assert len(body["logs"]) == 150
    assert len({e["timestamp"] for e in body["logs"]}) == 1
    assert (await _page(api, body["maxTimestamp"], machine="loud"))["logs"] == []
