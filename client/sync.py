"""A blocking façade over the async client, for scripts, notebooks and REPLs.

Every call is the async client's own coroutine, run on a private event loop in a background thread
(so it also works where an event loop is already running, e.g. in Jupyter), and async iterators
(``subscribe``, ``logs.watch``) become ordinary iterators::

    with SyncStatehostClient("http://127.0.0.1:8787", token) as client:
        client.instances.send_event("toggle", "i1", "toggle")
        for update in client.instances.subscribe("toggle", "i1"):
            print(update["state"])

Nothing is written twice: the method surface is the async client's, looked up at call time.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .api import StatehostClient, _Group

__all__ = ["SyncStatehostClient"]

T = TypeVar("T")


class _Loop:
    """A private event loop on a daemon thread; calls block the caller until their result is ready."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="statehost-client", daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("a SyncStatehostClient cannot be called from its own callbacks")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.call(anext(iterator))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and not self.loop.is_closed():
                self.call(aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _Blocking:
    """The same attributes as ``target``, with coroutine methods made blocking and async generator
    methods made iterators; nested groups (``client.instances``) are wrapped the same way."""

    def __init__(self, target: object, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kwargs: self._loop.call(value(*args, **kwargs))
        if inspect.isasyncgenfunction(value):
            return lambda *args, **kwargs: self._loop.iterate(value(*args, **kwargs))
        if isinstance(value, _Group):
            return _Blocking(value, self._loop)
        return value


class SyncStatehostClient(_Blocking):
    """``StatehostClient``'s surface, blocking. Same constructor arguments (except ``session``)."""

    def __init__(self, api_host: str, token: str | Callable[[], str] | None = None, **options: Any) -> None:
        loop = _Loop()
        source: Any = token
        if callable(token):
            produce = token

            async def source() -> str:
                return produce()

        super().__init__(StatehostClient(api_host, source, **options), loop)
        self.client: StatehostClient = self._target  # type: ignore[assignment]

    @classmethod
    def anonymous(cls, api_host: str, org_id: str, **options: Any) -> SyncStatehostClient:
        """An anonymous session (see ``StatehostClient.anonymous``)."""
        sync = cls(api_host)
        sync._target = sync.client = StatehostClient.anonymous(api_host, org_id, **options)
        return sync

    @classmethod
    def exchanging(
        cls, api_host: str, org_id: str, service: str, subject_token: Callable[[], str]
    ) -> SyncStatehostClient:
        """Exchange your identity provider's tokens (``subject_token`` returns a current one)."""

        async def subject() -> str:
            return subject_token()

        sync = cls(api_host)
        sync._target = sync.client = StatehostClient.exchanging(api_host, org_id, service, subject)
        return sync

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        self._loop.call(self.client.close())
        self._loop.stop()

    def __enter__(self) -> SyncStatehostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
