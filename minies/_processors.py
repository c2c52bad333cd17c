"""Processors: consumers that turn events into new events exactly once.

A subscription runs outside the write transaction, so a handler that appends ("OrderPlaced →
ReserveStock") may append twice after a crash. A processor's handler gets the store instead,
inside the transaction that also moves the processor's checkpoint: what it appends or saves
(and the projections those appends update) commits together with "this input is done", or
not at all. After a kill -9 the page being processed is rolled back and processed again, so
each input is processed exactly once as far as the file can see. Effects outside the store
(an e-mail, an HTTP call) are still at-least-once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from minies._events import Event, Recorded, metadata_scope
from minies._subscriptions import DeadLetter, Log, Parked, Subscription, following

ProcessHandler = Callable[[Recorded, Any], object]  # (record, the store)


class Processor:
    """A named, exactly-once consumer whose handler writes through the store.

    ``handler(record, store)`` appends or saves through ``store``; those writes get
    ``causation_id`` (the input's event id) and ``correlation_id`` (the input's, or its event
    id) in their metadata. Each input is handled in a savepoint of its own: a handler that
    raises leaves nothing behind, is retried up to ``max_attempts`` times, then the input is
    parked as a dead letter (``dead_letters``, ``redeliver``, ``discard``) and processing goes
    on. Every page of inputs, their outputs, the dead letters and the checkpoint commit in one
    transaction. Two processes running the same processor take turns, page by page.
    """

    def __init__(
        self,
        store: Log,
        name: str,
        handler: ProcessHandler,
        *,
        max_attempts: int = 3,
        event_types: Iterable[str | type[Event]] | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable as handler(record, store), got {handler!r:.80}")
        self.store = store
        self.name = name
        self.handler = handler
        self._checkpoint = Subscription(store, name, max_attempts=max_attempts, event_types=event_types)

    @property
    def position(self) -> int:
        """The last position processed (0 if none)."""
        return self._checkpoint.position

    def run(self, *, limit: int | None = None) -> int:
        """Process every event after the checkpoint (at most ``limit``); return how many.

        Raises:
            MiniesError: called inside ``store.transaction()``.
            StorageError: the file cannot be written (nothing of the page was committed).
        """
        return self._checkpoint._consume(self._process, limit, atomic=True, verb="run")

    def follow(
        self, *, stop: threading.Event | None = None, idle_timeout: float | None = None, max_wait: float = 0.25
    ) -> int:
        """Process events as they are appended, by this process or any other; see
        ``Subscription.follow`` for ``stop``, ``idle_timeout`` and ``max_wait``.

        Returns:
            How many events were processed.
        """
        return following(self.store, self.run, stop, idle_timeout, max_wait)

    def dead_letters(self) -> list[DeadLetter]:
        """Inputs parked after ``max_attempts`` failures, oldest first."""
        return self._checkpoint.dead_letters()

    def redeliver(self, position: int | None = None) -> int:
        """Process parked inputs again (all, or the one at ``position``); return how many
        succeeded. Each one's outputs and its leaving the dead letters commit together.

        Raises:
            NotFound: ``position`` is not parked for this processor.
        """
        store = self.store
        with store._tx.lock, store._tx.write():
            self._checkpoint._claim()
            return self._checkpoint.redeliver(self._handle, position)

    def discard(self, position: int) -> None:
        """Let one parked input go for good."""
        self._checkpoint.discard(position)

    def rewind(self, position: int = 0) -> None:
        """Move the checkpoint back: later inputs are processed again (their outputs too)."""
        self._checkpoint.rewind(position)

    def _process(self, record: Recorded) -> Parked | None:
        return self._checkpoint._deliver(self._handle, record)

    def _handle(self, record: Recorded) -> None:
        correlation = record.metadata.get("correlation_id", record.event_id)
        with self.store.transaction(), metadata_scope(causation_id=record.event_id, correlation_id=correlation):
            self.handler(record, self.store)
