"""Real-time fan-out: latency from a transition's commit to its delivery, and messages pushed per second.

    python -m bench.realtime_fanout [--quick]

Starts `statehost serve` as a subprocess on loopback, deploys the toggle machine, and for 1, 100 and
1,000 subscribers (one WebSocket each) sends events one after another. Latency = the time a
subscriber receives an update minus the update's ``ts`` (the commit time on the same clock).
Writes bench/results/realtime_fanout.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from .common import ROOT, free_port, machine_info, machine_line, percentile

RESULTS = ROOT / "bench" / "results" / "realtime_fanout.json"
TOGGLE = (ROOT / "fixtures" / "machines" / "toggle" / "v4" / "machine.ts").read_bytes()


async def _deploy(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    await session.post(f"{url}/machines", json={"slug": "toggle"}, headers=headers)
    async with session.post(f"{url}/machines/toggle/v?gzip", headers=headers) as response:
        provisional = await response.json()
    form = aiohttp.FormData()
    form.add_field("content-encoding", "gzip")
    form.add_field("file", gzip.compress(TOGGLE), filename="toggle.ts")
    async with session.post(provisional["codeUploadUrl"], data=form) as response:
        assert response.status == 204
    async with session.put(
        f"{url}/machines/toggle/v/{provisional['machineVersionId']}", json={"makeCurrent": True}, headers=headers
    ) as response:
        assert response.status == 200, await response.text()


async def _run(url: str, token: str, subscribers: int, events: int) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    latencies: list[float] = []
    instance = f"fan{subscribers}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await session.post(f"{url}/machines/toggle", json={"slug": instance}, headers=headers)
        sockets = []
        for n in range(subscribers):
            ws = await session.ws_connect(f"{url}/rt?token={token}")
            await ws.send_json(
                {
                    "type": "subscribe-to-instance",
                    "requestId": f"r{n}",
                    "machineName": "toggle",
                    "machineInstanceName": instance,
                }
            )
            sockets.append(ws)
        for ws in sockets:
            await ws.receive(timeout=30)  # the current state

        async def listen(ws: aiohttp.ClientWebSocketResponse) -> None:
            for _ in range(events):
                message = json.loads((await ws.receive(timeout=60)).data)
                latencies.append(time.time() * 1000 - message["ts"])

        listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
        started = time.perf_counter()
        for _ in range(events):
            async with session.post(
                f"{url}/machines/toggle/i/{instance}/events", json={"event": "toggle"}, headers=headers
            ) as response:
                assert response.status == 200
        await asyncio.gather(*listeners)
        elapsed = time.perf_counter() - started
        for ws in sockets:
            await ws.close()
    ordered = sorted(latencies)
    return {
        "subscribers": subscribers,
        "events": events,
        "median_ms": statistics.median(ordered),
        "p99_ms": percentile(ordered, 0.99),
        "messages_per_s": len(ordered) / elapsed,
    }


async def main_async(quick: bool) -> list[dict[str, Any]]:
    data = Path(tempfile.mkdtemp(prefix="statehost-fanout-"))
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            if (data / "admin.json").exists():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        credentials = json.loads((data / "admin.json").read_text())
        url, token = credentials["url"], credentials["adminToken"]
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        async with aiohttp.ClientSession() as session:
            await _deploy(session, url, headers)
        sizes = (1, 10) if quick else (1, 100, 1000)
        return [await _run(url, token, n, 5 if quick else 20) for n in sizes]
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 10 subscribers: checks that it works")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args.quick))
    machine = machine_info()
    print(machine_line(machine))
    print(f"{'subscribers':>12}{'median ms':>12}{'p99 ms':>10}{'messages/s':>13}")
    for r in rows:
        print(f"{r['subscribers']:>12}{r['median_ms']:>12.1f}{r['p99_ms']:>10.1f}{r['messages_per_s']:>13.0f}")
    if not args.quick:
        RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
