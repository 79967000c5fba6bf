"""The engines, by name. Both are always installed; the server setting ``engine`` picks one.

- ``quickjs-native``: QuickJS-NG through the ``quickjs-ng`` binding, in the server process.
- ``quickjs-wasm``: the same QuickJS-NG compiled to WebAssembly, under wasmtime: a memory-safety
  boundary around each instance, and each sandbox a fresh instance of a pre-initialised image.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engine import Engine

__all__ = ["ENGINE_NAMES", "make_engine"]

ENGINE_NAMES = ("quickjs-native", "quickjs-wasm")


def make_engine(name: str, runtime_api: Callable[[int], str] | None = None, *, image_cache_bytes: int = 0) -> Engine:
    """A new engine by name (the WASM one is imported only when asked for). ``image_cache_bytes``:
    the disk the WASM engine may use for prepared machine images (0: none; the native engine has
    no image to keep and ignores it)."""
    if name == "quickjs-native":
        from .quickjs_native import QuickJSNativeEngine

        return QuickJSNativeEngine(runtime_api)
    if name == "quickjs-wasm":
        from .quickjs_wasm import QuickJSWasmEngine

        return QuickJSWasmEngine(runtime_api, image_cache_bytes=image_cache_bytes)
    raise ValueError(f"unknown engine {name!r}; one of {', '.join(ENGINE_NAMES)}")
