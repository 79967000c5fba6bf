"""Builds the WASM guest: QuickJS-NG from the ``quickjs-ng`` sdist, compiled by PyPI ``ziglang``.

The ``.wasm`` is a build artifact, never committed: ``make setup`` runs ``python -m runtime.wasm_build``
(a no-op when the cached file exists), and :func:`guest_wasm` builds it on first use otherwise. An
installed wheel carries it prebuilt (runtime/resources.py), so zig is needed only in a checkout.

- Sources: ``upstream-quickjs/`` of the quickjs-ng sdist (the same QuickJS-NG version the native
  engine runs), downloaded by pip and checked against a pinned SHA-256; plus ``wasm/guest.c``, our ABI.
- Toolchain: ``python -m ziglang cc --target=wasm32-wasi -mexec-model=reactor`` (no system compiler).
  zig's linker lays the shadow stack out first (addresses 0..1 MiB), so a shadow-stack overflow traps
  below address 0 instead of corrupting static data.
- Cache: ``$STATEHOST_CACHE`` or ``$XDG_CACHE_HOME/statehost`` or ``~/.cache/statehost``; the file
  name carries a hash of everything that goes into the build (sources, flags, zig version), so a
  changed input builds again and stale files are simply unused. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from . import resources

__all__ = ["GUEST_SOURCE", "QUICKJS_SDIST", "SHADOW_STACK_BYTES", "cache_dir", "guest_name", "guest_wasm"]

GUEST_SOURCE = resources.guest_source()
QUICKJS_SDIST = ("quickjs-ng", "0.17.0.2", "43d2e48272208721a7aaea8e3f02d4b9318f12ef20cc4f5421b59d9a470706ef")
QUICKJS_FILES = ("quickjs.c", "libregexp.c", "libunicode.c", "dtoa.c")
SHADOW_STACK_BYTES = 2 * 1024 * 1024
"""The guest's shadow stack (linear memory below the data). The JS stack limit must stay below it."""
FLAGS = (
    "--target=wasm32-wasi",
    "-O2",
    "-DNDEBUG",
    "-mexec-model=reactor",
    f"-Wl,-z,stack-size={SHADOW_STACK_BYTES}",
    "-Wl,--export=__stack_pointer",
    "-s",
)


def cache_dir() -> Path:
    root = os.environ.get("STATEHOST_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "statehost"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _build_key() -> str:
    try:
        zig = importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "building the WASM guest needs zig from PyPI: pip install 'ziglang==0.17.1' (or statehost[wasm-build])"
        ) from None
    h = hashlib.sha256()
    h.update(GUEST_SOURCE.read_bytes())
    h.update(repr((QUICKJS_SDIST, QUICKJS_FILES, FLAGS, zig)).encode())
    return h.hexdigest()[:20]


def guest_wasm(build: bool = True) -> Path:
    """The path of the built guest for the current sources; builds it when missing (about 40 s)."""
    carried = resources.carried_guest()  # an installed wheel carries it prebuilt: no zig needed
    if carried is not None:
        return carried
    path = cache_dir() / guest_name()
    if not path.exists():
        if not build:
            raise FileNotFoundError(f"the WASM guest is not built yet ({path}); run `make setup`")
        print(f"statehost: building the WASM guest with zig, once (about 40 s): {path}", file=sys.stderr, flush=True)
        _build(path)
    return path


def guest_name() -> str:
    """The guest's file name: its build key, so that a changed input never reuses an old build."""
    return f"guest-{_build_key()}.wasm"


def _sdist(work: Path) -> Path:
    """The quickjs-ng sdist, downloaded once into the cache and checked against its pinned hash."""
    name, version, sha256 = QUICKJS_SDIST
    cached = cache_dir() / f"{name.replace('-', '_')}-{version}.tar.gz"
    if not cached.exists():
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        subprocess.run([*pip, f"{name}=={version}", "-d", str(work)], check=True)
        (downloaded,) = work.glob("*.tar.gz")
        shutil.move(downloaded, cached)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != sha256:
        cached.unlink()
        raise RuntimeError(f"{cached.name} has SHA-256 {digest}, expected {sha256}")
    return cached


def _build(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="statehost-wasm-") as tmp:
        work = Path(tmp)
        with tarfile.open(_sdist(work)) as tar:
            members = [m for m in tar.getmembers() if "/upstream-quickjs/" in m.name and m.isfile()]
            tar.extractall(work, members=members, filter="data")
        (src,) = {p.parent for p in work.glob("*/upstream-quickjs/quickjs.c")}
        out = work / "guest.wasm"
        command = [sys.executable, "-m", "ziglang", "cc", *FLAGS, f"-I{src}", str(GUEST_SOURCE)]
        command += [str(src / f) for f in QUICKJS_FILES] + ["-o", str(out)]
        subprocess.run(command, check=True, cwd=work)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(out, partial)
        os.replace(partial, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the WASM guest (QuickJS-NG, zig) if it is not cached.")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    existed = resources.carried_guest() is not None or (cache_dir() / guest_name()).exists()
    path = guest_wasm()
    if not args.quiet or not existed:
        what = "cached" if existed else f"built in {time.monotonic() - started:.1f} s"
        print(f"WASM guest {what}: {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
