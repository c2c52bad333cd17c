"""Subscriptions: durable, named consumers of the log that run outside the write transaction.

Delivery is at-least-once, in position order: the checkpoint is written after the handler
succeeds, so a crash re-delivers at most the last unacknowledged batch. Because positions are
gap-free and commit in order, resuming from a checkpoint never skips an event.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

import msgspec

from minies import _codec
from minies._errors import MiniesError, NotFound, StorageError
from minies._events import Event, Recorded, type_names
from minies._transactions import Transactions


class Log(Protocol):
    """What a consumer reads and writes through (an ``Log``): the log, and the store's
    transactions, where a processor's page commits with its outputs."""

    @property
    def _tx(self) -> Transactions: ...

    def head(self) -> tuple[int, str]: ...

    def read_all(
        self,
        *,
        after: int = ...,
        limit: int | None = ...,
        event_types: Iterable[str | type[Event]] | None = ...,
        raw: bool = ...,
    ) -> Iterator[Recorded]: ...

    def transaction(self) -> AbstractContextManager[Any]: ...


Handler = Callable[[Recorded], object]
Parked = tuple[int, int, str]  # (position, attempts, error) of a dead letter
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
    silently: parked events can be delivered again (``redeliver``) or let go (``discard``),
    and ``rewind`` moves the checkpoint back to replay history.
    """

    def __init__(
        self,
        store: Log,
        name: str,
        *,
        max_attempts: int = 3,
        event_types: Iterable[str | type[Event]] | None = None,
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.store = store
        self.name = name
        self.max_attempts = max_attempts
        self.event_types = None if event_types is None else type_names(event_types)

    @property
    def position(self) -> int:
        """The last acknowledged position (0 if none)."""
        with self.store._tx.lock:
            value = self.store._tx.open().execute(self.store._tx.sql.SUBSCRIPTION_POSITION, (self.name,)).get
        return int(value or 0)

    def poll(self, handler: Handler, *, limit: int | None = None) -> int:
        """Deliver every event after the checkpoint (at most ``limit``); return how many.

        Raises:
            MiniesError: called inside ``store.transaction()``, whose events may still roll back.
        """
        return self._consume(lambda record: self._deliver(handler, record), limit, atomic=False, verb="poll")

    def _consume(
        self, deliver: Callable[[Recorded], Parked | None], limit: int | None, *, atomic: bool, verb: str
    ) -> int:
        """Deliver pages of events after the checkpoint, acknowledging each page.

        ``atomic``: each page, what ``deliver`` writes and the checkpoint commit in one
        transaction (a processor's exactly-once); else the checkpoint follows the deliveries.
        """
        store = self.store
        with store._tx.lock:
            if store._tx.depth:
                kind = "processor" if atomic else "subscription"
                raise MiniesError(
                    f"{kind} {self.name!r} cannot {verb} inside store.transaction(): it would deliver events "
                    f"that may still roll back; {verb} after the block"
                )
        delivered = 0
        while limit is None or delivered < limit:
            want = _BATCH if limit is None else min(_BATCH, limit - delivered)
            with contextlib.ExitStack() as page:
                if atomic:
                    page.enter_context(store._tx.lock)
                    page.enter_context(store._tx.write())
                    self._claim()
                after = self.position  # inside the page's transaction: one processor at a time
                head = store.head()[0]
                batch = list(store.read_all(after=after, limit=want, event_types=self.event_types))
                if not batch and head <= after:
                    break
                parked = [deliver(record) for record in batch]
                # A short page means everything up to the head seen before it was read was
                # scanned, including the events the filter left out.
                after = batch[-1].position if len(batch) == want else max(head, batch[-1].position if batch else 0)
                self._acknowledge(after, [p for p in parked if p])
            delivered += len(batch)
            if len(batch) < want:
                break
        return delivered

    def _claim(self) -> None:
        """Inside a write: wait until no other store runs this consumer's page (the backends
        differ in what their write transaction locks)."""
        with self.store._tx.translate(f"cannot claim {self.name!r}"):
            self.store._tx.conn.execute(self.store._tx.sql.CLAIM_CONSUMER, (self.name,))

    def _acknowledge(self, position: int, parked: list[Parked]) -> None:
        now = _codec.now_text()
        with self.store._tx.lock, self.store._tx.write():
            conn = self.store._tx.conn
            conn.executemany(self.store._tx.sql.PARK, [(self.name, *p, now) for p in parked])
            conn.execute(self.store._tx.sql.SAVE_SUBSCRIPTION, (self.name, position, now))

    def _deliver(self, handler: Handler, record: Recorded, attempts: int = 0) -> Parked | None:
        for attempt in range(attempts + 1, attempts + self.max_attempts + 1):
            try:
                handler(record)
                return None
            except StorageError:  # the store failed, not this event: the page stops, retried next run
                raise
            except Exception as e:
                if attempt == attempts + self.max_attempts:
                    error = "".join(traceback.format_exception_only(e)).strip()
                    return (record.position, attempt, error)
                time.sleep(min(0.01 * 2 ** (attempt - attempts), 0.5))
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
        connections' commits are noticed through the backend's commit counter (SQLite: ``PRAGMA
        data_version``, a look at the WAL index in shared memory; PostgreSQL: the head row),
        checked with a backoff of up to ``max_wait`` seconds.

        Args:
            handler: called once per event, in position order.
            stop: set it (from another thread) to make ``follow`` return.
            idle_timeout: return after this many seconds with nothing new.

        Returns:
            How many events were delivered.
        """
        return following(self.store, lambda: self.poll(handler), stop, idle_timeout, max_wait)

    def dead_letters(self) -> list[DeadLetter]:
        """Events parked after ``max_attempts`` failures, oldest first."""
        with self.store._tx.lock:
            rows: list[Any] = self.store._tx.open().execute(self.store._tx.sql.DEAD_LETTERS, (self.name,)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def redeliver(self, handler: Handler, position: int | None = None) -> int:
        """Deliver parked events again (all of them, or the one at ``position``), in order.

        Each gets ``max_attempts`` more tries; one that succeeds leaves the dead-letter table,
        one that fails again stays parked with its new error and attempt count.

        Returns:
            How many were delivered successfully.

        Raises:
            NotFound: ``position`` is not parked for this subscription.
        """
        letters = self.dead_letters()
        if position is not None:
            letters = [letter for letter in letters if letter.position == position]
            if not letters:
                raise NotFound(f"position {position} is not parked for subscription {self.name!r}")
        succeeded = 0
        for letter in letters:
            [record] = self.store.read_all(after=letter.position - 1, limit=1)
            parked = self._deliver(handler, record, letter.attempts)
            now = _codec.now_text()
            with self.store._tx.lock, self.store._tx.write():
                if parked is None:
                    self.store._tx.conn.execute(self.store._tx.sql.UNPARK, (self.name, letter.position))
                else:
                    self.store._tx.conn.execute(self.store._tx.sql.PARK, (self.name, *parked, now))
            succeeded += parked is None
        return succeeded

    def discard(self, position: int) -> None:
        """Let one parked event go for good (it stays in the log, of course).

        Raises:
            NotFound: ``position`` is not parked for this subscription.
        """
        with self.store._tx.lock, self.store._tx.write():
            self.store._tx.conn.execute(self.store._tx.sql.UNPARK, (self.name, position))
            if not self.store._tx.conn.changes():
                raise NotFound(f"position {position} is not parked for subscription {self.name!r}")

    def rewind(self, position: int = 0) -> None:
        """Move the checkpoint to ``position`` (0: the start): later events are delivered again.

        Raises:
            ValueError: ``position`` is negative or beyond the log's head.
        """
        head = self.store.head()[0]
        if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= head:
            raise ValueError(f"position must be an int from 0 to the head ({head}), got {position!r}")
        self._acknowledge(position, [])


def following(
    store: Log,
    step: Callable[[], int],
    stop: threading.Event | None,
    idle_timeout: float | None,
    max_wait: float,
) -> int:
    """Run ``step`` (which delivers what is new and says how much) at every wake-up until
    ``stop`` is set or nothing arrived for ``idle_timeout`` seconds; return the total."""
    total = 0
    idle_since = time.monotonic()

    def done() -> bool:
        if stop is not None and stop.is_set():
            return True
        return idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout

    for _ in store._tx.wakeups(done, max_wait):
        n = step()
        if n:
            total += n
            idle_since = time.monotonic()
    return total
