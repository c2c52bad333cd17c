"""Subscriptions: durable, named consumers of the log that run outside the write transaction.

Delivery is at-least-once, in position order: the checkpoint is written after the handler
succeeds, so a crash re-delivers at most the last unacknowledged batch. Because positions are
gap-free and commit in order, resuming from a checkpoint never skips an event.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from minies import _codec, _schema
from minies._errors import MiniesError
from minies._events import Recorded

if TYPE_CHECKING:
    from minies._store import EventStore

Handler = Callable[[Recorded], object]
_BATCH: Final = 100


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a subscription's handler kept failing on, parked so the consumer could go on."""

    position: int
    attempts: int
    error: str
    parked_at: str


class Subscription:
    """A named consumer with a checkpoint in the file.

    A handler that raises is retried up to ``max_attempts`` times; then the event is parked in
    the dead-letter table (see ``dead_letters``) and delivery goes on. Nothing is skipped
    silently.
    """

    def __init__(self, store: EventStore, name: str, *, max_attempts: int = 3) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.store = store
        self.name = name
        self.max_attempts = max_attempts

    @property
    def position(self) -> int:
        """The last acknowledged position (0 if none)."""
        with self.store._lock:
            value = self.store._open().execute(_schema.SUBSCRIPTION_POSITION, (self.name,)).get
        return int(value or 0)

    def poll(self, handler: Handler, *, limit: int | None = None) -> int:
        """Deliver every event after the checkpoint (at most ``limit``); return how many."""
        with self.store._lock:
            if self.store._depth:
                raise MiniesError(
                    f"subscription {self.name!r} cannot poll inside store.transaction(): it would deliver "
                    "events that may still roll back; poll after the block"
                )
        delivered = 0
        after = self.position
        while limit is None or delivered < limit:
            want = _BATCH if limit is None else min(_BATCH, limit - delivered)
            batch = list(self.store.read_all(after=after, limit=want))
            if not batch:
                break
            parked = [self._deliver(handler, record) for record in batch]
            after = batch[-1].position
            now = _codec.now_text()
            with self.store._lock, self.store._write():
                conn = self.store._conn
                conn.executemany(_schema.PARK, [(self.name, *p, now) for p in parked if p])
                conn.execute(_schema.SAVE_SUBSCRIPTION, (self.name, after, now))
            delivered += len(batch)
        return delivered

    def _deliver(self, handler: Handler, record: Recorded) -> tuple[int, int, str] | None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                handler(record)
                return None
            except Exception as e:
                if attempt == self.max_attempts:
                    error = "".join(traceback.format_exception_only(e)).strip()
                    return (record.position, attempt, error)
                time.sleep(min(0.01 * 2**attempt, 0.5))
        return None

    def follow(
        self,
        handler: Handler,
        *,
        stop: threading.Event | None = None,
        idle_timeout: float | None = None,
        max_wait: float = 0.25,
    ) -> int:
        """Deliver events as they are appended, by this process or any other.

        Waits without re-reading the log: a commit through this store wakes it at once; other
        connections' commits are noticed through ``PRAGMA data_version`` (a look at the WAL
        index in shared memory), checked with a backoff of up to ``max_wait`` seconds.

        Args:
            handler: called once per event, in position order.
            stop: set it (from another thread) to make ``follow`` return.
            idle_timeout: return after this many seconds with nothing new.

        Returns:
            How many events were delivered.
        """
        store = self.store
        delivered = 0
        idle_since = time.monotonic()
        wait = 0.005
        seen = -1
        with store._lock:
            store._followers += 1
        try:
            while stop is None or not stop.is_set():
                with store._lock:
                    # Changes when another connection commits (https://sqlite.org/pragma.html#pragma_data_version)
                    version = store._open().pragma("data_version")
                if version != seen:
                    seen = version
                    n = self.poll(handler)
                    if n:
                        delivered += n
                        idle_since = time.monotonic()
                        wait = 0.005
                        continue
                if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                    break
                with store._changed:
                    if store._changed.wait(wait):
                        seen = -1
                wait = min(wait * 2, max_wait)
        finally:
            with store._lock:
                store._followers -= 1
        return delivered

    def dead_letters(self) -> list[DeadLetter]:
        """Events parked after ``max_attempts`` failures, oldest first."""
        with self.store._lock:
            rows: list[Any] = self.store._open().execute(_schema.DEAD_LETTERS, (self.name,)).fetchall()
        return [DeadLetter(*row) for row in rows]
