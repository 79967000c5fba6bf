"""The one way statehost's background loops keep going (timers, leases, the commit relay)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["repeat"]


async def repeat(
    step: Callable[[], Awaitable[object]],
    *,
    pause_s: float,
    retry_s: float,
    what: str,
    log: logging.Logger,
) -> None:
    """Run ``step`` forever (until cancelled), ``pause_s`` before each run. A step that fails (the
    database unreachable, a disk full) is logged and tried again after ``retry_s``: a background
    loop must never end because of one failure, or the node silently stops doing that work."""
    while True:
        if pause_s:
            await asyncio.sleep(pause_s)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s failed; trying again", what, exc_info=True)
            if retry_s:
                await asyncio.sleep(retry_s)
