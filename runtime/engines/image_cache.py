"""Prepared machine images on disk: a bounded, self-checking, least-recently-used file cache.

The WASM engine keeps what preparing a version produced (the pages that evaluating its bundle and
``attach`` changed, and the attach reply) here, so that a restarted server loads a version in
milliseconds instead of evaluating its bundle again (docs/runtime.md, "Persisted machine images").
The cache knows nothing of machines: a key (the hex digest of everything that determines the
entry, computed by the caller) maps to a small JSON header and a body of bytes.

- **Where**: ``<cache dir>/machine-images/`` (``$STATEHOST_CACHE``, else ``$XDG_CACHE_HOME/statehost``,
  else ``~/.cache/statehost``; 0700), beside the compiled modules. It is derived state: deleting
  it loses nothing but time. Several processes (nodes on one host) may share it.
- **Writes** go to a temporary file in the same folder, then ``os.replace``: a reader sees the
  whole old file, the whole new one, or none. Two writers of one key write the same content.
- **Reads** check a SHA-256 of the whole entry and that the file's key is the one asked for; a
  truncated, corrupt or foreign file is deleted and reported as a miss (the caller rebuilds it).
- **Size**: at most ``max_bytes`` of entries; after a write, the least recently used files (by
  modification time, which a read refreshes) are deleted until the rest fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CachedEntry", "ImageCache"]

MAGIC = b"statehost-machine-image/1\n"
_SUFFIX = ".img"
# Layout: MAGIC, sha256 of the rest (32 bytes), the rest's length (u64), then the rest: the JSON
# header's length (u32), the header (with the key), the body.

log = logging.getLogger("statehost")


@dataclass(frozen=True)
class CachedEntry:
    header: dict[str, Any]
    body: bytes


class ImageCache:
    """Entries keyed by a hex digest, bounded to ``max_bytes`` in total. Thread-safe."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "stored": 0, "evicted": 0}
        """Since this object was made: reads answered, missed, files found damaged (and deleted),
        entries written and entries evicted by the size bound."""

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{_SUFFIX}"

    def get(self, key: str) -> CachedEntry | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._count("misses")
            return None
        except OSError as exc:
            log.warning("machine image %s unreadable: %s", path.name, exc)
            self._count("misses")
            return None
        entry = _decode(data, key)
        if entry is None:
            log.warning("machine image %s is damaged (truncated or corrupt): deleted, rebuilding", path.name)
            with contextlib.suppress(OSError):
                path.unlink()
            self._count("corrupt")
            self._count("misses")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the LRU clock: last use
        self._count("hits")
        return entry

    def put(self, key: str, header: dict[str, Any], body: bytes) -> bool:
        """Store an entry (atomically); False when it alone is larger than the bound."""
        data = _encode(key, header, body)
        if len(data) > self.max_bytes:
            return False
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(key)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError as exc:  # a full disk costs time at the next start, nothing else
            log.warning("could not store machine image %s: %s", path.name, exc)
            with contextlib.suppress(OSError):
                partial.unlink()
            return False
        self._count("stored")
        self.sweep(keep=path)
        return True

    def sweep(self, keep: Path | None = None) -> None:
        """Delete the least recently used entries until the rest fit in ``max_bytes``."""
        files: list[tuple[float, int, Path]] = []
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(self.folder):
                if not item.name.endswith(_SUFFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = item.stat()
                    files.append((st.st_mtime, st.st_size, Path(item.path)))
        total = sum(size for _, size, _ in files)
        files.sort(key=lambda f: (f[2] == keep, f[0]))  # the entry just written goes last
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                self._count("evicted")
            total -= size

    def total_bytes(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(p.stat().st_size for p in self.folder.glob(f"*{_SUFFIX}"))
        return 0


def _encode(key: str, header: dict[str, Any], body: bytes) -> bytes:
    head = json.dumps({**header, "key": key, "written_s": int(time.time())}, separators=(",", ":")).encode()
    rest = struct.pack("<I", len(head)) + head + body
    digest = hashlib.sha256(rest).digest()
    return MAGIC + struct.pack("<32sQ", digest, len(rest)) + rest


def _decode(data: bytes, key: str) -> CachedEntry | None:
    """The entry, or None for a file that is not a whole, intact entry of ``key``."""
    fixed = len(MAGIC) + 40
    if len(data) < fixed + 4 or not data.startswith(MAGIC):
        return None
    digest, length = struct.unpack_from("<32sQ", data, len(MAGIC))
    rest = memoryview(data)[fixed:]
    if len(rest) != length or hashlib.sha256(rest).digest() != digest:
        return None
    (head_len,) = struct.unpack_from("<I", rest, 0)
    try:
        header = json.loads(bytes(rest[4 : 4 + head_len]))
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("key") != key:
        return None
    return CachedEntry(header, bytes(rest[4 + head_len :]))
