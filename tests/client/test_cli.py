"""The statehost CLI's client commands against a real server on loopback: success, --json shapes,
bad flags, missing credentials and server errors (exit code and one-line message)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path

import jwt
import pytest

from client.cli import _Progress, _Style
from client.cli import main as client_main
from server.cli import main
from tests.server.api_support import GUARDED, TOGGLE, Api
from tests.server.test_indexes import PEOPLE


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
    assert code == 2 and "not an instant" in err
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
    deadline = asyncio.get_running_loop().time() + 60
    while not watch.done() and asyncio.get_running_loop().time() < deadline:
        # toggle until the watcher (subscribed at some point) has seen its three updates
        await cli.api.call("POST", "/machines/toggle/i/w1/events", body={"event": "toggle"})
        await asyncio.sleep(0.05)
    code, out, err = await asyncio.wait_for(watch, 60)
    assert code == 0, err
    states = [json.loads(line)["state"] for line in out.splitlines()]
    # The current state, then one line per transition: a toggle alternates, never repeats.
    assert len(states) == 3 and states[0] != states[1] != states[2]


async def test_index_selectors_and_query(cli: Cli, tmp_path: Path):
    source = tmp_path / "people.ts"
    source.write_bytes(PEOPLE)
    code, _, err = await cli(
        "machines", "create", "-m", "people", "--index", "email", "--node", str(source),
        "--index-selectors", '{"email": "$.email"}',
    )  # fmt: skip
    assert code == 0, err
    for name, email in (("p1", "a@x"), ("p2", "b@x"), ("p3", "c@x")):
        assert (await cli("instances", "create", "-m", "people", "-i", name, "--context", f'{{"email": "{email}"}}'))[
            0
        ] == 0
    code, out, _ = await cli(
        "instances", "query", "-m", "people", "--index", "email", "--op", "eq", "--value", "b@x", "--json"
    )
    assert code == 0 and json.loads(out) == [{"indexValue": "b@x", "slug": "p2"}]
    code, out, _ = await cli("instances", "query", "-m", "people", "--index", "email", "--sort", "desc", "--limit", "2")
    header, *rows = out.splitlines()
    assert header.split() == ["indexValue", "slug"] and [r.split()[1] for r in rows] == ["p3", "p2"]
    code, out, _ = await cli(
        "instances", "query", "-m", "people", "--index", "email", "--op", "gt", "--value", "a@x", "--json"
    )
    assert [i["slug"] for i in json.loads(out)] == ["p2", "p3"]
    code, _, err = await cli("instances", "query", "-m", "people", "--index", "email", "--op", "eq")
    assert code == 2 and "--op and --value go together" in err
    code, _, err = await cli("instances", "query", "-m", "people", "--index", "phone")
    assert code == 1 and "404" in err and "phone" in err
    code, _, err = await cli(
        "machine-versions", "create", "-m", "people", "--node", str(source), "--index-selectors", "["
    )
    assert code == 2 and "not JSON" in err


async def test_identity_and_token_providers_make_exchange_work(cli: Cli, tmp_path: Path):
    source = tmp_path / "guarded.js"
    source.write_bytes(GUARDED)
    assert (await cli("machines", "create", "-m", "guarded", "--js", str(source)))[0] == 0
    key = json.loads((await cli("keys", "create", "-n", "exchange", "--use", "production", "--json"))[1])
    secret = "idp-secret-of-at-least-32-bytes!!"
    code, out, err = await cli(
        "identity-providers", "upsert", "--audience", "my-app", "--issuer", "https://idp.example/",
        "--algorithm", "HS256", "--key", secret, "--mapping", '{"sub.$": "$.sub"}',
    )  # fmt: skip
    assert (code, out.strip()) == (0, "ok"), err
    code, out, err = await cli(
        "token-providers", "upsert", "--service", "app", "--key", key["id"], "--mapping", '{"sub.$": "$.sub"}'
    )
    assert code == 0, err
    # What the CLI configured is what an exchange uses: an IdP token becomes a statehost token.
    now = int(time.time())
    subject = jwt.encode(
        {"aud": "my-app", "iss": "https://idp.example/", "sub": "u-allowed", "exp": now + 600}, secret, "HS256"
    )
    status, body = await cli.api.call(
        "POST", "/tokens", headers={}, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": f"https://tokens.statebacked.dev/{cli.api.org_id}/app",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token": subject,
        },
    )  # fmt: skip
    assert status == 200, body
    code, out, err = await cli("instances", "create", "-m", "guarded", "-i", "g1", "--token", body["access_token"])
    assert code == 0 and "state: a" in out.splitlines(), err
    # Presets, listing, and deleting.
    code, _, err = await cli(
        "identity-providers",
        "upsert-supabase",
        "--project",
        "abcd",
        "--secret",
        secret,
        "--mapping",
        '{"sub.$": "$.sub"}',
    )
    assert code == 0, err
    assert (await cli("identity-providers", "upsert-auth0", "-d", "acme.eu.auth0.com", "--mapping", "{}"))[0] == 0
    code, out, _ = await cli("identity-providers", "list", "--json")
    issuers = {idp.get("iss") for idp in json.loads(out)}
    assert {"https://idp.example/", "https://abcd.supabase.co/auth/v1", "https://acme.eu.auth0.com/"} <= issuers
    assert all("key" not in idp for idp in json.loads(out))
    code, _, err = await cli("identity-providers", "upsert", "--algorithm", "HS256", "--key", "k", "--mapping", "{}")
    assert code == 2 and "--audience, --issuer" in err
    code, _, err = await cli("identity-providers", "upsert", "--issuer", "x", "--algorithm", "HS256", "--mapping", "{}")
    assert code == 2 and "--key" in err  # one of --key, --base64-key, --jwks-url is required
    assert (
        await cli("identity-providers", "delete", "--issuer", "https://abcd.supabase.co/auth/v1", "-a", "authenticated")
    )[0] == 0
    code, out, _ = await cli("identity-providers", "list")
    assert "supabase" not in out and "idp.example" in out
    code, out, _ = await cli("token-providers", "list")
    assert out.splitlines()[0].split()[0] == "service" and "app" in out
    assert (await cli("token-providers", "delete", "--service", "app"))[0] == 0
    services = {p["service"] for p in json.loads((await cli("token-providers", "list", "--json"))[1])}
    assert "app" not in services and "anonymous-statebacked-dev" in services


LOGGER = b"""import { createMachine } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "logger", predictableActionArguments: true, initial: "idle",
  states: { idle: { on: { say: { actions: (_, e) => { console.log("said " + e.word); console.error("warned " + e.word); } } } } },
});
"""


async def test_logs_watch_follows_new_lines(cli: Cli, tmp_path: Path):
    source = tmp_path / "logger.js"
    source.write_bytes(LOGGER)
    assert (await cli("machines", "create", "-m", "logger", "--js", str(source)))[0] == 0
    assert (await cli("instances", "create", "-m", "logger", "-i", "l1"))[0] == 0
    await cli.api.call("POST", "/machines/logger/i/l1/events", body={"event": {"type": "say", "word": "one"}})
    watch = asyncio.create_task(cli("logs", "watch", "--from", "5m", "-m", "logger", "--poll", "0.05", "--count", "4"))
    # Usually the watcher has printed the first two lines and is polling by now; if it starts later,
    # it reads all four from --from: the output is the same either way.
    await asyncio.sleep(0.3)
    await cli.api.call("POST", "/machines/logger/i/l1/events", body={"event": {"type": "say", "word": "two"}})
    code, out, err = await asyncio.wait_for(watch, 60)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and [line.split(" ", 3)[3] for line in lines] == [
        "said one", "warned one", "said two", "warned two"
    ]  # fmt: skip
    assert all(line.split()[1] == "logger/l1" for line in lines)
    assert [line.split()[2] for line in lines] == ["stdout", "stderr", "stdout", "stderr"]
    code, out, _ = await cli("logs", "get", "--from=-5m", "-i", "l1")
    assert code == 0 and out.splitlines() == lines
    code, out, _ = await cli("logs", "get", "--from", "5m", "--to", "4m")
    assert code == 0 and "(none)" in out


async def test_orgs_create_and_default(cli: Cli, tmp_path: Path):
    code, out, err = await cli("orgs", "create", "--name", "acme", "--json")
    assert code == 0, err
    acme = json.loads(out)["id"]
    code, out, _ = await cli("orgs", "default", "get", "--json")
    assert json.loads(out) == {"orgId": cli.api.org_id}
    assert (await cli("orgs", "default", "set", "--org", acme))[0] == 0
    assert json.loads(cli.config.read_text())["orgId"] == acme
    assert (cli.config.parent.parent / ".smply" / "default-org").read_text() == acme  # smply follows
    code, out, _ = await cli("machines", "list")  # now in the new, empty org
    assert (code, out.strip()) == (0, "(none)")
    code, out, _ = await cli("orgs", "list", "--json")
    assert {cli.api.org_id, acme} <= {o["id"] for o in json.loads(out)}
    code, _, err = await cli("orgs", "default", "set")
    assert code == 2 and "--org" in err


def test_colour_only_on_terminals(monkeypatch: pytest.MonkeyPatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert _Style(Terminal())("x", "1") == "\033[1mx\033[0m"
    assert _Style(io.StringIO())("x", "1") == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert _Style(Terminal())("x", "1") == "x"
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert _Style(io.StringIO())("x", "1") == "\033[1mx\033[0m"


async def test_progress_shows_on_slow_calls_and_erases_itself():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    async with _Progress("uploading toggle.ts", stream=tty, delay=0.01, interval=0.01):
        await asyncio.sleep(0.1)
    drawn = tty.getvalue()
    assert "uploading toggle.ts" in drawn and "s" in drawn.split("uploading toggle.ts")[1]
    assert drawn.endswith("\r\033[K")  # the line is cleared when the call returns
    tty = Terminal()
    async with _Progress("quick", stream=tty, delay=0.5):
        pass
    assert tty.getvalue() == ""  # fast calls print nothing extra
    pipe = io.StringIO()
    async with _Progress("piped", stream=pipe, delay=0, interval=0.01):
        await asyncio.sleep(0.05)
    assert pipe.getvalue() == ""  # never on a pipe


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]):
    from client.cli import _GROUPS, _TABLE

    for group, name, *_ in _TABLE:
        with pytest.raises(SystemExit) as exit_:
            client_main([group, name, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and "example:\n  statehost " in out, (group, name)
    assert {group for group, *_ in _TABLE} == set(_GROUPS)


async def test_migrations_create_and_set_desired_version(cli: Cli, tmp_path: Path):
    v1_file, v2_file, mig_file = tmp_path / "v1.ts", tmp_path / "v2.ts", tmp_path / "migration.ts"
    v1_file.write_bytes(TOGGLE)
    v2_file.write_bytes(TOGGLE.replace(b'"inactive"', b'"off"').replace(b"inactive:", b"off:"))
    mig_file.write_text(
        "export const upgradeState = (path: string[]) => path.map((k) => (k === 'inactive' ? 'off' : k));\n"
        "export const upgradeContext = (_o: string[][], _n: string[][], ctx: object) => ctx;\n"
    )
    v1 = json.loads((await cli("machines", "create", "-m", "toggle", "--node", str(v1_file), "--json"))[1])
    code, out, err = await cli("machine-versions", "create", "-m", "toggle", "--node", str(v2_file), "--json")
    assert code == 0, err
    v2 = json.loads(out)["machineVersionId"]
    code, out, err = await cli(
        "migrations", "create", "-m", "toggle", "--from", v1["machineVersionId"], "--to", v2, "--node", str(mig_file)
    )
    assert code == 0 and out.startswith("machineVersionMigrationId: mig_"), err
    assert (await cli("instances", "create", "-m", "toggle", "-i", "i1"))[0] == 0
    assert (await cli("instances", "set-desired-version", "-m", "toggle", "-i", "i1", "-v", v2))[0] == 0
    code, out, _ = await cli("instances", "send-event", "-m", "toggle", "-i", "i1", "-e", "toggle", "--json")
    assert code == 0 and json.loads(out)["state"] == "active"
    code, out, _ = await cli("instances", "list-transitions", "-m", "toggle", "-i", "i1", "--json")
    assert [(t["state"], t["event"]["type"]) for t in json.loads(out)][-2:] == [
        ("off", "statebacked.upgrade"), ("active", "toggle")
    ]  # fmt: skip
    code, _, err = await cli("migrations", "create", "-m", "toggle", "--from", v2, "--to", v2, "--js", str(mig_file))
    assert code == 1 and "from one version to another" in err
