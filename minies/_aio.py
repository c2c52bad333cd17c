"""The store for asyncio: every method a coroutine, run on worker threads, never on the loop.

SQLite and fsync block; an event loop must not. ``AsyncEventStore`` runs each call of the
blocking ``EventStore`` on a small pool of threads, so many tasks appending at once queue
behind one commit and share the next one (group commit, see ``EventStore._grouped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
from minies._erasure import Erasure
from minies._events import Event, Recorded, Sealed
from minies._log import StoreInfo
from minies._projections import RebuildReport
from minies._store import EventStore
from minies._wire import SyncReport

A = TypeVar("A", bound=Aggregate)
P = ParamSpec("P")
S = TypeVar("S")
T = TypeVar("T")
_PAGE: Final = 500
_FOLLOW_PAGE: Final = 100  # ``follow`` looks at ``stop`` between pages of this many events


class AsyncEventStore:
    """``EventStore`` with coroutines: ``async with minies.AsyncEventStore("shop.db") as store``.

    Takes the same arguments as ``EventStore`` (opened on a worker thread, as projections may
    catch up on open), plus ``workers``: how many threads run calls (8 by default). It has
    every public method of ``EventStore``: the blocking ones as coroutines, ``read`` and
    ``read_all`` as async iterators, ``transaction()`` as an async context manager, and
    ``subscription``/``processor`` as objects whose methods are coroutines.

    Every call runs in the caller's context (``metadata_scope`` reaches the events). Reads
    of a file go through a second, read-only connection, so they never wait behind a commit;
    they still see every write that returned before them (SQLite's WAL). Inside
    ``async with store.transaction()`` every call of the task runs on the transaction's own
    thread, on the writer's connection.

    Cancelling a task that awaits ``append`` or ``save`` does not cancel the write: it runs to
    its end on its thread and may commit. Retry with the same ``event_ids`` if you must know.
    """

    def __init__(self, path: str | os.PathLike[str], *, workers: int = 8, **options: Any) -> None:
        self._open = functools.partial(EventStore, path, **options)
        self._path = path
        self._options = options
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minies")
        self._store: EventStore | None = None
        self._reader: EventStore | None = None
        self._inside: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar(
            "minies_transaction", default=None
        )

    @property
    def store(self) -> EventStore:
        """The blocking store underneath (for code that already runs on a thread)."""
        if self._store is None:
            raise RuntimeError("the store is not open: use `async with AsyncEventStore(...)` or `await store.open()`")
        return self._store

    async def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function`` on a worker thread (the transaction's, inside one), in this context."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
        return await loop.run_in_executor(self._inside.get() or self._pool, call)

    def _reading(self) -> EventStore:
        """The store reads go to: the read-only connection, except inside a transaction."""
        if self._reader is None or self._inside.get() is not None:
            return self.store
        return self._reader

    async def open(self) -> AsyncEventStore:
        """Open the store (``async with`` does it for you)."""
        if self._store is None:
            self._store = await self._run(self._open)
            if self._store._backend.where != ":memory:" and not self._store.readonly:
                keep = {k: v for k, v in self._options.items() if k in ("timeout", "key_encryption_key")}
                self._reader = await self._run(EventStore, self._path, readonly=True, **keep)
        return self

    async def close(self) -> None:
        """Checkpoint and close the store, then stop the worker threads."""
        if self._reader is not None:
            await self._run(self._reader.close)
        if self._store is not None:
            await self._run(self._store.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncEventStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ writing
    async def append(self, aggregate_id: str, events: Any, **options: Any) -> int:
        """``EventStore.append``: its arguments, its errors; returns once durable."""
        return await self._run(self.store.append, aggregate_id, events, **options)

    async def save(self, aggregate: Aggregate, metadata: Any = None) -> int:
        """``EventStore.save``."""
        return await self._run(self.store.save, aggregate, metadata)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncEventStore]:
        """``async with store.transaction():`` commit every append and save inside the block
        atomically, or none of them (``EventStore.transaction``).

        The block's calls run on a thread of its own, which holds the store: other tasks'
        writes wait for the block to end, so keep it short (load, decide, save). An exception
        (a cancellation too) rolls it back.
        """
        loop = asyncio.get_running_loop()
        own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minies-transaction")
        block = self.store.transaction()
        try:
            await loop.run_in_executor(own, contextvars.copy_context().run, block.__enter__)
            token = self._inside.set(own)
            try:
                yield self
            except BaseException as e:
                self._inside.reset(token)
                await asyncio.shield(loop.run_in_executor(own, block.__exit__, type(e), e, e.__traceback__))
                raise
            self._inside.reset(token)
            await loop.run_in_executor(own, block.__exit__, None, None, None)
        finally:
            own.shutdown(wait=False)

    async def forget(self, subject: str, **options: Any) -> Erasure:
        """``EventStore.forget``: destroy a data subject's keys."""
        return await self._run(self.store.forget, subject, **options)

    async def rebuild(self, name: str, **options: Any) -> RebuildReport:
        """``EventStore.rebuild``."""
        return await self._run(self.store.rebuild, name, **options)

    async def drop_snapshots(self, aggregate_type: Any) -> int:
        """``EventStore.drop_snapshots``."""
        return await self._run(self.store.drop_snapshots, aggregate_type)

    async def backup(self, path: str | os.PathLike[str]) -> None:
        """``EventStore.backup``."""
        await self._run(self.store.backup, path)

    # ------------------------------------------------------------------ one answer each
    async def load(self, cls: type[A], aggregate_id: str, *, upto: int | None = None) -> A:
        """``EventStore.load``."""
        return await self._run(self._reading().load, cls, aggregate_id, upto=upto)

    async def fold(
        self,
        aggregate_id: str,
        evolve: Callable[[S, Event], S],
        initial: S,
        *,
        aggregate_type: str | None = None,
        upto: int | None = None,
    ) -> tuple[S, int]:
        """``EventStore.fold``."""
        reader = self._reading()
        return await self._run(reader.fold, aggregate_id, evolve, initial, aggregate_type=aggregate_type, upto=upto)

    async def version(self, aggregate_id: str) -> int:
        """``EventStore.version``."""
        return await self._run(self._reading().version, aggregate_id)

    async def head(self) -> tuple[int, str]:
        """``EventStore.head``."""
        return await self._run(self._reading().head)

    async def info(self) -> StoreInfo:
        """``EventStore.info``."""
        return await self._run(self._reading().info)

    async def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """``EventStore.query``."""
        return await self._run(self._reading().query, sql, params)

    async def aggregates(self, aggregate_type: Any = None) -> list[tuple[str, str, int]]:
        """``EventStore.aggregates``."""
        return await self._run(self._reading().aggregates, aggregate_type)

    async def event_types(self) -> list[tuple[str, int, int]]:
        """``EventStore.event_types``."""
        return await self._run(self._reading().event_types)

    async def check_events(self, **options: Any) -> list[tuple[int, str, str]]:
        """``EventStore.check_events``."""
        return await self._run(self._reading().check_events, **options)

    async def snapshot_stats(self) -> list[tuple[str, int, int]]:
        """``EventStore.snapshot_stats``."""
        return await self._run(self._reading().snapshot_stats)

    async def seal(self, private_key: Any, **options: Any) -> Sealed:
        """``EventStore.seal``: sign the head."""
        return await self._run(self.store.seal, private_key, **options)

    async def verify(self, **options: Any) -> VerifyReport:
        """``EventStore.verify``."""
        return await self._run(self.store.verify, **options)

    async def sync(self, hub: Any, **options: Any) -> SyncReport:
        """``EventStore.sync``: meet the hub (a ``retry`` policy gets the blocking store)."""
        return await self._run(self.store.sync, hub, **options)

    async def pending(self) -> list[Recorded]:
        """``EventStore.pending``."""
        return await self._run(self.store.pending)

    async def rejections(self, **options: Any) -> list[Recorded]:
        """``EventStore.rejections``."""
        return await self._run(self.store.rejections, **options)

    # ------------------------------------------------------------------ reading
    def read(self, aggregate_id: str, **options: Any) -> AsyncIterator[Recorded]:
        """``async for event in store.read(aggregate_id)``: ``EventStore.read``, a page at a time."""
        return self._pages(functools.partial(self._reading().read, aggregate_id, **options))

    def read_all(self, **options: Any) -> AsyncIterator[Recorded]:
        """``async for event in store.read_all()``: ``EventStore.read_all``, a page at a time."""
        return self._pages(functools.partial(self._reading().read_all, **options))

    async def _pages(self, start: Callable[[], Iterator[Recorded]]) -> AsyncIterator[Recorded]:
        records = await self._run(start)
        while page := await self._run(lambda: list(itertools.islice(records, _PAGE))):
            for record in page:
                yield record

    # ------------------------------------------------------------------ subscriptions
    def subscription(self, name: str, **options: Any) -> Coroutines:
        """``EventStore.subscription``, its methods as coroutines (``await sub.poll(handler)``);
        to deliver as events come, ``follow``."""
        return Coroutines(self, self.store.subscription(name, **options))

    def processor(self, name: str, handler: Callable[[Recorded, EventStore], object], **options: Any) -> Coroutines:
        """``EventStore.processor``, its methods as coroutines (``await processor.run()``). The
        handler is called on a worker thread with the blocking store, inside the page's
        transaction."""
        return Coroutines(self, self.store.processor(name, handler, **options))

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


class Coroutines:
    """A blocking object (a subscription, a processor) whose methods are awaited: each call
    runs on the store's worker threads; attributes that are not methods read as they are."""

    def __init__(self, store: AsyncEventStore, target: object) -> None:
        self._store = store
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        return functools.partial(self._store._run, attribute)

    def __repr__(self) -> str:
        return f"<awaitable {self._target.__class__.__name__} {getattr(self._target, 'name', '')!r}>"


class _Halted(BaseException):
    """Raised inside a cancelled ``follow``'s page to end it (not an error of the handler's)."""


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
