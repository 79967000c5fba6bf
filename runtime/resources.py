"""Where the files statehost needs at run time live: the one place to look (issue 19).

Two layouts, same relative paths:

- **a checkout** (``make setup``, an editable install): the repository root, the parent of
  ``runtime/``: ``node_modules/`` (installed by ``npm ci``), ``js_shims/``, ``dashboard/dist/``
  (built by ``node dashboard/build.mjs``), ``wasm/guest.c``;
- **an installed wheel** (``make wheel``, tools/build_wheel.py): ``runtime/resources-data/``, which
  carries the same paths (only the packages bundling resolves imports against: ``xstate4``,
  ``xstate5``, ``@statebacked/machine``, and ``@esbuild/<platform>`` with the native binary), plus
  the prebuilt WASM guest and ``manifest.json`` (what was carried, and which versions). Its name is
  not a Python identifier on purpose: setuptools ships it as plain package data.

The database migrations are the ``server`` package's data (``server/migrations``, and
``postgres/`` under it), next to ``runtime/`` in both layouts. ``STATEHOST_JS_DEPS`` (a node_modules
folder) and ``STATEHOST_ESBUILD`` (a binary) override the JavaScript side. Nothing here runs node:
bundling needs only esbuild's native binary.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .errors import HostError

__all__ = [
    "BUNDLED",
    "CARRIED_PACKAGES",
    "carried_guest",
    "dashboard_dist",
    "esbuild_binary",
    "guest_source",
    "installed",
    "js_deps_dir",
    "js_shims_dir",
    "js_versions",
    "migrations_dir",
    "root",
]

_RUNTIME = Path(__file__).resolve().parent
BUNDLED = _RUNTIME / "resources-data"
"""The wheel's copy of everything below (absent in a checkout)."""
CARRIED_PACKAGES = ("xstate4", "xstate5", "@statebacked/machine")
"""The npm packages an upload's imports resolve against (runtime/bundle.py), besides esbuild."""


def installed() -> bool:
    """True when running from an installed wheel (its resources are carried), False in a checkout."""
    return (BUNDLED / "manifest.json").is_file()


def root() -> Path:
    """The folder the relative paths below start from: the wheel's carried files, else the checkout."""
    return BUNDLED if installed() else _RUNTIME.parent


def _fix() -> str:
    return "reinstall statehost" if installed() else "run `make setup`"


def js_shims_dir() -> Path:
    """``js_shims/``: the JavaScript that runs inside every sandbox (runtime/shims.py)."""
    return root() / "js_shims"


def js_deps_dir() -> Path:
    """The node_modules folder that holds xstate4, xstate5, @statebacked/machine and @esbuild/<platform>."""
    env = os.environ.get("STATEHOST_JS_DEPS")
    candidate = Path(env) if env else root() / "node_modules"
    if not (candidate / "xstate4").is_dir():
        raise HostError(
            f"JavaScript dependencies not found (looked in {candidate}); {_fix()} "
            "or set STATEHOST_JS_DEPS to a node_modules folder"
        )
    return candidate


def esbuild_binary(js_deps: Path | None = None) -> Path:
    """esbuild's native binary, from the npm package ``@esbuild/<platform>`` (never node's wrapper)."""
    env = os.environ.get("STATEHOST_ESBUILD")
    if env:
        return Path(env)
    platform_dir = (js_deps or js_deps_dir()) / "@esbuild"
    name = "esbuild.exe" if sys.platform == "win32" else "bin/esbuild"
    for binary in sorted(platform_dir.glob(f"*/{name}")):
        return binary
    raise HostError(f"the esbuild binary was not found under {platform_dir}; {_fix()}")


def dashboard_dist() -> Path:
    """The built web dashboard (``dashboard/dist``), served by server/routes/dashboard.py."""
    return root() / "dashboard" / "dist"


def migrations_dir() -> Path:
    """The SQLite schema files; the PostgreSQL ones are in ``postgres/`` under it (server/db.py)."""
    return _RUNTIME.parent / "server" / "migrations"


def guest_source() -> Path:
    """``wasm/guest.c``: the WASM guest's ABI, compiled with QuickJS-NG (runtime/wasm_build.py)."""
    return root() / "wasm" / "guest.c"


def carried_guest() -> Path | None:
    """The prebuilt WASM guest an installed wheel carries (built with the wheel, from its own
    ``wasm/guest.c``), else None: a checkout builds it with zig into a cache (runtime/wasm_build.py)."""
    if not installed():
        return None
    try:
        name = str(json.loads((BUNDLED / "manifest.json").read_text())["guest"])
    except (OSError, ValueError, KeyError):
        return None
    path = BUNDLED / "wasm" / name
    return path if path.is_file() else None


def js_versions() -> dict[str, str]:
    """The versions of the JavaScript statehost bundles with: esbuild and the carried packages."""
    try:
        deps = js_deps_dir()
    except HostError:
        return {name: "missing" for name in ("esbuild", *CARRIED_PACKAGES)}
    versions: dict[str, str] = {}
    platform = sorted((deps / "@esbuild").glob("*/package.json"))
    for name, manifest in [("esbuild", platform[0] if platform else None)] + [
        (package, deps / package / "package.json") for package in CARRIED_PACKAGES
    ]:
        try:
            versions[name] = str(json.loads(manifest.read_text())["version"]) if manifest else "missing"
        except (OSError, ValueError, KeyError):
            versions[name] = "missing"
    return versions
