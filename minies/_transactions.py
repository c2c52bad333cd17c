"""Every write of one store runs here, and every error of its connection is explained here.

- One write at a time per store (a re-entrant lock): ``BEGIN`` (SQLite: ``IMMEDIATE``) or,
  inside one, a ``SAVEPOINT``; then ``COMMIT``, or a rollback.
- Group commit: writes that arrive while one commits queue, and one leader commits them all
  in one transaction and one fsync, each in a savepoint of its own (a failed write rolls back
  only itself; a failed commit fails every write in it). Followers wait on their own write,
  never on the lock.
- Driver errors become ``MiniesError``s: the store may explain a clash with its own append
  (``explain``), the backend explains the rest.
- The commit counter and the condition that followers of the log wait on (``wakeups``).

It knows nothing of events, aggregates or read models: what a commit or a rollback means for
the store's caches, the store says in ``ended``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

from minies._backends import Backend, Connection
from minies._errors import MiniesError, SchemaError, StorageError

T = TypeVar("T")


class Transactions:
    """One store's connection, its lock and its transactions."""

    def __init__(
        self,
        backend: Backend,
        *,
        ended: Callable[[bool, bool], None],
        explain: Callable[[BaseException], MiniesError | None],
    ) -> None:
        """``ended(kept, committed)`` runs after each transaction or savepoint ends (``depth`` is
        already the enclosing one's); ``explain(error)`` may turn a driver error into the
        store's own (a clash with the append in ``appending``), else the backend explains it."""
        self.backend = backend
        self.conn: Connection = backend.conn
        self.sql = self.conn.sql
        self.lock = threading.RLock()
        self.depth = 0  # 0 outside a write; 1 in a transaction; more in savepoints
        self.writer: int | None = None  # the thread inside a write transaction, if any
        self.appending: tuple[str, int, str] | None = None  # this transaction's latest append, for explain
        self.commits = 0  # this store's commits so far (a follower that missed a wake-up sees it)
        self.rollbacks = 0  # and its rollbacks (of a transaction or a savepoint): what it cached may be gone
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.ended = ended
        self._explain = explain
        self.queue: list[_Queued] = []  # writes waiting for the next group commit
        self.queue_lock = threading.Lock()  # guards queue and leading
        self.leading = False  # a thread is committing the queue, or has been woken to

    # ------------------------------------------------------------------ the connection
    def open(self) -> Connection:
        """The connection, unless the store is closed."""
        if self.closed:
            raise MiniesError("the store is closed")
        return self.conn

    @property
    def inside(self) -> bool:
        """True on the thread that is inside a write (``store.transaction()``, or a group's)."""
        return bool(self.depth) and self.writer == threading.get_ident()

    # ------------------------------------------------------------------ errors
    def raise_error(self, error: BaseException, doing: str) -> NoReturn:
        explained = self._explain(error)
        if explained is not None:
            raise explained from None
        self.backend.raise_error(error, doing)

    @contextlib.contextmanager
    def translate(self, doing: str) -> Iterator[None]:
        """Driver errors inside the block become ``MiniesError``s (``doing`` says what failed)."""
        try:
            yield
        except self.conn.Error as e:
            self.raise_error(e, doing)

    def reading(self) -> _Reading:
        """Around each page an iterator fetches: the store's lock, and minies' errors."""
        return _Reading(self)

    # ------------------------------------------------------------------ transactions
    def write(self) -> _Write:
        """A write transaction (``BEGIN IMMEDIATE``), or a savepoint when already inside one.

        Callers hold ``self.lock``.
        """
        if self.closed:
            raise MiniesError("the store is closed")
        return _Write(self)

    def grouped(self, work: Callable[[], T]) -> T:
        """Run one write in a transaction it may share with other threads' writes: group commit.

        Writes queue; one thread at a time leads: it takes the store's lock and commits what
        is queued, and what queues while it runs, in one transaction and one fsync, each
        write in a savepoint of its own (its own checks and errors; a failed one does not
        fail the others). The other writers (followers) wait for their own write's outcome,
        never for the store's lock, and the leader hands the lead to the first write still
        queued. Every caller returns only once its own write is durable. A commit that fails
        fails every write in it with the same ``StorageError``. One thread alone sees no
        change: a queue of one is committed as before, without a savepoint.
        """
        if self.depth and self.writer == threading.get_ident():  # inside transaction(): join it
            with self.lock, self.write():
                return work()
        item = _Queued(work, self)
        with self.queue_lock:
            self.queue.append(item)
            if self.leading:
                item.wake = threading.Event()
            else:
                self.leading = True
        if item.wake is not None:
            self._follow(item)
        if not item.done:
            self._lead(item)
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _follow(self, item: _Queued) -> None:
        """Wait until a leader has committed ``item``, or has handed this thread the lead."""
        assert item.wake is not None
        try:
            item.wake.wait()
        except BaseException:  # interrupted (Ctrl-C): a write no leader has taken is not written
            after = None
            with self.queue_lock:
                if item in self.queue:
                    self.queue.remove(item)
                    if item.lead:  # handed the lead meanwhile: hand it on
                        after = self._next_leader()
            if after is not None and after.wake is not None:
                after.wake.set()
            raise

    def _lead(self, item: _Queued) -> None:
        """Commit the queue (``item`` first), then wake its writers and the next leader."""
        batch: list[_Queued] = []
        try:
            with self.lock:
                self._commit_queue(batch)
        finally:
            with self.queue_lock:
                if item in self.queue:  # interrupted before taking it: not written
                    self.queue.remove(item)
                for done in batch:
                    done.done = True
                after = self._next_leader()
            for done in batch:
                if done.wake is not None:
                    done.wake.set()
            if after is not None and after.wake is not None:  # (every follower has one)
                after.wake.set()

    def _next_leader(self) -> _Queued | None:
        """The first queued write leads next (the caller holds ``_queue_lock``)."""
        if not self.queue:
            self.leading = False
            return None
        self.queue[0].lead = True
        return self.queue[0]

    def _commit_queue(self, batch: list[_Queued]) -> None:
        """Commit every queued write together, and those that queue meanwhile, into ``batch``
        (the caller holds the store's lock)."""
        with self.queue_lock:
            batch += self.queue
            self.queue = []
        try:
            with self.write():
                if len(batch) == 1:
                    batch[0].run()
                else:
                    self._run_each(batch)
                while True:  # writes queued meanwhile share this commit's fsync
                    with self.queue_lock:
                        more, self.queue = self.queue, []
                    if not more:
                        break
                    batch += more
                    self._run_each(more)
        except Exception as e:  # BEGIN or COMMIT failed: nothing in the batch was written
            for item in batch:
                item.fail(e, alone=len(batch) == 1)
        except BaseException:
            interrupted = StorageError("the group commit was interrupted; nothing from this call was written")
            for item in batch:
                item.fail(interrupted, alone=False)
            raise

    def _run_each(self, items: list[_Queued]) -> None:
        for item in items:
            try:
                with self.write():  # a savepoint each
                    item.run()
            except Exception as e:  # its own error, or its savepoint's end failed
                item.error = item.error or e

    def wakeups(self, done: Callable[[], bool], max_wait: float) -> Iterator[None]:
        """Yield at once, then each time the log may have grown, until ``done()``.

        Waits without re-reading the log: a commit through this store wakes it at once; other
        connections' commits are noticed through the backend's commit counter (SQLite: ``PRAGMA
        data_version``, a look at the WAL index in shared memory; PostgreSQL: the head row),
        checked with a backoff of up to ``max_wait`` seconds.
        """
        seen: tuple[int, int] | None = None
        wait = 0.005
        first = True
        while first or not done():
            first = False
            with self.lock:
                # Others' commits, and this store's own (their wake-up may come while this
                # thread is not yet waiting, and must not be lost).
                version = (self.open().commit_counter(), self.commits)
            if version != seen:
                seen = version
                wait = 0.005
                yield
                continue
            with self.changed:
                if self.changed.wait(wait):
                    seen = None
            wait = min(wait * 2, max_wait)


class _Queued:
    """One write waiting for a group commit, and what became of it."""

    __slots__ = ("done", "error", "lead", "result", "tx", "wake", "work")

    def __init__(self, work: Callable[[], Any], tx: Transactions) -> None:
        self.work = work
        self.tx = tx
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # a follower handed the lead (while it waits)
        self.wake: threading.Event | None = None  # a follower's: set when done or handed the lead

    def run(self) -> None:
        try:
            self.result = self.work()
        except Exception as e:
            self.error = e
            if not isinstance(e, self.tx.conn.Error):
                raise
            try:
                self.tx.raise_error(e, "cannot append")  # the backend's own error, explained
            except MiniesError as explained:
                self.error = explained
                raise explained from None

    def fail(self, error: Exception, alone: bool) -> None:
        """The transaction failed: a write alone in it fails with its error, the others with a
        StorageError each (a write that failed on its own keeps its own error)."""
        if self.error is None:
            self.error = error if alone else StorageError(str(error))


class _Reading:
    """Entered once per page by the log's iterators (so a class, not a one-shot generator)."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def __enter__(self) -> None:
        self._tx.lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self._tx.lock.release()
        if isinstance(error, self._tx.conn.Error):
            self._tx.raise_error(error, "cannot read")


class _Write:
    """The context manager behind ``Transactions.write`` (a class: this is every append's path)."""

    __slots__ = ("_nested", "_tx")

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx
        self._nested = tx.depth > 0

    def __enter__(self) -> None:
        tx = self._tx
        if self._nested:
            try:
                tx.conn.execute(tx.sql.SAVEPOINT)
            except tx.conn.Error as e:  # (PostgreSQL: the session may be gone)
                tx.raise_error(e, "cannot start a write")
        else:
            # The backend's BEGIN (SQLite: IMMEDIATE, which takes the write lock up front, so a
            # writer waits instead of failing later: https://sqlite.org/lang_transaction.html).
            if tx.backend.unguarded is not None:
                raise _unguarded(tx.backend.where, tx.backend.unguarded)
            tx.appending = None  # (an earlier transaction's append explains no error of this one)
            try:
                tx.conn.execute(tx.sql.BEGIN)
            except tx.conn.Error as e:
                tx.raise_error(e, "cannot start a write")
            tx.writer = threading.get_ident()
        tx.depth += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        tx = self._tx
        conn = tx.conn
        tx.depth -= 1
        if not tx.depth:
            tx.writer = None
        if self._nested:
            if kind is None:
                try:
                    conn.execute(tx.sql.RELEASE)
                    tx.ended(True, False)
                    return
                except conn.Error as e:  # PostgreSQL sends a held one-event insert with it
                    error = e
            if not conn.get_autocommit():
                conn.execute(tx.sql.ROLLBACK_TO)
            tx.rollbacks += 1
            tx.ended(False, False)
            if isinstance(error, conn.Error):
                tx.raise_error(error, "cannot write")
            return
        if kind is None:
            try:
                conn.execute(tx.sql.COMMIT)
            except conn.Error as e:
                if not conn.get_autocommit():
                    conn.execute(tx.sql.ROLLBACK)
                tx.rollbacks += 1
                tx.ended(False, False)
                tx.raise_error(e, "cannot commit")
            tx.ended(True, True)
            tx.commits += 1
            tx.changed.notify_all()
            return
        if not conn.get_autocommit():
            conn.execute(tx.sql.ROLLBACK)
        tx.rollbacks += 1
        tx.ended(False, False)
        if isinstance(error, conn.Error):  # minies' own SQL failed mid-write: rolled back
            tx.raise_error(error, "cannot write")


def _unguarded(where: str, problem: str) -> SchemaError:
    return SchemaError(
        f"{where} is not guarded: {problem}; minies writes nothing to a log whose guards are missing or "
        f"overridden. Run `minies repair {where}` (minies.repair): it re-creates minies' own triggers if the "
        "log still verifies, and names what else to remove; or open it with readonly=True to read it"
    )
