"""Reliable timers: every delayed event of every instance, delivered as an ordinary event when due.

Decision log:

- The timer table is the truth. One loop sleeps (on the injected clock) until the earliest due
  timer, or until woken because a commit changed the table; due timers are delivered through the
  instance service like any event (no ``allowWrite``). The delivery's transition and the timer's
  removal commit in one transaction, so a timer fires once in effect: a crash before that commit
  leaves the row, and it is delivered after the restart (at once, since it is overdue).
- Deadlines are absolute: after downtime a timer fires at its original due time, or at once if that
  has passed (not "the remaining delay after restart"; statelyai/xstate#5331 lists the options).
- Deadlines are absolute wall-clock times, so a step of the wall clock moves them in real time:
  stepped back, a timer fires when the clock reaches its due time again (later in real time);
  stepped forward past it, it fires at once. The loop looks at the clock again at least every
  ``CLOCK_RECHECK_S`` while it waits (a clock read, no query), so a step forward is noticed then,
  not when a sleep computed before the step ends (which could be days later).
- A failed delivery (paused instance, a machine that throws, a timeout) is retried with backoff up
  to ``MAX_RETRIES`` times, then dropped with a log line for the machine's author.
- A delivery that fails because the database does (a full disk, an I/O error, PostgreSQL
  unreachable: ``Unavailable``) is not the timer's fault: it counts no attempt and writes nothing
  (that write would fail too); the timer is held back in memory for ``UNAVAILABLE_RETRY_S`` (real
  time: the storage recovers in real time) and tried again, for as long as the fault lasts. A
  timer is never dropped because the disk was full.
- A timer cancelled while its delivery waits (a round of the open window cancelled it) is withdrawn
  before it runs (the delivery's precheck reads the row).
- Due timers and messages are delivered in batches (``BATCH``, one row per lane, i.e. per
  destination; docs/decisions.md, decision 103): the instance layer takes each idle
  destination (the mailbox queues later requests behind it), reads the batch's destination rows in
  one query, steps the instances of one machine version in one executor call per VM (their live actors,
  or fresh sandboxes in pristine mode) and commits their rounds concurrently, which the store's
  group commit writes as one transaction. Such a delivery opens its destination's window, so it has
  no precheck: the round's commit deletes the timer row or fails (nothing committed, no effect run),
  so a cancelled timer is still never delivered, and a crash between claim and commit leaves the
  row to be delivered again. A spawn, a destination busy with another window, a paused, missing or
  to-be-upgraded one, and every row on a shared database (a window needs its lease) take the
  ordinary path, one window each. A lone timer is a batch of one: it fires when the loop's sleep
  until its due time ends (no polling).
- Messages between instances and spawns of persistent children are timer rows of their sender with
  a target (wire-api 7.6). Deliveries to one destination run one after another, in row order, so
  a child is created before the events its parent sent it in the same transition arrive.
- Several nodes on one database (PostgreSQL): each node claims due timers with ``FOR UPDATE SKIP
  LOCKED`` (``Store.claim_due_timers``), so racing nodes take disjoint rows; a claim lapses after
  the longest a delivery can take, and another node then delivers the timer. Should two nodes
  still both deliver one (a claim lapsed under a slow node), the round that deletes the row first
  wins and the other's round fails before anything of it is committed or performed. Nodes poll
  every ``POLL_S`` besides waking on their own commits: a timer set on a node that then died is
  delivered by another within that time of its due time (or of its claim lapsing). The order of
  deliveries to one destination holds within a node; across nodes a message that arrives before
  its receiver exists is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from runtime import Clock

from .errors import Unavailable
from .instances import InstanceService, TimerDelivery
from .loops import repeat
from .store import LogRecord, Store, TimerRow

__all__ = ["FIRST_RETRY_MS", "MAX_RETRIES", "MAX_RETRY_MS", "PAUSED_RETRY_MS", "TimerService"]

log = logging.getLogger("statehost.timers")

MAX_RETRIES = 5
"""Failed deliveries are retried this many times, then the timer is dropped (State Backed: 5)."""
FIRST_RETRY_MS = 1_000
BACKOFF_FACTOR = 4
MAX_RETRY_MS = 30_000
PAUSED_RETRY_MS = 30_000
"""A paused instance is retried about 30 s apart (wire-api 3.9)."""
CLAIM_BATCH = 256
MAX_CONCURRENT = 256
BATCH = 64
"""Due timers and messages are delivered in batches of at most this many (one per lane: one per
destination); a claim of CLAIM_BATCH makes several, so that sandbox work and commits overlap."""
UNAVAILABLE_RETRY_S = 1.0
"""A timer whose delivery met a storage fault is tried again after this long (real time)."""
CLOCK_RECHECK_S = 1.0
"""While waiting for the next due timer, look at the clock at least this often (real time)."""
POLL_S = 1.0
"""On a shared database, how often a node looks for timers that other nodes set (real time)."""


def retry_delay_ms(attempts: int, paused: bool) -> int:
    """Delay before retry number ``attempts`` (1-based)."""
    if paused:
        return PAUSED_RETRY_MS
    return int(min(MAX_RETRY_MS, FIRST_RETRY_MS * BACKOFF_FACTOR ** (attempts - 1)))


class TimerService:
    def __init__(
        self, store: Store, instances: InstanceService, clock: Clock, node_id: str = "", claim_ttl_ms: int = 0
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.claim_ttl_ms = claim_ttl_ms
        """Shared database: how long this node's claim on a due timer lasts (its longest delivery)."""
        self.instances = instances
        self.clock = clock
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._lanes: dict[tuple[object, ...], asyncio.Task[None]] = {}
        """Per destination, the latest delivery task: the next one waits for it."""
        self.delivered = 0
        self.dropped = 0
        self.held_back = 0
        self.waiting_for: int | None = None
        """While the loop waits: the due time it waits for (None: only for a wake-up)."""
        """Deliveries put off because the database failed (no attempt counted)."""

    def wake(self) -> None:
        """The timer table changed: look again for the earliest due timer."""
        self._wake.set()

    async def run(self) -> None:
        try:
            # A failed round (the database unreachable) leaves the timers in it: tried again in 1 s.
            await repeat(self._round, pause_s=0, retry_s=1.0, what="looking for due timers", log=log)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _round(self) -> None:
        """Start the deliveries of the timers due now; then wait until the next one is due, or a
        commit changed the table (or, on a shared database, for at most POLL_S)."""
        self._wake.clear()
        now = self.clock.now_ms()
        if self.store.shared:
            due = await self.store.claim_due_timers(
                now, CLAIM_BATCH, self.node_id, self.claim_ttl_ms, exclude=self._in_flight
            )
        else:
            due = await self.store.due_timers(now, CLAIM_BATCH, exclude=self._in_flight)
        batch: list[TimerRow] = []
        batch_lanes: set[tuple[object, ...]] = set()
        batching = not self.store.shared  # several nodes: a window per timer, under its lease
        for row in due:
            await self._slots.acquire()
            self._in_flight.add(row.id)
            lane = _lane(row)
            if batching and _batchable(row) and lane not in self._lanes and lane not in batch_lanes:
                batch.append(row)
                batch_lanes.add(lane)
                if len(batch) == BATCH:
                    self._start_batch(batch)
                    batch, batch_lanes = [], set()
                continue
            if lane in batch_lanes:  # it goes after its lane's earlier row, which is in the batch
                self._start_batch(batch)
                batch, batch_lanes = [], set()
            self._start(lane, self._deliver(row, self._lanes.get(lane)), f"statehost-timer-{row.id}", (lane,))
        if batch:
            self._start_batch(batch)
        if len(due) == CLAIM_BATCH:
            return
        next_due = await self.store.next_timer_due(exclude=self._in_flight)
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
        if next_due is not None:
            waits.append(asyncio.ensure_future(_sleep_until(self.clock, next_due)))
        if self.store.shared:
            waits.append(asyncio.ensure_future(asyncio.sleep(POLL_S)))
        self.waiting_for = next_due
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting_for = None
            for waiter in waits:
                waiter.cancel()

    def _start_batch(self, rows: list[TimerRow]) -> None:
        lanes = tuple(_lane(row) for row in rows)
        self._start(lanes[0], self._deliver_batch(rows), f"statehost-timers-{rows[0].id}+{len(rows) - 1}", lanes)

    def _start(
        self,
        lane: tuple[object, ...],
        work: Coroutine[Any, Any, None],
        name: str,
        lanes: tuple[tuple[object, ...], ...],
    ) -> None:
        """Run one delivery task; the next delivery to any of ``lanes`` waits for it."""
        task = asyncio.create_task(work, name=name)
        for each in lanes:
            self._lanes[each] = task
            task.add_done_callback(functools.partial(self._lane_done, each))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lane_done(self, lane: tuple[object, ...], task: asyncio.Task[None]) -> None:
        if self._lanes.get(lane) is task:
            del self._lanes[lane]

    async def _deliver(self, row: TimerRow, after: asyncio.Task[None] | None = None) -> None:
        outcome: TimerDelivery | Exception
        try:
            if after is not None:
                await asyncio.wait([after])
            outcome = await self.instances.deliver_timer(row)
        except asyncio.CancelledError:
            self._forget(row)
            raise
        except Exception as exc:
            outcome = exc
        await self._settle(row, outcome)

    async def _deliver_batch(self, rows: list[TimerRow]) -> None:
        """Timers and messages to different instances delivered together: the instance layer
        groups them by machine version, steps each group in one sandbox call and commits their
        rounds in one transaction (docs/decisions.md, decision 103)."""
        outcomes: Sequence[TimerDelivery | Exception]
        try:
            outcomes = await self.instances.deliver_timers(rows)
        except asyncio.CancelledError:
            for row in rows:
                self._forget(row)
            raise
        except Exception as exc:
            outcomes = [exc] * len(rows)
        await asyncio.gather(*(self._settle(row, outcome) for row, outcome in zip(rows, outcomes, strict=True)))

    def _forget(self, row: TimerRow) -> None:
        self._in_flight.discard(row.id)
        self._slots.release()

    async def _settle(self, row: TimerRow, outcome: TimerDelivery | Exception) -> None:
        """What a delivery's outcome means for its row: nothing (delivered), removed, retried later,
        or held back in memory while the database fails."""
        hold_s = 0.0
        try:
            if isinstance(outcome, Unavailable):  # the delivery's own write met a storage fault
                raise outcome
            if isinstance(outcome, Exception):
                log.error("timer %s: delivery failed", row.id, exc_info=outcome)
                await self._retry(row, paused=False)
            elif outcome == "delivered":
                self.delivered += 1
            elif outcome == "gone":
                if await self.store.timer_exists(row.id):
                    await self.store.drop_timer(row.id, None)
            elif outcome == "unavailable":
                self.held_back += 1
                hold_s = UNAVAILABLE_RETRY_S
            else:
                await self._retry(row, paused=outcome == "retry-paused")
        except asyncio.CancelledError:
            raise
        except Unavailable as exc:  # the bookkeeping write itself met the storage fault
            log.warning("timer %s: held back, the database failed: %s", row.id, exc)
            self.held_back += 1
            hold_s = UNAVAILABLE_RETRY_S
        except Exception:
            log.exception("timer %s: delivery failed", row.id)
            try:
                await self._retry(row, paused=False)
            except Unavailable as exc:
                log.warning("timer %s: held back, the database failed: %s", row.id, exc)
                self.held_back += 1
                hold_s = UNAVAILABLE_RETRY_S
        finally:
            try:
                if hold_s:  # still in flight meanwhile: the loop does not pick the row up again
                    await asyncio.sleep(hold_s)
            finally:
                self._forget(row)
                self.wake()

    async def _retry(self, row: TimerRow, paused: bool) -> None:
        attempts = row.attempts + 1
        if attempts <= MAX_RETRIES:
            await self.store.retry_timer(row.id, self.clock.now_ms() + retry_delay_ms(attempts, paused), attempts)
            return
        self.dropped += 1
        instance = await self.store.instance_by_id(row.instance_id)
        what = f"timer {row.key} ({row.event.get('type')})"
        if row.target is not None:
            kind = "spawn of" if row.target.get("kind") == "spawn" else f"event {row.event.get('type')!r} to"
            what = f"{kind} {row.target.get('machineName')}/{row.target.get('machineInstanceName')}"
        line = LogRecord(
            self.clock.now_ms(), "stderr", "engine", f"[statehost] {what} dropped after {attempts} failed deliveries"
        )
        context = None
        if instance is not None:
            context = (instance.org_id, instance.machine_slug, instance.name, instance.version_id, line)
        await self.store.drop_timer(row.id, context)


async def _sleep_until(clock: Clock, when_ms: int) -> None:
    """``clock.sleep_until``, but looking at the clock again every CLOCK_RECHECK_S: a wall clock
    stepped forward past ``when_ms`` ends the wait then (a sleep for the remaining time, computed
    before the step, would not)."""
    while clock.now_ms() < when_ms:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(clock.sleep_until(when_ms), CLOCK_RECHECK_S)


def _batchable(row: TimerRow) -> bool:
    """Timers and messages go in batches; a spawn (a create) takes the ordinary path."""
    return row.target is None or row.target.get("kind") != "spawn"


def _lane(row: TimerRow) -> tuple[object, ...]:
    """Deliveries that must keep their order: those to one destination instance."""
    if row.target is None:
        return ("self", row.instance_id)
    return ("to", row.target.get("machineName"), row.target.get("machineInstanceName"))
