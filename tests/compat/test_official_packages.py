"""Interop with the official, unmodified State Backed packages, against a real `statehost serve`.

smply 0.1.18 deploys the quickstart machine and drives an instance; @statebacked/client 0.1.37 and
@statebacked/token 0.2.0 then run tests/compat/quickstart.mjs (anonymous sessions, getOrCreate,
sendEvent, a denied write, key-signed tokens, token exchange with a custom identity provider,
version create with makeCurrent, list/get/admin/delete). See tests/compat/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import free_port
from tests.support import need_tool, which_or_need

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SMPLY = HERE / "node_modules" / ".bin" / "smply"

pytestmark = [pytest.mark.node, pytest.mark.slow]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real `statehost serve`, on SQLite and on PostgreSQL (a database of the run's server)."""
    which_or_need("node", "node is not on PATH (install Node.js 20 or later)")
    if not SMPLY.exists():
        need_tool("the pinned npm packages", f"no {SMPLY} (make setup installs them)")
    data = tmp_path_factory.mktemp("data")
    port = free_port()
    log = (data / "server.log").open("w")
    database = []
    if request.param == "postgres":
        database = ["--database-url", request.getfixturevalue("pg_cluster").create_database(f"compat_{port}")]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)),
            *("--data-dir", str(data), *database),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (data / "server.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {(data / 'server.log').read_text()}")
            time.sleep(0.05)
        credentials = json.loads((data / "admin.json").read_text())
        home = tmp_path_factory.mktemp("home")
        subprocess.run(
            [sys.executable, "-m", "server", "login", "--credentials", str(data / "admin.json"), "--home", str(home)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        yield {**credentials, "home": str(home)}
    finally:
        process.terminate()
        try:
            assert process.wait(30) == 0, "the server did not stop cleanly on SIGTERM"
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


def smply(server: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(SMPLY), "--api-url", server["url"], *args],
        cwd=HERE,
        env={**os.environ, "HOME": server["home"]},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"smply {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def first_json(text: str):
    return json.loads(text[text.index("{") :]) if text.strip()[:1] != "[" else json.loads(text)


def test_smply_and_the_official_client_work_unmodified(server: dict[str, str]):
    # smply bundles toggle.ts locally (XState inlined) and uploads it through our upload URL.
    created = smply(server, "machines", "create", "--machine", "toggle", "--node", "toggle.ts")
    assert "toggle" in created or created.strip() == "" or "{" in created
    listed = json.loads(smply(server, "machines", "list"))  # smply prints the API's slug as "name"
    assert [m["name"] for m in listed] == ["toggle"] and listed[0]["currentVersion"]["clientInfo"] == "0.0.1"
    instance = first_json(
        smply(
            server, "instances", "create", "--machine", "toggle", "--instance", "i1", "--auth-context", '{"sub":"cli"}'
        )
    )
    assert instance["state"] == "inactive"
    sent = first_json(
        smply(
            server,
            "instances",
            "send-event",
            "--machine",
            "toggle",
            "--instance",
            "i1",
            "--event",
            "toggle",
            "--auth-context",
            '{"sub":"cli"}',
        )
    )
    assert sent["state"] == "active" and sent["publicContext"]["toggleCount"] == 1
    admin = first_json(smply(server, "instances", "get", "--machine", "toggle", "--instance", "i1"))
    assert admin["context"]["public"]["toggleCount"] == 1
    key = first_json(smply(server, "keys", "create", "--use", "production", "--name", "compat"))
    assert key["id"].startswith("sbk_") and key["key"].startswith("sbsec_")

    env = {
        **os.environ,
        "STATEHOST_URL": server["url"],
        "ORG_ID": server["orgId"],
        "ADMIN_TOKEN": server["adminToken"],
        "MACHINE": "toggle",
        "KEY_ID": key["id"],
        "KEY_SECRET": key["key"],
    }
    proc = subprocess.run(["node", "quickstart.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    checks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout}"
    assert checks and all(check["ok"] for check in checks)
    names = {check["check"] for check in checks}
    assert len(names) >= 15, names


def test_smply_migrates_and_the_official_client_sees_the_upgrade(server: dict[str, str]):
    """smply migrations create + instances set-desired-version; then @statebacked/client (upgrade.mjs)
    subscribes, sends the event that triggers the upgrade, and sees the upgrade transition live."""
    smply(server, "machines", "create", "--machine", "upgraded", "--node", "toggle.ts")
    smply(
        server,
        "machine-versions",
        "create",
        "--machine",
        "upgraded",
        "--version-reference",
        "2",
        "--node",
        "toggle_v2.ts",
    )
    versions = {
        v["clientInfo"]: v["id"] for v in json.loads(smply(server, "machine-versions", "list", "-m", "upgraded"))
    }
    v1, v2 = versions["0.0.1"], versions["2"]
    created = first_json(
        smply(
            server,
            "migrations",
            "create",
            "--machine",
            "upgraded",
            "--from",
            v1,
            "--to",
            v2,
            "--node",
            "toggle_migration.ts",
        )
    )
    migration = created["machineVersionMigrationId"]
    act = ["--auth-context", '{"sub":"compat"}']
    smply(server, "instances", "create", "--machine", "upgraded", "--instance", "u1", *act)
    smply(server, "instances", "send-event", "--machine", "upgraded", "--instance", "u1", "--event", "toggle", *act)
    smply(server, "instances", "set-desired-version", "--machine", "upgraded", "--instance", "u1", "--version", v2)
    env = {
        **os.environ,
        "STATEHOST_URL": server["url"],
        "ORG_ID": server["orgId"],
        "ADMIN_TOKEN": server["adminToken"],
        "MACHINE": "upgraded",
        "INSTANCE": "u1",
        "FROM_VERSION": v1,
        "TO_VERSION": v2,
        "MIGRATION_ID": migration,
    }
    proc = subprocess.run(["node", "upgrade.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=120)
    checks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout}"
    assert [c["check"] for c in checks] == [
        "subscribed-before-the-upgrade",
        "event-delivered-under-the-new-version",
        "subscriber-saw-the-upgrade-then-the-event",
        "history-lists-the-upgrade",
    ]
    # smply asking for a version no migration leads to: 400 no-migration-path, reported by smply.
    refused = subprocess.run(
        [str(SMPLY), "--api-url", server["url"], "instances", "set-desired-version", "-m", "upgraded", "-i", "u1",
         "--version", v1],
        cwd=HERE, env={**os.environ, "HOME": server["home"]}, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert "no-migration-path" in refused.stdout + refused.stderr or "migration" in (refused.stdout + refused.stderr)
