"""The EventStore: the engine (append path, reads, aggregates, projections, audit) above a
storage backend (``minies._backends``), which it never names."""

from __future__ import annotations

import contextlib
import functools
import os
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

from minies import _audit, _codec, _snapshots, _sync, _upcasters
from minies._aggregate import Aggregate
from minies._append import Appender
from minies._audit import VerifyReport
from minies._backends import Connection, open_backend
from minies._device import Device
from minies._erasure import Eraser, Erasure
from minies._errors import (
    ConcurrencyError,
    DuplicateEventError,
    MiniesError,
    NotFound,
    ProjectionError,
    SnapshotWarning,
    StorageError,
    SyncError,
)
from minies._events import ANY, AnyVersion, Event, Recorded, Sealed, type_names
from minies._hub import Hub
from minies._keyring import Keyring
from minies._log import Opener, StoreInfo, aggregates, read_aggregate, read_log, store_info
from minies._processors import Processor
from minies._projections import Projection, Projector, RebuildReport
from minies._replay import Replayer, check_events, no_events
from minies._seals import KeySource, Sealer, check, public_keys
from minies._stored_types import StoredTypes
from minies._subscriptions import Subscription
from minies._transactions import Transactions
from minies._wire import SyncReport

A = TypeVar("A", bound=Aggregate)
S = TypeVar("S")
T = TypeVar("T")

Durability = Literal["full", "normal"]
ProcessHandler = Callable[[Recorded, "EventStore"], object]
_LAST_VERSION: Final = (1 << 63) - 1


class EventStore:
    """An event log, its snapshots and its read models, in one SQLite file (or PostgreSQL).

    Args:
        path: a file path (created with the schema if missing), ``":memory:"``, or a
            PostgreSQL URL (``postgresql://user:password@host:port/dbname?schema=NAME``; needs
            ``pip install "minies[postgres]"``; the tables are created on first open).
        projections: read models kept up to date inside every append's transaction.
        durability: ``"full"`` survives power loss (SQLite synchronous=FULL, PostgreSQL
            synchronous_commit=on); ``"normal"`` survives process crashes and is faster
            (synchronous=NORMAL, synchronous_commit=off).
        timeout: seconds a writer waits for another connection's write lock before giving up.
        readonly: open without writing anything to the file (for auditors and the CLI).
        snapshot_every: per-aggregate-class override of ``Aggregate.snapshot_every``.
        skip_failed_projections: open even if a projection's setup or catch-up fails; the
            failed ones are left out (see ``failed_projections``) instead of raising.
        key_encryption_key: 32 bytes kept outside the file (an app secret, a KMS): data
            subjects' keys are stored wrapped by it, so the file alone reveals no personal
            field. Without it, keys are stored as they are (``forget`` still destroys them).
        seal_key: an Ed25519 private key (see ``seal``): the store seals the head on close,
            and every ``seal_every`` events (when an append takes the head past a multiple of it).
        device: this file is (or becomes) the device of that id, which writes offline and
            syncs through a hub (``sync``): its appends are pending until the hub places them.

    Raises:
        SchemaError: the file is not a minies database, or was written by a newer minies.
        ProjectionError: a projection failed to set up or catch up (nothing was changed).
        PersonalDataError: ``key_encryption_key`` does not open the file's keys (nothing
            was changed), or is given for a file whose keys are not wrapped.
        StorageError: the file cannot be opened (missing directory, permissions, damaged).

    A store may be shared by threads: operations on it are serialised. Several stores, in
    one process or many (or, on PostgreSQL, many machines), may open the same log; their
    writers take turns.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        projections: Iterable[Projection] = (),
        durability: Durability = "full",
        timeout: float = 30.0,
        readonly: bool = False,
        snapshot_every: Mapping[type[Aggregate], int | None] | None = None,
        skip_failed_projections: bool = False,
        key_encryption_key: bytes | None = None,
        seal_key: KeySource | None = None,
        seal_every: int | None = None,
        device: str | None = None,
    ) -> None:
        if durability not in typing.get_args(Durability):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.path = path if isinstance(path, str) else os.fspath(path)
        if not self.path:
            raise ValueError("path is empty; give a file path, a postgresql:// URL, or ':memory:'")
        self.durability = durability
        self.readonly = readonly
        self._timeout = float(timeout)
        self._snapshot_every = dict(snapshot_every or {})
        _upcasters.validate()
        # a read model is never built from values its store cannot open: it would keep the defaults
        self._projector = Projector(projections, functools.partial(self._read_view, strict=True))
        if readonly and self._projector:
            raise ValueError("a read-only store cannot maintain projections; open it without them")
        self._saved: list[tuple[int, Aggregate, tuple[Event, ...]]] = []  # saves a rollback would undo
        self.failed_projections: dict[str, ProjectionError] = {}
        self._backend = open_backend(
            path, durability=durability, timeout=self._timeout, readonly=readonly, device=device
        )
        self._tx = Transactions(self._backend, ended=self._ended, explain=self._explain)
        self._conn: Connection = self._tx.conn
        self._sql = self._conn.sql
        self._file_version = self._backend.file_version
        try:
            self._keys = Keyring(key_encryption_key, self._file_version >= 4)
            self._db = self._backend.projection_db()
            self._types = StoredTypes(self._file_version)
            self._appender = Appender(self._tx, self._keys, self._types, self._projector, self._db)
            self._replayer = Replayer(self._tx, self._read_view, self._keys.remedy)
            self._eraser = Eraser(
                self._tx, self._keys, self._appender, self._projector, self._db, self._types, self.failed_projections
            )
            self._sealer = Sealer(self._tx, self._appender, seal_key, seal_every, readonly)
            self._device = Device.of(self._tx, self._keys, self._appender, self._projector, self._db, self._eraser)
            if self._device is not None and seal_key is not None:
                raise ValueError("a device does not seal its log: seal the hub's, which is the history")
            self._hub = Hub(self._tx, self._appender, self._types, self._eraser, self._file_version)
            with self._tx.translate(f"cannot open {self._backend.where}"):
                self._keys.check(self._conn)
                self._types.load(self._conn)
            self._open_projections(skip_failed_projections)
        except BaseException:
            self._backend.close()
            raise

    def _open_projections(self, skip_failed: bool) -> None:
        self._projector.erased.clear()
        for name in list(self._projector.projections):
            try:
                with self._tx.lock, self._tx.write():
                    self._projector.catch_up(self._conn, self._db, name)
            except ProjectionError as e:
                if not skip_failed:
                    raise
                self.failed_projections[name] = e
                del self._projector.projections[name]
        self._projector.forget()
        if self._projector.erased:  # a read model cleaned of a subject forgotten elsewhere: its old bytes go too
            with self._tx.lock:
                self._backend.purge()

    def _saves_ended(self, kept: bool) -> None:
        """A transaction or savepoint at depth ``self._tx.depth + 1`` ended: the aggregates saved
        inside it belong to the enclosing one (``kept``), or get their pending events back, as
        they were before the save (rolled back: a later save writes them)."""
        inner = [entry for entry in self._saved if entry[0] > self._tx.depth]
        self._saved = [entry for entry in self._saved if entry[0] <= self._tx.depth]
        if kept and self._tx.depth:
            self._saved += [(self._tx.depth, aggregate, pending) for _, aggregate, pending in inner]
        elif not kept:
            for _, aggregate, pending in reversed(inner):
                aggregate._restore_pending(pending)

    def _forget(self) -> None:
        """After a rollback: cached knowledge of the log may describe writes that never happened."""
        self._appender.tip.clear()
        self._keys.clear()
        self._projector.forget()
        if not self._tx.closed:
            with contextlib.suppress(self._conn.Error):
                self._types.load(self._conn)

    # ------------------------------------------------------------------ errors and transactions
    def _explain(self, error: BaseException) -> MiniesError | None:
        """A clash with this transaction's own append: the UNIQUE constraints are the last line
        of defence behind an append's own checks. (PostgreSQL reports a one-event insert's
        clash with the statement sent after it.)"""
        clash = self._backend.conflict(error)
        if clash is None or self._tx.appending is None:
            return None
        aggregate_id, current, first_id = self._tx.appending
        if clash == "event_id":
            return DuplicateEventError(first_id, "by another event")
        return ConcurrencyError(aggregate_id, current, self._appender.version_after_clash(aggregate_id, current))

    def _ended(self, kept: bool, committed: bool) -> None:
        """A transaction or savepoint ended (``Transactions``' hook)."""
        if self._saved:
            self._saves_ended(kept)
        if not kept:
            self._forget()
        if committed:
            self._appender.tip.committed(self._conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[EventStore]:
        """Commit every append and save inside the block atomically, or none of them.

        Blocks nest (inner ones are savepoints). Other threads using this store wait until
        the block ends.

        Raises:
            StorageError: the write lock could not be taken, or the commit failed.
        """
        with self._tx.lock, self._tx.write():
            yield self

    # ------------------------------------------------------------------ appending
    def append(
        self,
        aggregate_id: str,
        events: Sequence[Event],
        *,
        aggregate_type: str,
        expected_version: int | AnyVersion = ANY,
        metadata: Mapping[str, Any] | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> int:
        """Append events to one aggregate atomically and return its new version.

        Args:
            aggregate_id: the aggregate (stream) to append to.
            events: one or more ``Event`` instances.
            aggregate_type: the aggregate's type, stored with every event.
            expected_version: the version the aggregate must be at now (0: must not exist),
                or ``ANY``.
            metadata: stored with every event, merged over the enclosing ``metadata_scope``.
            event_ids: UUID strings, one per event, to make a retry idempotent.

        Raises:
            ConcurrencyError: the aggregate is not at ``expected_version``; nothing was written.
            DuplicateEventError: an id in ``event_ids`` is recorded for a different event.
            TypeError, ValueError: bad arguments; nothing was written.
            StorageError: the file cannot be written (disk full, read-only, locked).
        """
        rows_in = self._appender.check(aggregate_id, events, aggregate_type, expected_version, event_ids)
        meta = _codec.encode_metadata(metadata)
        appender = self._appender
        return self._tx.grouped(lambda: appender.append(aggregate_id, aggregate_type, expected_version, meta, *rows_in))

    def _read_view(self, strict: bool = False) -> tuple[bool, Opener | None]:
        """How a read must decode: ``(upcasting, opener)``; ``strict``: a sealed field this store
        cannot open is an error, not a default. Callers hold the store's lock."""
        conn = self._tx.open()
        with self._tx.translate("cannot read"):
            commits = conn.commit_counter()  # what other connections did since the last read
            upcasting = self._types.upcasting(conn, commits)
            opener = functools.partial(self._keys.open, conn, strict=strict)
            return upcasting, opener if self._keys.active(conn, commits) else None

    # ------------------------------------------------------------------ reading
    def read(
        self, aggregate_id: str, *, after: int = 0, upto: int | None = None, raw: bool = False
    ) -> Iterator[Recorded]:
        """One aggregate's events with ``after < version <= upto``, in version order.

        ``raw=True`` gives every payload as stored: a plain dict, not upcast (for events
        written by newer code, or to see history exactly).
        """
        _check_str("aggregate_id", aggregate_id)
        after, upto = _check_range(after, upto)
        with self._tx.lock:
            upcasting, opener = self._read_view()
        return read_aggregate(self._tx.open(), upcasting, aggregate_id, after, upto, self._tx.reading(), raw, opener)

    def read_all(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_types: Iterable[str | type[Event]] | None = None,
        raw: bool = False,
    ) -> Iterator[Recorded]:
        """Every event with position > ``after``, in global order.

        Args:
            after: a position already seen (0: from the start).
            limit: at most this many events.
            event_types: only these types (names or Event classes).
            raw: every payload as stored, a plain dict, not upcast.
        """
        _check_range(after, None)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        types = None if event_types is None else type_names(event_types)
        with self._tx.lock:
            upcasting, opener = self._read_view()
        return read_log(self._tx.open(), upcasting, after, types, limit, self._tx.reading(), raw=raw, opener=opener)

    def version(self, aggregate_id: str) -> int:
        """The aggregate's current version, 0 if it has no events."""
        _check_str("aggregate_id", aggregate_id)
        with self._tx.lock, self._tx.translate("cannot read"):
            return int(self._tx.open().execute(self._sql.AGGREGATE_VERSION, (aggregate_id,)).get or 0)

    def info(self) -> StoreInfo:
        """What the file holds, at a glance (``minies info`` prints it).

        Raises:
            StorageError: the file cannot be read.
        """
        return store_info(self._tx, self._keys.enabled)

    def head(self) -> tuple[int, str]:
        """The last position and its chain hash in hex: ``(0, "")`` for an empty log."""
        with self._tx.lock, self._tx.translate("cannot read"):
            row = self._tx.open().execute(self._sql.HEAD).fetchone()
        return (int(row[0]), bytes(row[1]).hex()) if row else (0, "")

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (typically on a projection's tables) and return the rows.

        Raises:
            QueryError: the SQL is invalid, has the wrong parameters, or tries to write
                (nothing is changed).
        """
        _check_str("sql", sql)
        with self._tx.lock:
            self._tx.open()
            return self._backend.query(sql, params)

    # ------------------------------------------------------------------ aggregates
    def save(self, aggregate: Aggregate, metadata: Mapping[str, Any] | None = None) -> int:
        """Append the aggregate's pending events, expecting the version it was loaded at.

        Writes a snapshot in the same transaction when the save crosses a multiple of the
        aggregate's ``snapshot_every``. A save with nothing pending returns the version.

        The events get their ids at the first save that tries them, and keep them until one
        succeeds: after a ``StorageError`` whose outcome is unknown (a lost connection, a
        failed commit), saving the same object again is safe, and returns the version if the
        first try did commit (it writes nothing twice).

        Raises:
            ConcurrencyError: someone else appended to the aggregate since it was loaded.
            StorageError: the file cannot be written.
        """
        if not isinstance(aggregate, Aggregate):
            raise TypeError(f"save() takes a minies.Aggregate, got {type(aggregate).__name__}")
        pending = aggregate.pending
        if not pending:
            return aggregate.version
        cls = type(aggregate)
        loaded_at = aggregate.version - len(pending)
        every = self._snapshot_every.get(cls, cls.snapshot_every)
        meta = _codec.encode_metadata(metadata)
        events, datas, _ = self._appender.check(aggregate.id, pending, cls.aggregate_type, loaded_at, None)
        ids, retried = aggregate._event_ids(_codec.new_event_ids)

        skipped: list[str] = []

        def work() -> int:
            version = self._appender.append(
                aggregate.id, cls.aggregate_type, loaded_at, meta, events, datas, ids, fresh=not retried
            )
            if every and version // every != loaded_at // every and self._device is None:
                # (a device's saves are pending: a snapshot of them could hold what the hub rejects)
                seal = None
                if self._keys.wraps:  # a snapshot holds plaintext: sealed too, or the file would reveal it
                    seal = functools.partial(self._keys.seal_state, self._conn, now=_codec.now_text())
                skipped.extend(filter(None, [_snapshots.write(self._conn, aggregate, seal)]))
            return version

        version = self._tx.grouped(work)  # perhaps committed by another thread: warn in this one
        if self._tx.inside:  # inside transaction(): not yet durable
            self._saved.append((self._tx.depth, aggregate, pending))
        aggregate._clear_pending()
        for reason in skipped:
            warnings.warn(reason, SnapshotWarning, stacklevel=2)
        return version

    def load(self, cls: type[A], aggregate_id: str, *, upto: int | None = None) -> A:
        """Rebuild an aggregate from its latest usable snapshot plus later events.

        Args:
            cls: the Aggregate subclass.
            aggregate_id: the aggregate's id.
            upto: the state as of this version (default: the latest).

        Raises:
            NotFound: the aggregate has no events (at or below ``upto``).
            SchemaError: the events belong to another aggregate type.
        """
        if not (isinstance(cls, type) and issubclass(cls, Aggregate)):
            raise TypeError(f"load() takes an Aggregate subclass, got {cls!r}")
        _check_str("aggregate_id", aggregate_id)
        last = _check_upto(upto)
        with self._tx.lock, self._tx.translate("cannot read"):
            conn = self._tx.open()
            aggregate = _snapshots.latest(conn, cls, aggregate_id, last, functools.partial(self._keys.open_state, conn))
        if aggregate is None:
            aggregate = cls(id=aggregate_id)
        found = self._replayer.replay(aggregate_id, cls.aggregate_type, aggregate.version, last, aggregate.apply)
        if found == 0 and aggregate.version > self.version(aggregate_id):
            # A snapshot ahead of the log (snapshots are outside the chain; versions have no
            # gaps, so only one with no later events can be): it must not stand in for events.
            aggregate = cls(id=aggregate_id)
            found = self._replayer.replay(aggregate_id, cls.aggregate_type, 0, last, aggregate.apply)
        if found == 0 and aggregate.version == 0:
            raise no_events(aggregate_id, upto)
        aggregate.version += found
        return aggregate

    def fold(
        self,
        aggregate_id: str,
        evolve: Callable[[S, Event], S],
        initial: S,
        *,
        aggregate_type: str | None = None,
        upto: int | None = None,
    ) -> tuple[S, int]:
        """The functional face of ``load``: fold ``evolve`` over the aggregate's events.

        Returns:
            ``(state, version)``.

        Raises:
            NotFound: the aggregate has no events (at or below ``upto``).
            SchemaError: ``aggregate_type`` is given and the events are of another type.
        """
        _check_str("aggregate_id", aggregate_id)
        last = _check_upto(upto)
        state = [initial]

        def step(event: Event) -> None:
            state[0] = evolve(state[0], event)

        found = self._replayer.replay(aggregate_id, aggregate_type, 0, last, step)
        if found == 0:
            raise no_events(aggregate_id, upto)
        return state[0], found

    # ------------------------------------------------------------------ schema evolution
    def event_types(self) -> list[tuple[str, int, int]]:
        """``(event_type, schema_version, count)`` for every type and version stored."""
        with self._tx.lock, self._tx.translate("cannot read"):
            rows: list[Any] = self._tx.open().execute(self._sql.TYPE_COUNTS).fetchall()
        return rows

    def check_events(self, *, progress: Callable[[int, int], None] | None = None) -> list[tuple[int, str, str]]:
        """Read the whole log through today's classes and upcasters; list what fails.

        Run it against a production file before deploying new event classes.

        Returns:
            ``(position, event_type, error)`` for each event that does not upcast or decode.
        """
        return check_events(self._tx, lambda after: self.read_all(after=after), self.head()[0], progress)

    # ------------------------------------------------------------------ read models
    def rebuild(self, name: str, *, progress: Callable[[int, int], None] | None = None) -> RebuildReport:
        """Drop one projection's tables and rebuild them from the log, atomically.

        Args:
            name: the projection's name.
            progress: called as ``progress(position, head)`` after every 2,000 events.

        Raises:
            ProjectionError: setup or a handler failed; the old read model is kept.
        """
        if name not in self._projector.projections:
            raise NotFound(f"no projection named {name!r}; this store has {sorted(self._projector.projections)}")
        with self._tx.lock, self._tx.write():
            return self._projector.rebuild(self._conn, self._db, name, progress)

    def subscription(
        self,
        name: str,
        *,
        max_attempts: int = 3,
        event_types: Iterable[str | type[Event]] | None = None,
    ) -> Subscription:
        """A durable, named consumer of the log, outside the write transaction.

        Args:
            name: the checkpoint's key in the file.
            max_attempts: tries per event before it is parked as a dead letter.
            event_types: deliver only these types (names or Event classes); None: all.

        See ``Subscription`` for delivery guarantees.
        """
        _check_str("name", name)
        return Subscription(self, name, max_attempts=max_attempts, event_types=event_types)

    def processor(
        self,
        name: str,
        handler: ProcessHandler,
        *,
        max_attempts: int = 3,
        event_types: Iterable[str | type[Event]] | None = None,
    ) -> Processor:
        """A named consumer that turns events into new events exactly once.

        ``handler(record, store)`` appends or saves through ``store`` inside the transaction
        that also moves the processor's checkpoint (see ``Processor``).

        Args:
            name: the checkpoint's key in the file (shared with subscriptions' names).
            handler: called once per input event with the event and this store.
            max_attempts: tries per event before it is parked as a dead letter.
            event_types: process only these types (names or Event classes); None: all.
        """
        _check_str("name", name)
        return Processor(self, name, handler, max_attempts=max_attempts, event_types=event_types)

    def aggregates(self, aggregate_type: str | type[Aggregate] | None = None) -> list[tuple[str, str, int]]:
        """``(aggregate_id, aggregate_type, version)`` of every aggregate (of one type), by id."""
        return aggregates(self._tx, aggregate_type)

    # ------------------------------------------------------------------ audit
    def verify(
        self,
        *,
        expect_head: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        snapshots: bool = False,
        trust: Iterable[KeySource] | None = None,
        origins: bool = False,
    ) -> VerifyReport:
        """Re-check the hash chain, version continuity, triggers and SQLite's integrity.

        Snapshots are outside the chain: a plain ``verify`` does not look at them. With
        ``snapshots=True`` every snapshot whose aggregate class is imported (matched by its
        shape's fingerprint) is compared with a replay of its events up to its version; one
        that differs fails the check, named by aggregate and version. Snapshots of classes
        not imported are counted in ``snapshots_unchecked``.

        Args:
            expect_head: a head hash published earlier; the check fails unless the log still
                contains that exact history.
            progress: called as ``progress(events_checked, total)`` while checking.
            snapshots: replay every snapshotted aggregate and compare (slower: a replay each).
            trust: Ed25519 public keys (objects, PEM bytes or paths): the log must hold a seal,
                each by one of them, its signature good and the hash it signed the chain's
                (``sealed_position``, ``sealed_by``, ``sealed_at``, ``unsealed`` say what it covers).
            origins: prove each device's sequence complete, in order, unaltered and settled
                once (placed, or recorded as rejected); ``devices`` counts the devices.
        """
        keys = None if trust is None else public_keys(trust)
        report = _audit.verify_store(self._tx, expect_head, progress)
        if keys is not None:
            report = check(self._tx, report, keys)
        if origins and report.ok:
            mine = None if self._device is None else self._device.audit_state()
            report = _audit.verify_origins(self._tx, report, mine)
        if not snapshots or not report.ok:
            return report
        return _snapshots.verify(self._tx, self._keys, self._replayer, report)

    # ------------------------------------------------------------------ local-first
    def sync(
        self,
        hub: str | os.PathLike[str] | EventStore,
        *,
        conflicts: Mapping[str, str | Callable[[EventStore, Recorded], object]] | None = None,
        rejected: Callable[[Recorded], object] | None = None,
        token: str | None = None,
    ) -> SyncReport:
        """Meet the hub: push this device's pending events, pull the hub's log after its own.

        The hub places each pending event, in this device's order, or records an
        ``EventRejected`` for it (a conflict: the aggregate moved on unseen). Then this device
        holds the hub's log exactly, its read models to match, plus what it wrote meanwhile.

        Args:
            hub: a store, a file path, a PostgreSQL URL, or an ``http(s)://`` URL of ``minies serve``.
            conflicts: per aggregate type, on a conflict: ``"reject"`` (the default), ``"accept"``
                (placed anyway, after the others: events that commute), or ``retry(store,
                rejection)``, run here to redo the command on the new state (pushed in this sync).
            rejected: called with each rejection of this device's events the sync learns of.
            token: the device's token, for an http(s) hub.

        Raises SyncError if this is not a device, the logs diverged, or the hub refused the
        push (then nothing was written on either side).
        """
        return _sync.sync(self, hub, conflicts=conflicts or {}, rejected=rejected, token=token)

    def pending(self) -> list[Recorded]:
        """A device's events the hub has not placed yet, in order (their positions: provisional)."""
        return [] if self._device is None else self._device.pending()

    def rejections(self, *, after: int = 0) -> list[Recorded]:
        """The ``EventRejected`` records after position ``after``: a device's own, or a hub's all."""
        return _sync.rejections(self, after)

    def seal(self, private_key: KeySource, *, note: str = "") -> Sealed:
        """Sign the head (position, hash, time, key fingerprint, ``note``) with an Ed25519 key,
        as a ``Sealed`` event of the stream ``minies.seals`` right after it, inside the chain.

        ``verify(trust=[public key])`` checks it; docs/how-to/audit-a-file.md has the bytes signed.

        Args:
            private_key: a ``cryptography`` ``Ed25519PrivateKey``, its PEM (PKCS#8) bytes, or
                the path of a PEM file (``minies keygen NAME`` writes one).
            note: signed and stored with the seal.

        Raises:
            MiniesError: ``cryptography`` is not installed (``pip install "minies[crypto]"``).
            StorageError: the file cannot be written.
        """
        _check_str("note", note)
        if self._device is not None:
            raise SyncError("a device does not seal its log: seal its hub's, which is the history")
        return self._sealer.seal(private_key, note)

    # ------------------------------------------------------------------ personal data
    def forget(self, subject: str, *, reason: str = "", metadata: Mapping[str, Any] | None = None) -> Erasure:
        """Forget a data subject: destroy its keys, so its ``Personal[...]`` fields read as
        forgotten everywhere, from now on, while the log still verifies.

        In one transaction: the subject's keys are destroyed; the snapshots of every aggregate
        holding its sealed fields are dropped; each read model that may hold its data runs its
        ``forget`` hook or is rebuilt; a ``SubjectForgotten`` event records the erasure (who
        asked: ``metadata``). Then the key's bytes and the dropped snapshots' leave the files
        (SQLite: the WAL is checkpointed and truncated; PostgreSQL: the keys and snapshots
        tables are rewritten; ``Erasure.purged``). Backups taken before still hold the key:
        back up again. A copy of this log applies the erasure when it receives the event.

        Args:
            subject: the data subject's id (an event's ``data_subject`` field, or the aggregate id).
            reason: why, for the record (no personal data).
            metadata: stored with the ``SubjectForgotten`` event (e.g. ``user_id``).

        Returns:
            What was done; ``keys == 0`` (and nothing written) if the subject has no live key.

        Raises:
            ProjectionError: a read model's ``forget`` or rebuild failed; nothing was changed.
            StorageError: the file cannot be written.
        """
        return self._eraser.forget(subject, reason, metadata)

    def backup(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent single-file copy (no ``-wal`` needed) to ``path``.

        The copy holds live data only: no bytes of a forgotten subject's key, even if it was
        destroyed a moment ago.

        Raises:
            StorageError: ``path`` exists or cannot be written.
        """
        target = os.fspath(path)
        if os.path.exists(target):
            raise StorageError(f"cannot back up to {target!r}: it already exists")
        with self._tx.lock:
            self._tx.open()
            self._backend.backup(target)

    def snapshot_stats(self) -> list[tuple[str, int, int]]:
        """(aggregate_type, snapshots, bytes) for each aggregate type that has snapshots."""
        with self._tx.lock, self._tx.translate("cannot read"):
            return _snapshots.stats(self._tx.open())

    def drop_snapshots(self, aggregate_type: str | type[Aggregate]) -> int:
        """Delete every snapshot of one aggregate type (they are rewritten on later saves)."""
        name = aggregate_type if isinstance(aggregate_type, str) else aggregate_type.aggregate_type
        with self._tx.lock, self._tx.write():
            return _snapshots.drop(self._conn, name)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Checkpoint the WAL into the main file and close. Safe to call twice."""
        with self._tx.lock:
            if self._tx.closed:
                return
            try:
                self._sealer.on_close()
            finally:
                self._tx.closed = True
                self._backend.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._tx.closed else self.durability
        return f"<minies.EventStore {self._backend.where!r} ({state})>"


def _check_str(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r:.80}")


def _check_range(after: object, upto: object) -> tuple[int, int]:
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise ValueError(f"after must be an int >= 0, got {after!r}")
    return after, _check_upto(upto)


def _check_upto(upto: object) -> int:
    if upto is None:
        return _LAST_VERSION
    if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
        raise ValueError(f"upto must be an int >= 0 or None, got {upto!r}")
    return upto
