"""The dashboard end to end, in a real headless Chromium (Debian's package, driven by Playwright for
Python), against a real ``statehost serve`` on a free port with a temporary data directory.

A person's path from an empty server to a live instance, without the command line: sign in with the
admin credentials; create a machine; paste the quickstart machine (docs/quickstart.md's toggle.ts)
into the editor; make an edit that breaks it and see the server's bundling error marked at that
line; fix it from the error's link and deploy; create an instance; send ``toggle`` and see the
diagram's highlight move, the history row and the machine's log line. Then a second client (the
official ``@statebacked/client``, run with node) sends an event and the open page follows without a
reload. Every page is screenshot into ``<tmp>/screenshots`` (the path is printed); with
``STATEHOST_UPDATE_SCREENSHOTS=1`` the set is also copied to docs/dashboard/ for docs/dashboard.md.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import free_port, wait_for_line
from tests.support import need_tool

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "tests" / "compat"
DOCS_SHOTS = ROOT / "docs" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without the background-networking flags Chromium floods it
# with refused connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.slow


def _quickstart_machine() -> str:
    text = (ROOT / "docs" / "quickstart.md").read_text()
    match = re.search(r"<!-- quickstart: file toggle\.ts -->\n```ts\n(.*?)^```$", text, re.S | re.M)
    assert match, "docs/quickstart.md has no toggle.ts block"
    return match.group(1)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        done = subprocess.run(
            ["bash", str(ROOT / "tests" / "dashboard" / "install_chromium.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if not CHROMIUM.exists():
            need_tool(
                "chromium", f"Debian's chromium is not installed and could not be installed: {done.stderr.strip()}"
            )
    return CHROMIUM


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    assert (ROOT / "dashboard" / "dist" / "index.html").exists(), "the dashboard is not built: run make setup"
    port = free_port()
    data = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--data-dir", str(data)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    wait_for_line(process, "listening on", "statehost serve", within_s=60)
    drain = threading.Thread(target=process.stdout.read, daemon=True)  # never block on a full pipe
    drain.start()
    credentials = json.loads((data / "admin.json").read_text())
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "credentials": (data / "admin.json").read_text(),
            "token": credentials["adminToken"],
            "org": credentials["orgId"],
        }
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        drain.join(5)
        process.stdout.close()


def test_from_an_empty_server_to_a_live_instance(chromium: Path, server: dict[str, str], tmp_path: Path):
    try:
        import playwright.sync_api as playwright_api
    except ImportError as e:
        need_tool("playwright", f"the Python package is not installed ({e}; make setup installs it)")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    source = _quickstart_machine()
    lines = source.splitlines()
    off_line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith("off: {"))
    insert_at = lines[off_line - 1].index("on: {")
    console: list[str] = []

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)  # a bound on a hang: a busy machine is slow
            page.on("pageerror", lambda e: console.append(f"page error: {e}"))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            expect = playwright_api.expect
            expect.set_options(timeout=60_000)  # assertions retry up to this (the default is 5 s)

            def shot(name: str, *, full: bool = True) -> None:
                page.screenshot(path=str(shots / f"{name}.png"), full_page=full)

            # sign in with the admin credentials, pasted whole
            page.goto(server["url"] + "/dashboard")
            expect(page.get_by_role("heading", name="Sign in to statehost")).to_be_visible()
            shot("01-sign-in")
            page.get_by_label("Credentials or token").fill("not a token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).to_contain_text("three parts")
            page.get_by_label("Credentials or token").fill(server["credentials"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Machines", exact=True)).to_be_visible()
            expect(page.get_by_text("No machines yet")).to_be_visible()
            shot("02-machines-empty")

            # create a machine; its page opens on the editor
            page.get_by_label("Name", exact=True).fill("toggle")
            page.get_by_role("button", name="Create machine").click()
            expect(page.get_by_role("heading", name="toggle", exact=True)).to_be_visible()
            editor = page.locator(".cm-content")
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(source)  # pasting the quickstart machine
            shown = [line.rstrip("\n") for line in page.locator(".cm-line").all_inner_texts()]
            assert [x for x in shown if x.strip()] == [x for x in lines if x.strip()]

            # a broken edit on the `off` line: an exit action without the comma after it
            page.keyboard.press("Control+Home")
            for _ in range(off_line - 1):
                page.keyboard.press("ArrowDown")
            page.keyboard.press("End")
            for _ in range(len(lines[off_line - 1]) - insert_at):
                page.keyboard.press("ArrowLeft")
            page.keyboard.insert_text('exit: () => console.log("switched on") ')
            page.get_by_role("button", name="Deploy version").click()
            error = page.locator(".diagnostic").first
            expect(error).to_have_attribute("data-line", str(off_line))
            expect(error).to_contain_text(f"machine.ts:{off_line}:")
            expect(page.locator(".cm-lint-marker-error")).to_have_count(1)
            expect(page.locator(".cm-lintRange-error")).to_have_count(1)
            shot("03-bundling-error")

            # the error's link puts the cursor where the bundler stopped: fix it there, deploy
            error.get_by_role("button").click()
            page.keyboard.press("Backspace")
            page.keyboard.insert_text(", ")
            page.get_by_role("button", name="Deploy version").click()
            expect(page.get_by_text(re.compile(r"Version ver_\S+ deployed and made current"))).to_be_visible()
            expect(page.locator('svg.chart g.state[data-path="off"]')).to_be_visible()
            shot("04-machine")

            # create an instance, acting as its user (the quickstart's authorizers want sub == name)
            page.get_by_label("Instance name").fill("alice")
            expect(page.get_by_label("Act as (authContext)")).to_have_value('{"sub":"alice"}')
            page.get_by_role("button", name="Create instance").click()
            expect(page.get_by_role("heading", name="alice", exact=True)).to_be_visible()
            off = page.locator('svg.chart g.state[data-path="off"]')
            on = page.locator('svg.chart g.state[data-path="on"]')
            expect(off).to_have_class(re.compile(r"\bcurrent\b"))
            expect(page.locator(".live")).to_have_text("● live")
            page.evaluate("window.__sameDocument = true")
            shot("05-instance")

            # send toggle: the highlight moves, the history has the row, the log line shows
            page.get_by_label("Event", exact=True).fill("toggle")
            page.get_by_role("button", name="Send event").click()
            expect(on).to_have_class(re.compile(r"\bcurrent\b"))
            expect(off).not_to_have_class(re.compile(r"\bcurrent\b"))
            expect(page.locator(".timeline li").first).to_contain_text("toggle → on")
            expect(page.locator(".timeline li")).to_have_count(2)
            expect(page.locator(".log-line").first).to_have_text("switched on")
            expect(page.locator("pre.json").first).to_contain_text('"toggles": 1')
            shot("06-instance-toggled")

            # a second client, the official @statebacked/client, sends an event: the page follows
            node = subprocess.run(
                ["node", "send_event.mjs"],
                cwd=COMPAT,
                env={
                    **os.environ,
                    "STATEHOST_URL": server["url"],
                    "ADMIN_TOKEN": server["token"],
                    "ORG_ID": server["org"],
                    "MACHINE": "toggle",
                    "INSTANCE": "alice",
                    "EVENT": "toggle",
                    "ACT": json.dumps({"sub": "alice"}),
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert node.returncode == 0, node.stderr
            assert json.loads(node.stdout)["state"] == "off"
            expect(off).to_have_class(re.compile(r"\bcurrent\b"))
            expect(on).not_to_have_class(re.compile(r"\bcurrent\b"))
            expect(page.locator(".timeline li")).to_have_count(3)
            expect(page.locator(".timeline li").first).to_contain_text("toggle → off")
            assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
            shot("07-instance-live-update")

            # pause: events are refused, shown where they were sent; resume
            page.get_by_role("button", name="Pause").click()
            expect(page.locator("[data-status]")).to_have_text("paused")
            page.get_by_role("button", name="Send event").click()
            expect(page.get_by_role("alert")).to_contain_text("409")
            page.get_by_role("button", name="Resume").click()
            expect(page.locator("[data-status]")).to_have_text("running")

            # the other pages
            page.goto(server["url"] + "/dashboard#/logs")
            expect(page.locator(".log-line").first).to_have_text("switched on")
            shot("08-logs")
            page.goto(server["url"] + "/dashboard#/keys")
            expect(page.get_by_role("heading", name="API keys")).to_be_visible()
            page.get_by_label("Name", exact=True).fill("backend")
            page.get_by_role("button", name="Create key").click()
            expect(page.get_by_text("Copy the secret now")).to_be_visible()
            expect(page.locator("table code").first).to_contain_text("sbk_")
            shot("09-keys")
            page.goto(server["url"] + "/dashboard#/identity-providers")
            expect(page.get_by_role("heading", name="Identity providers")).to_be_visible()
            shot("10-identity-providers")
            page.goto(server["url"] + "/dashboard#/token-providers")
            expect(page.get_by_role("cell", name="anonymous-statebacked-dev")).to_be_visible()
            shot("11-token-providers")
            page.goto(server["url"] + "/dashboard#/machines")
            expect(page.get_by_role("link", name="toggle")).to_be_visible()
            shot("12-machines")
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(server["url"] + "/dashboard#/machines/toggle/i/alice")
            expect(off).to_have_class(re.compile(r"\bcurrent\b"))
            shot("13-instance-phone", full=False)

            # delete, confirmed by typing the name (the API checks the HMAC the page computes)
            page.set_viewport_size({"width": 1280, "height": 900})
            page.get_by_role("button", name="Delete instance…").click()
            page.get_by_label("Instance name").fill("alice")
            page.get_by_role("button", name="Delete forever").click()
            expect(page.get_by_text("No instances yet")).to_be_visible()
        finally:
            browser.close()

    assert not [line for line in console if "page error" in line], console
    print(f"dashboard screenshots: {shots}")
    if os.environ.get("STATEHOST_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(exist_ok=True)
        for png in sorted(shots.glob("*.png")):
            shutil.copy(png, DOCS_SHOTS / png.name)
