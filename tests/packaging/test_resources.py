"""runtime/resources.py in a checkout: the one place that locates files at run time (issue 19)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from runtime import resources, shims, wasm_build
from runtime.bundle import Bundler
from runtime.errors import HostError
from server import db
from server.cli import main
from server.routes import dashboard

ROOT = Path(__file__).resolve().parents[2]
# Reads the source of server/config.py and runtime/limits.py to render docs/configuration.md: a
# documentation tool, not a run-time resource.
NOT_RESOURCES = {"server/settings_doc.py"}


def test_a_checkout_is_not_an_installed_wheel():
    assert not resources.installed()
    assert resources.root() == ROOT
    assert resources.carried_guest() is None


def test_every_resource_resolves_in_the_checkout():
    assert resources.js_deps_dir() == ROOT / "node_modules"
    esbuild = resources.esbuild_binary()
    assert esbuild.is_relative_to(ROOT / "node_modules" / "@esbuild") and os.access(esbuild, os.X_OK)
    assert Bundler().esbuild == esbuild
    assert shims.SHIMS_DIR == ROOT / "js_shims" and (shims.SHIMS_DIR / "host.d.ts").is_file()
    assert dashboard.DIST == ROOT / "dashboard" / "dist"
    assert db.MIGRATIONS_DIR == ROOT / "server" / "migrations" and db.PG_MIGRATIONS_DIR.is_dir()
    assert wasm_build.GUEST_SOURCE == ROOT / "wasm" / "guest.c"


def test_no_other_module_locates_files_itself():
    """Paths next to the code are found through runtime/resources.py only, so that one module knows
    both layouts (a checkout, an installed wheel)."""
    offenders = []
    for package in ("runtime", "server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in ("runtime/resources.py", *NOT_RESOURCES):
                continue
            if re.search(r"__file__|importlib\.resources|files\(__package__", path.read_text()):
                offenders.append(name)
    assert offenders == []


def test_overrides_and_a_missing_folder_say_what_to_do(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("STATEHOST_JS_DEPS", str(tmp_path))
    with pytest.raises(HostError, match=r"JavaScript dependencies not found \(looked in .*\); run `make setup`"):
        resources.js_deps_dir()
    (tmp_path / "xstate4").mkdir()
    assert resources.js_deps_dir() == tmp_path
    with pytest.raises(HostError, match="the esbuild binary was not found"):
        resources.esbuild_binary()
    assert resources.js_versions()["esbuild"] == "missing"
    monkeypatch.setenv("STATEHOST_ESBUILD", "/opt/esbuild")
    assert resources.esbuild_binary() == Path("/opt/esbuild")


def test_version_prints_the_pinned_javascript(capsys):
    packages = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    pin = {name: packages[f"node_modules/{name}"]["version"] for name in ("esbuild", "xstate4", "xstate5")}
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"statehost \d+\.\d+\.\d+\S* \(checkout: .+\)", lines[0]), lines[0]
    assert lines[1:] == [
        f"  esbuild {pin['esbuild']}",
        f"  xstate {pin['xstate4']}",
        f"  xstate {pin['xstate5']}",
        f"  @statebacked/machine {packages['node_modules/@statebacked/machine']['version']}",
    ]
