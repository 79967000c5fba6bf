"""The statehost CLI's client commands against a real server on loopback: success, --json shapes,
bad flags, missing credentials and server errors (exit code and one-line message)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from server.cli import main
from tests.server.api_support import GUARDED, TOGGLE, Api


class Cli:
    def __init__(self, api: Api, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        self.url = str(api.client.make_url("")).rstrip("/")
        self.api = api
        self.capsys = capsys
        self.config = config

    async def __call__(self, *argv: str, login: bool = True) -> tuple[int, str, str]:
        """Run one command in a thread (the server runs on this loop); exit code, stdout, stderr."""
        extra = ["--config", str(self.config)]
        self.capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, [*argv, *extra] if login else list(argv))
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
async def cli(api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    runner = Cli(api, capsys, tmp_path / "home" / ".statehost" / "config.json")
    credentials = tmp_path / "admin.json"
    credentials.write_text(json.dumps({"url": runner.url, "adminToken": api.admin_token, "orgId": api.org_id}))
    code, out, _ = await runner(
        "login", "--credentials", str(credentials), "--home", str(tmp_path / "home"), login=False
    )
    assert code == 0 and str(runner.config) in out
    assert os.stat(runner.config).st_mode & 0o777 == 0o600
    return runner


async def test_quickstart_flow(cli: Cli, tmp_path: Path):
    source = tmp_path / "toggle.ts"
    source.write_bytes(TOGGLE)
    code, out, err = await cli("machines", "create", "--machine", "toggle", "--node", str(source), "--json")
    assert code == 0, err
    assert json.loads(out)["slug"] == "toggle" and json.loads(out)["machineVersionId"]
    code, out, _ = await cli("instances", "create", "-m", "toggle", "-i", "i1", "--json")
    assert code == 0 and json.loads(out)["state"] == "inactive"
    code, out, _ = await cli("instances", "send-event", "-m", "toggle", "-i", "i1", "--event", "toggle")
    assert code == 0 and "state: active" in out.splitlines() and 'publicContext: {"toggleCount":1}' in out
    code, out, _ = await cli(
        "instances", "send-event", "-m", "toggle", "-i", "i1", "-e", '{"type": "toggle"}', "--json"
    )
    assert code == 0 and json.loads(out)["state"] == "inactive"
    code, out, _ = await cli("instances", "list-transitions", "-m", "toggle", "-i", "i1", "--json")
    assert [t["event"]["type"] for t in json.loads(out)] == ["xstate.init", "toggle", "toggle"]
    code, out, _ = await cli("machines", "list")
    header, row = out.splitlines()
    assert header.split()[0] == "slug" and row.split()[0] == "toggle"
    code, out, _ = await cli("machine-versions", "list", "-m", "toggle", "--json")
    assert code == 0 and len(json.loads(out)) == 1
    code, out, _ = await cli("instances", "delete", "-m", "toggle", "-i", "i1")
    assert (code, out.strip()) == (0, "ok")


async def test_auth_context_reaches_the_authorizers(cli: Cli, tmp_path: Path):
    source = tmp_path / "guarded.js"
    source.write_bytes(GUARDED)
    assert (await cli("machines", "create", "-m", "guarded", "--js", str(source)))[0] == 0
    code, _, err = await cli("instances", "create", "-m", "guarded", "-i", "g1", "--auth-context", '{"sub": "someone"}')
    assert code == 1 and "rejected-by-machine-authorizer" in err and len(err.strip().splitlines()) == 1
    code, out, _ = await cli(
        "instances", "create", "-m", "guarded", "-i", "g1", "--auth-context", '{"sub": "u-allowed"}'
    )
    assert code == 0 and "state: a" in out.splitlines()


async def test_errors(cli: Cli, tmp_path: Path):
    code, _, err = await cli("machines", "get", "-m", "nope")
    assert code == 1 and err.startswith("statehost: ") and "404" in err
    code, _, err = await cli("instances", "send-event", "-m", "toggle", "-i", "x", "--event", "{not json")
    assert code == 2 and "not JSON" in err
    code, _, err = await cli("machines", "create", "-m", "m", "--node", str(tmp_path / "missing.ts"))
    assert code == 2 and "missing.ts" in err
    assert (await cli("machines", "get", "-m", "m"))[0] == 1  # nothing was created
    code, _, err = await cli("machines", "create")
    assert code == 2 and "--machine" in err
    # No credentials anywhere: a usage error that says how to log in.
    code, _, err = await cli("machines", "list", "--config", str(tmp_path / "none.json"), login=False)
    assert code == 2 and "statehost login" in err
    # A server that is not there.
    code, _, err = await cli("machines", "list", "--api-url", "http://127.0.0.1:9", "--token", "t", login=False)
    assert code == 2 and "cannot reach the API" in err
    # A bad token is the server's refusal, named.
    code, _, err = await cli("machines", "list", "--token", "not-a-jwt")
    assert code == 1 and "missing-user" in err


async def test_keys_tokens_logs_orgs_and_instance_admin(cli: Cli, tmp_path: Path):
    source = tmp_path / "guarded.js"
    source.write_bytes(GUARDED)
    code, out, _ = await cli("machines", "create", "-m", "guarded", "--js", str(source), "--json")
    version = json.loads(out)["machineVersionId"]
    code, out, err = await cli("keys", "create", "--name", "backend", "--use", "production", "--json")
    assert code == 0, err
    key = json.loads(out)
    code, out, _ = await cli("keys", "list")
    assert key["id"] in out and out.splitlines()[0].split()[0] == "id"
    # A locally signed token, used as the CLI's own credential: the authorizer sees its claims.
    code, out, _ = await cli(
        "tokens", "generate", "-k", key["id"], "-s", key["key"], "-c", '{"sub": "u-allowed"}', "--json"
    )
    token = json.loads(out)["token"]
    code, out, err = await cli("instances", "create", "-m", "guarded", "-i", "g1", "--token", token, "--json")
    assert code == 0 and json.loads(out)["state"] == "a", err
    code, _, err = await cli("tokens", "generate", "-k", key["id"], "-s", key["key"], "-c", "[1]")
    assert code == 2 and "JSON object" in err
    code, out, _ = await cli("instances", "set-status", "-m", "guarded", "-i", "g1", "--status", "paused")
    assert (code, out.strip()) == (0, "ok")
    code, _, err = await cli("instances", "send-event", "-m", "guarded", "-i", "g1", "-e", "go", "--token", token)
    assert code == 1 and "409" in err
    assert (await cli("instances", "set-status", "-m", "guarded", "-i", "g1", "-s", "running"))[0] == 0
    assert (await cli("instances", "set-desired-version", "-m", "guarded", "-i", "g1", "-v", version))[0] == 0
    code, _, err = await cli("instances", "set-status", "-m", "guarded", "-i", "g1", "-s", "stopped")
    assert code == 2 and "invalid choice" in err
    code, out, _ = await cli("logs", "get", "--from", "2020-01-01T00:00:00Z", "-m", "guarded", "--json")
    assert code == 0 and "maxTimestamp" in json.loads(out)
    code, _, err = await cli("logs", "get", "--from", "yesterday")
    assert code == 1 and "from" in err
    code, out, _ = await cli("orgs", "list", "--json")
    assert code == 0 and cli.api.org_id in {o["id"] for o in json.loads(out)}
    assert (await cli("keys", "delete", "-k", key["id"]))[0] == 0
    assert key["id"] not in (await cli("keys", "list"))[1]


async def test_instances_watch_streams_each_committed_transition(cli: Cli, tmp_path: Path):
    source = tmp_path / "toggle.ts"
    source.write_bytes(TOGGLE)
    assert (await cli("machines", "create", "-m", "toggle", "--node", str(source)))[0] == 0
    assert (await cli("instances", "create", "-m", "toggle", "-i", "w1"))[0] == 0
    watch = asyncio.create_task(cli("instances", "watch", "-m", "toggle", "-i", "w1", "--count", "3", "--json"))
    for _ in range(200):  # toggle until the watcher has seen its three updates
        if watch.done():
            break
        await cli.api.call("POST", "/machines/toggle/i/w1/events", body={"event": "toggle"})
        await asyncio.sleep(0.05)
    code, out, err = await asyncio.wait_for(watch, 10)
    assert code == 0, err
    states = [json.loads(line)["state"] for line in out.splitlines()]
    # The current state, then one line per transition: a toggle alternates, never repeats.
    assert len(states) == 3 and states[0] != states[1] != states[2]
