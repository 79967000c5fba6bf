"""The prelude: every file of js_shims/ that runs in the sandbox, joined into one strict-mode IIFE.

The files share that function's scope (the internal bridge ``H`` of internal/host.js is visible to
every shim) and put only Web APIs and ``__statehost_entry`` on globalThis; the host captures and
deletes the latter before user code runs (js_shims/host.d.ts).
"""

from __future__ import annotations

import functools
import hashlib
import json

from . import resources

__all__ = ["LAZY_GLOBALS", "PRELUDE_FILES", "SHIMS_DIR", "load_lazy_shims", "prelude", "prelude_hash"]

SHIMS_DIR = resources.js_shims_dir()

# Order matters: internal first, then Web APIs, then State Backed's runtime hook, then the harness
# that uses all of them. Lazy files are compiled on first use of one of the globals they define
# (internal/host.js `H.lazy`); they may use each other's globals freely, which loads those too.
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
    "harness/paths.js",
    "harness/structure.js",
    "harness/v4.js",
    "harness/v5.js",
    "harness/entry.js",
)
LAZY_GLOBALS = {
    "web/abort.js": ("AbortController", "AbortSignal", "Event", "EventTarget"),
    "web/text_encoding.js": ("TextEncoder", "TextDecoder"),
    "web/url.js": ("URL", "URLSearchParams"),
    "web/structured_clone.js": ("structuredClone",),
    "web/crypto.js": ("crypto", "Crypto", "CryptoKey", "SubtleCrypto"),
    "web/fetch.js": ("fetch", "Headers", "Request", "Response"),
}


@functools.cache
def prelude() -> str:
    parts = ['(function () {\n"use strict";\n']
    for rel in PRELUDE_FILES:
        source = (SHIMS_DIR / rel).read_text()
        parts.append(f"// ---- {rel}\n")
        if rel in LAZY_GLOBALS:
            parts.append(f"H.lazy({json.dumps(rel)}, {json.dumps(list(LAZY_GLOBALS[rel]))}, {json.dumps(source)});\n")
        else:
            parts.append(source)
            parts.append("\n")
    parts.append("})();\n")
    return "".join(parts)


@functools.cache
def prelude_hash() -> str:
    """Part of every cache key derived from a sandbox (a changed shim invalidates them)."""
    return hashlib.sha256(prelude().encode()).hexdigest()


def load_lazy_shims() -> str:
    """A script that compiles every lazy shim now (by touching one of its globals): for images that
    every sandbox starts from (the WASM engine), where first use would otherwise compile the shim
    again in every event (``new URL`` cost ~5 ms per event on WASM before, bench W4)."""
    names = [names[0] for names in LAZY_GLOBALS.values()]
    return f"(function () {{ for (const name of {json.dumps(names)}) void globalThis[name]; }})();\n"
