"""The wheel, installed where there is no node (issue 19).

Builds the wheel with tools/build_wheel.py (what ``make wheel`` runs), installs it into a fresh
virtualenv (its PyPI dependencies come from pip's cache when it has them, or ``--find-links
$STATEHOST_WHEELHOUSE``), then runs the installed ``statehost serve`` with a ``PATH`` holding only
that virtualenv's ``bin/`` (no node, no npm), a working directory outside the checkout and an empty
WASM cache, and drives it with the Python client (client/): uploads in TypeScript and JavaScript
for XState 4 and 5, the quickstart's key, token, create, subscribe and send, and the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench.common import free_port, wait_for_line
from client import StatehostClient, sign_token

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "machines"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The quickstart's machine (docs/quickstart.md), TypeScript for XState 4: per-user toggles.
QUICKSTART_TS = (ROOT / "docs" / "quickstart.md").read_text().split("<!-- quickstart: file toggle.ts -->\n```ts\n")[1]
QUICKSTART_TS = QUICKSTART_TS.split("```")[0]

V4_JS = """
import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "counter4", predictableActionArguments: true, initial: "idle",
  context: { public: { n: 0 } },
  states: { idle: { on: { inc: { target: "counted", actions: assign({ public: (ctx) => ({ n: ctx.public.n + 1 }) }) } } },
            counted: { on: { inc: { target: "idle", actions: assign({ public: (ctx) => ({ n: ctx.public.n + 1 }) }) } } } },
});
"""

V5_JS = """
import { createMachine, assign } from "xstate";
export const allowRead = () => true;
export const allowWrite = () => true;
export default createMachine({
  id: "counter5", initial: "idle",
  context: { public: { n: 0 } },
  states: { idle: { on: { inc: { target: "counted", actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) } } },
            counted: { on: { inc: { target: "idle", actions: assign({ public: ({ context }) => ({ n: context.public.n + 1 }) }) } } } },
});
"""


@dataclass
class Installed:
    wheel: Path
    venv: Path
    env: dict[str, str]
    """A PATH of the virtualenv's bin/ only, a home and a WASM cache of its own, nothing of the checkout."""
    work: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _lock_versions() -> dict[str, str]:
    packages = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    return {
        name: packages[f"node_modules/{name}"]["version"]
        for name in ("esbuild", "xstate4", "xstate5", "@statebacked/machine")
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_wheel.py"), "--out", str(dist)], check=True, timeout=600
    )
    (wheel,) = dist.glob("statehost-*-py3-none-*.whl")
    print(f"wheel: {wheel.name}, {wheel.stat().st_size:,} bytes, built in {time.monotonic() - started:.1f} s")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if os.environ.get("STATEHOST_WHEELHOUSE"):
        pip += ["--find-links", os.environ["STATEHOST_WHEELHOUSE"]]
    started = time.monotonic()
    subprocess.run([*pip, str(wheel)], check=True, timeout=600)
    print(f"installed in {time.monotonic() - started:.1f} s")
    work = tmp / "work"
    (work / "home").mkdir(parents=True)
    env = {
        "PATH": str(venv / "bin"),
        "HOME": str(work / "home"),
        "STATEHOST_CACHE": str(work / "cache"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
    }
    return Installed(wheel, venv, env, work)


def _python(installed: Installed, code: str, *, cwd: Path | None = None, stdin: str | None = None) -> str:
    """Run ``code`` with the installed python (from ``cwd``, default the work folder); its stdout."""
    done = subprocess.run(
        [installed.bin("python"), "-c", code],
        input=stdin,
        cwd=cwd or installed.work,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_node_on_the_servers_path(installed: Installed):
    for tool in ("node", "npm", "npx", "zig"):
        assert shutil.which(tool, path=installed.env["PATH"]) is None, tool
    # The wheel needs no compiler: zig is not even installed with it (the WASM guest is prebuilt).
    assert "ziglang" not in _python(
        installed, "import importlib.metadata as m; print([d.name for d in m.distributions()])"
    )


def test_version_names_the_carried_javascript(installed: Installed):
    done = subprocess.run(
        [installed.bin("statehost"), "--version"],
        cwd=installed.work,
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    pins = _lock_versions()
    assert lines[0].startswith("statehost 0.1.0 (installed: ") and str(installed.venv) in lines[0]
    assert lines[1:] == [
        f"  esbuild {pins['esbuild']}",
        f"  xstate {pins['xstate4']}",
        f"  xstate {pins['xstate5']}",
        f"  @statebacked/machine {pins['@statebacked/machine']}",
    ]


def test_every_resource_comes_from_the_installed_wheel(installed: Installed):
    out = _python(
        installed,
        "import json\n"
        "from runtime import resources, wasm_build, shims\n"
        "from server import db\n"
        "from server.routes import dashboard\n"
        "print(json.dumps({'js_deps': str(resources.js_deps_dir()), 'esbuild': str(resources.esbuild_binary()),"
        " 'shims': str(shims.SHIMS_DIR), 'dashboard': str(dashboard.DIST), 'migrations': str(db.MIGRATIONS_DIR),"
        " 'pg_migrations': str(db.PG_MIGRATIONS_DIR), 'guest': str(wasm_build.guest_wasm(build=False)),"
        " 'guest_source': str(wasm_build.GUEST_SOURCE)}))",
    )
    found = {name: Path(path) for name, path in json.loads(out).items()}
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    for name, path in found.items():
        assert path.is_relative_to(site), f"{name} is {path}, outside the installed wheel"
        assert path.exists(), f"{name}: {path} does not exist"
    assert os.access(found["esbuild"], os.X_OK)
    assert sorted(p.name for p in found["migrations"].glob("*.sql")) == sorted(
        p.name for p in (ROOT / "server" / "migrations").glob("*.sql")
    )
    assert sorted(p.name for p in found["pg_migrations"].glob("*.sql")) == sorted(
        p.name for p in (ROOT / "server" / "migrations" / "postgres").glob("*.sql")
    )
    assert (found["dashboard"] / "index.html").is_file()


def _wait_until_serving(url: str, within_s: float = 60) -> None:
    """Poll ``GET /health``: the "listening" line comes from aiohttp's on_startup, before the socket
    is bound, so a request right after it can be refused."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # a poll interval, bounded by the deadline above


@pytest.fixture
def server(installed: Installed, tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    port = free_port()
    run = tmp_path / "run"
    run.mkdir()
    started = time.monotonic()
    rest: list[str] = []
    drain = threading.Thread()
    seen = ""
    process = subprocess.Popen(
        [installed.bin("statehost"), "serve", "--port", str(port)],
        cwd=run,
        env=installed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = wait_for_line(process, "next: statehost login", "the installed statehost serve")
        _wait_until_serving(f"http://127.0.0.1:{port}")
        print(f"serving {time.monotonic() - started:.1f} s after start")
        assert process.stdout is not None
        # Keep reading, so that the server never blocks on a full pipe; the thread ends at EOF.
        drain = threading.Thread(target=lambda: rest.extend(process.stdout or ()), daemon=True)
        drain.start()
        yield f"http://127.0.0.1:{port}", run, seen
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            drain.join(10)
            if process.stdout is not None and not drain.is_alive():
                process.stdout.close()
            print(f"the server's output:\n{seen}{''.join(rest)}")  # shown when the test fails
    assert code == 0, "".join(rest)
    # The carried guest was used: nothing was compiled with zig at first start.
    assert "building the WASM guest" not in seen + "".join(rest)


async def test_quickstart_flow_and_dashboard_against_the_installed_server(server: tuple[str, Path, str]):
    url, run, _ = server
    admin = json.loads((run / ".statehost" / "admin.json").read_text())
    uploads = [
        ("toggle", QUICKSTART_TS, "toggle.ts", None),
        ("toggle5", (FIXTURES / "toggle" / "v5" / "machine.ts").read_text(), "machine.ts", 5),
        ("counter4", V4_JS, "machine.js", 4),
        ("counter5", V5_JS, "machine.js", 5),
    ]
    async with StatehostClient(url, admin["adminToken"], org_id=admin["orgId"]) as statehost:
        for slug, code, filename, major in uploads:
            started = time.monotonic()
            await statehost.machines.create(slug)
            await statehost.versions.create(slug, code, filename=filename, make_current=True, xstate_major=major)
            print(
                f"{slug} ({filename}, XState {major or 'from the imports'}) uploaded in {time.monotonic() - started:.2f} s"
            )
        key = await statehost.keys.create("toggle-app", use="production")

    token = sign_token(key["id"], key["key"], {"sub": "carol"}, expires_in_s=3600)
    async with StatehostClient(url, token) as statehost:
        # The quickstart's Python step: get-or-create, subscribe, send, see the live update.
        state = await statehost.instances.get_or_create("toggle", "carol")
        assert state["state"] == "off"
        updates = statehost.instances.subscribe("toggle", "carol")
        assert (await anext(updates))["state"] == "off"
        sent = await statehost.instances.send_event("toggle", "carol", "toggle")
        assert sent["state"] == "on"
        update = await anext(updates)
        assert (update["state"], update["publicContext"]) == ("on", {"toggles": 1})
        await updates.aclose()

        created = await statehost.instances.create("toggle5", "carol")
        assert created["state"] == "inactive"
        sent = await statehost.instances.send_event("toggle5", "carol", "toggle")
        assert (sent["state"], sent["publicContext"]) == ("active", {"toggleCount": 1})
        for slug in ("counter4", "counter5"):
            assert (await statehost.instances.create(slug, "c"))["state"] == "idle"
            sent = await statehost.instances.send_event(slug, "c", "inc")
            assert (sent["state"], sent["publicContext"]) == ("counted", {"n": 1}), slug

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/dashboard") as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/html")
            page = await response.text()
        assets = re.findall(r'(?:src|href)="(dashboard/assets/[^"]+)"', page)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), page
        for asset in assets:
            async with http.get(f"{url}/{asset}") as response:
                assert response.status == 200, asset
                assert len(await response.read()) > 1000, asset


def _unit_environment() -> tuple[dict[str, str], list[str]]:
    """The ``Environment=`` lines and ``ExecStart=`` of deploy/statehost.service."""
    lines = (ROOT / "deploy" / "statehost.service").read_text().splitlines()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in lines if line.startswith("Environment="))
    (start,) = (line.removeprefix("ExecStart=").split() for line in lines if line.startswith("ExecStart="))
    return env, start


def _dockerfile_environment() -> tuple[dict[str, str], list[str]]:
    """The ``ENV`` and ``CMD`` instructions of deploy/Dockerfile."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    env = dict(pair.split("=", 1) for name, rest in instructions if name == "ENV" for pair in rest.split())
    (command,) = (json.loads(rest) for name, rest in instructions if name == "CMD")
    health = next(rest for name, rest in instructions if name == "HEALTHCHECK")
    return {**env, "HEALTHCHECK": json.dumps(json.loads(health.split("CMD", 1)[1]))}, command


@pytest.mark.parametrize("recipe", ["systemd", "docker"])
def test_the_deploy_recipes_run_the_installed_server(installed: Installed, tmp_path: Path, recipe: str):
    """deploy/statehost.service and deploy/Dockerfile, as far as runs without systemd and Docker: the
    installed ``statehost serve`` with the recipe's environment (its paths moved under a temporary
    folder, its address loopback), where the data and cache end up, and the container's health check."""
    env, command = _unit_environment() if recipe == "systemd" else _dockerfile_environment()
    assert len(command) == 2 and Path(command[0]).name == "statehost" and command[1] == "serve", command
    health = json.loads(env.pop("HEALTHCHECK", "null"))
    port = free_port()
    moved = {
        name: value.replace("/var/lib/statehost", str(tmp_path / "state")).replace(
            "/var/cache/statehost", str(tmp_path / "cache")
        )
        for name, value in env.items()
    }
    assert {"STATEHOST_DATA_DIR", "STATEHOST_CACHE", "STATEHOST_HOST", "STATEHOST_PORT"} <= set(moved)
    moved |= {"STATEHOST_HOST": "127.0.0.1", "STATEHOST_PORT": str(port)}
    run = tmp_path / "state"
    run.mkdir()
    process = subprocess.Popen(
        [installed.bin("statehost"), "serve"],
        cwd=run,
        env={**installed.env, **moved},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_line(process, "next: statehost login", f"statehost serve with {recipe}'s environment")
        _wait_until_serving(f"http://127.0.0.1:{port}")
        assert (Path(moved["STATEHOST_DATA_DIR"]) / "admin.json").is_file()
        admin = json.loads((Path(moved["STATEHOST_DATA_DIR"]) / "admin.json").read_text())
        toggle = (FIXTURES / "toggle" / "v4" / "machine.ts").read_text()
        check = (
            "import asyncio, sys\n"
            "from client import StatehostClient\n"
            "async def main():\n"
            f"    async with StatehostClient({admin['url']!r}, {admin['adminToken']!r}) as c:\n"
            "        await c.machines.create('toggle')\n"
            "        await c.versions.create('toggle', sys.stdin.read(), filename='machine.ts', make_current=True)\n"
            "asyncio.run(main())\n"
        )
        # the installed client, with the installed python: no file of the checkout is used
        _python(installed, check, cwd=run, stdin=toggle)
        # The WASM engine's compiled modules went to the recipe's cache directory.
        assert list(Path(moved["STATEHOST_CACHE"]).glob("*.cwasm"))
        if health is not None:
            probe = [arg.replace("8787", str(port)) for arg in health]
            probe[0] = installed.bin(probe[0])
            assert subprocess.run(probe, env=installed.env, timeout=60, check=False).returncode == 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # what systemctl stop and docker stop send
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            if process.stdout is not None:
                output = process.stdout.read()
                process.stdout.close()
                print(f"the server's output:\n{output}")
    assert code == 0, output
