"""Timer rows: what a round's ``TimerOp``\\ s leave behind, stated once for every host.

A row is a pending durable timer of an instance, or a delayed message it sent to another instance
(or the spawn of a persistent child). The server keeps rows in its ``timers`` table and applies the
ops in SQL (server/store.py, ``commit_round``); ``LocalInstance`` keeps them in a dict and applies
them with :func:`apply_timer_op`. tests/server/test_timer_rows.py runs the same op sequences through
both on a real database and requires the same rows, so the two cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from .protocol import TimerOp

__all__ = ["TimerRow", "apply_timer_op"]


@dataclass(frozen=True)
class TimerRow:
    id: int
    """The row's number, increasing in the order rows are made."""
    key: str
    """The XState id of the delayed event (``anonymous:…`` when it has none); rows may share one."""
    event: Mapping[str, Any]
    due_ms: int
    target: Mapping[str, Any] | None = None
    """None: an event of the instance to itself; else a message to another instance, or a spawn."""


def apply_timer_op(rows: MutableMapping[int, TimerRow], op: TimerOp, *, now_ms: int, row_id: int) -> None:
    """Apply one op of a committed round to an instance's rows (by id); ``row_id`` numbers a new row.

    - ``set`` makes a row due ``delay_ms`` from now (JSON only survives, as in a database);
    - ``cancel`` removes the most recent row with the op's id, a delayed message included: XState's
      ``cancel(id)`` reaches the latest delayed event with that id only;
    - ``cancel_all`` (the instance stopped) removes its own timers and the messages it delayed
      that are not due yet; messages due already count as sent.
    """
    if op.op == "set":
        assert op.delay_ms is not None and op.event is not None
        key = op.id if op.id is not None else f"anonymous:{row_id}"
        target = None if op.target is None else json.loads(json.dumps(op.target))
        rows[row_id] = TimerRow(row_id, key, json.loads(json.dumps(op.event)), now_ms + op.delay_ms, target)
    elif op.op == "cancel":
        latest = max((row.id for row in rows.values() if row.key == op.id), default=None)
        if latest is not None:
            del rows[latest]
    else:
        for row in list(rows.values()):
            if row.target is None or row.due_ms > now_ms:
                del rows[row.id]
