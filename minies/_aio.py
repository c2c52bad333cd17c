"""The store for asyncio: every method a coroutine, run on worker threads, never on the loop.

SQLite and fsync block; an event loop must not. ``AsyncEventStore`` runs each call of the
blocking ``EventStore`` on a small pool of threads, so many tasks appending at once queue
behind one commit and share the next one (group commit, see ``EventStore._grouped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, ParamSpec, TypeVar

from minies._aggregate import Aggregate
from minies._audit import VerifyReport
from minies._events import Recorded
from minies._projections import RebuildReport
from minies._store import Erasure, EventStore

A = TypeVar("A", bound=Aggregate)
P = ParamSpec("P")
T = TypeVar("T")
_PAGE: Final = 500
_FOLLOW_PAGE: Final = 100  # ``follow`` looks at ``stop`` between pages of this many events


class AsyncEventStore:
    """``EventStore`` with coroutines: ``async with minies.AsyncEventStore("shop.db") as store``.

    Takes the same arguments as ``EventStore`` (opened on a worker thread, as projections may
    catch up on open), plus ``workers``: how many threads run calls (8 by default).

    Cancelling a task that awaits ``append`` or ``save`` does not cancel the write: it runs to
    its end on its thread and may commit. Retry with the same ``event_ids`` if you must know.
    """

    def __init__(self, path: str | os.PathLike[str], *, workers: int = 8, **options: Any) -> None:
        self._open = functools.partial(EventStore, path, **options)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minies")
        self._store: EventStore | None = None

    @property
    def store(self) -> EventStore:
        """The blocking store underneath (for code that already runs on a thread)."""
        if self._store is None:
            raise RuntimeError("the store is not open: use `async with AsyncEventStore(...)` or `await store.open()`")
        return self._store

    async def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    async def open(self) -> AsyncEventStore:
        """Open the store (``async with`` does it for you)."""
        if self._store is None:
            self._store = await self._run(self._open)
        return self

    async def close(self) -> None:
        """Checkpoint and close the store, then stop the worker threads."""
        if self._store is not None:
            await self._run(self._store.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncEventStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ the store's methods
    async def append(self, aggregate_id: str, events: Any, **options: Any) -> int:
        """``EventStore.append``: its arguments, its errors; returns once durable."""
        return await self._run(self.store.append, aggregate_id, events, **options)

    async def save(self, aggregate: Aggregate, metadata: Any = None) -> int:
        """``EventStore.save``."""
        return await self._run(self.store.save, aggregate, metadata)

    async def load(self, cls: type[A], aggregate_id: str, *, upto: int | None = None) -> A:
        """``EventStore.load``."""
        return await self._run(self.store.load, cls, aggregate_id, upto=upto)

    async def version(self, aggregate_id: str) -> int:
        """``EventStore.version``."""
        return await self._run(self.store.version, aggregate_id)

    async def head(self) -> tuple[int, str]:
        """``EventStore.head``."""
        return await self._run(self.store.head)

    async def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """``EventStore.query``."""
        return await self._run(self.store.query, sql, params)

    async def aggregates(self, aggregate_type: Any = None) -> list[tuple[str, str, int]]:
        """``EventStore.aggregates``."""
        return await self._run(self.store.aggregates, aggregate_type)

    async def verify(self, *, expect_head: str | None = None) -> VerifyReport:
        """``EventStore.verify``."""
        return await self._run(self.store.verify, expect_head=expect_head)

    async def forget(self, subject: str, **options: Any) -> Erasure:
        """``EventStore.forget``: destroy a data subject's keys."""
        return await self._run(self.store.forget, subject, **options)

    async def rebuild(self, name: str) -> RebuildReport:
        """``EventStore.rebuild``."""
        return await self._run(self.store.rebuild, name)

    # ------------------------------------------------------------------ reading
    def read(self, aggregate_id: str, **options: Any) -> AsyncIterator[Recorded]:
        """``async for event in store.read(aggregate_id)``: ``EventStore.read``, a page at a time."""
        return self._pages(functools.partial(self.store.read, aggregate_id, **options))

    def read_all(self, **options: Any) -> AsyncIterator[Recorded]:
        """``async for event in store.read_all()``: ``EventStore.read_all``, a page at a time."""
        return self._pages(functools.partial(self.store.read_all, **options))

    async def _pages(self, start: Callable[[], Iterator[Recorded]]) -> AsyncIterator[Recorded]:
        records = await self._run(start)
        while page := await self._run(lambda: list(itertools.islice(records, _PAGE))):
            for record in page:
                yield record

    # ------------------------------------------------------------------ subscriptions
    async def follow(
        self,
        name: str,
        handler: Callable[[Recorded], object | Awaitable[object]],
        *,
        stop: asyncio.Event | None = None,
        idle_timeout: float | None = None,
        max_wait: float = 0.25,
        **options: Any,
    ) -> int:
        """Deliver events to ``handler`` (a function or a coroutine function) as they come.

        The subscription named ``name`` keeps its checkpoint, retries and dead letters as
        ``EventStore.subscription(name, **options)`` does. A coroutine handler runs on the loop
        and is awaited before the next event: what it raises is retried, then parked as a dead
        letter, and the checkpoint moves only past handlers that finished. ``stop`` is looked
        at between pages of 100 events. Cancelling the task lets the handler in hand finish,
        delivers nothing more, and ends with no thread left polling; the events of the
        unacknowledged page come again to the next ``follow`` (at-least-once).

        Returns:
            How many events were delivered, once ``stop`` is set or nothing came for
            ``idle_timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        subscription = self.store.subscription(name, **options)
        halted = threading.Event()  # the task was cancelled: deliver nothing more

        def deliver(record: Recorded) -> None:
            if halted.is_set():
                raise _Halted  # not an Exception: no retry, no dead letter, the page not acknowledged
            result = handler(record)
            if inspect.isawaitable(result):  # awaited on the loop; its exception is the handler's
                asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()

        delivered = 0
        wait = 0.005
        idle_since = loop.time()
        while stop is None or not stop.is_set():
            page = loop.run_in_executor(self._pool, functools.partial(subscription.poll, deliver, limit=_FOLLOW_PAGE))
            try:
                n = await asyncio.shield(page)
            except asyncio.CancelledError:
                # The page's thread is not interrupted: it stops before its next event, and
                # the task ends once it has (what was delivered but not acknowledged comes again).
                halted.set()
                with contextlib.suppress(_Halted):
                    await asyncio.wait([page])
                    page.result()
                raise
            if n:
                delivered += n
                idle_since, wait = loop.time(), 0.005
                continue
            if idle_timeout is not None and loop.time() - idle_since >= idle_timeout:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait)
        return delivered


class _Halted(BaseException):
    """Raised inside a cancelled ``follow``'s page to end it (not an error of the handler's)."""


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
