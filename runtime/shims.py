"""The prelude: every file of js_shims/ that runs in the sandbox, joined into one strict-mode IIFE.

The files share that function's scope (the internal bridge ``H`` of internal/host.js is visible to
every shim) and put only Web APIs and ``__statehost_entry`` on globalThis; the host captures and
deletes the latter before user code runs (js_shims/host.d.ts).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["PRELUDE_FILES", "SHIMS_DIR", "prelude", "prelude_hash"]

SHIMS_DIR = Path(__file__).resolve().parent.parent / "js_shims"

# Order matters: internal first, then Web APIs (fetch needs abort and text encoding; crypto needs
# text encoding), then State Backed's runtime hook, then the harness that uses all of them.
PRELUDE_FILES = (
    "internal/host.js",
    "web/console.js",
    "web/timers.js",
    "web/abort.js",
    "web/text_encoding.js",
    "web/url.js",
    "web/structured_clone.js",
    "web/crypto.js",
    "web/fetch.js",
    "web/unsupported.js",
    "statebacked/rt.js",
    "harness/common.js",
    "harness/v4.js",
    "harness/v5.js",
    "harness/entry.js",
)


@functools.cache
def prelude() -> str:
    parts = ['(function () {\n"use strict";\n']
    for rel in PRELUDE_FILES:
        parts.append(f"// ---- {rel}\n")
        parts.append((SHIMS_DIR / rel).read_text())
        parts.append("\n")
    parts.append("})();\n")
    return "".join(parts)


@functools.cache
def prelude_hash() -> str:
    """Part of every cache key derived from a sandbox (a changed shim invalidates them)."""
    return hashlib.sha256(prelude().encode()).hexdigest()
