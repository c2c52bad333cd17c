"""The append path: an append's checks, its place in the chain, its rows, and its read models.

An append (or a save, an erasure, a copy's chunk) arrives here inside the caller's write
(``Transactions``): its events are checked against their classes, its version against the
aggregate's, its ids against earlier appends; its rows are chained to the head, inserted,
and counted (no acknowledgement without the rows); then the projections see it, in the same
transaction. The head and recent versions are cached while no other connection writes.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from minies import _audit, _codec, _personal
from minies._backends import Connection, swallowed
from minies._database import Database
from minies._errors import ConcurrencyError, DuplicateEventError, StorageError
from minies._events import ANY, AnyVersion, Event, Recorded
from minies._keyring import Keyring
from minies._projections import Projector
from minies._stored_types import StoredTypes
from minies._transactions import Transactions


class Appender:
    """One store's append path (see the module's docstring)."""

    def __init__(self, tx: Transactions, keys: Keyring, types: StoredTypes, projector: Projector, db: Database) -> None:
        self._tx = tx
        self._keys = keys
        self._types = types
        self._projector = projector
        self._db = db
        self.tip = HeadCache()
        self.appended: Callable[[int, int], None] | None = None  # (head before, head after), inside the write
        self.device: Any = None  # a device's pending tail (``_device.Device``): stamps what it appends

    @staticmethod
    def check(
        aggregate_id: object,
        events: object,
        aggregate_type: object,
        expected_version: object,
        event_ids: object,
    ) -> tuple[list[Event], list[str], list[str] | None]:
        if not isinstance(aggregate_id, str):
            raise TypeError(f"aggregate_id must be a str, got {type(aggregate_id).__name__}: {aggregate_id!r:.80}")
        if not aggregate_id:
            raise ValueError("aggregate_id must not be empty")
        if not isinstance(aggregate_type, str) or not aggregate_type:
            raise TypeError(f"aggregate_type must be a non-empty str, got {aggregate_type!r:.80}")
        check_text("aggregate_id", aggregate_id)
        check_text("aggregate_type", aggregate_type)
        if isinstance(events, Event):
            raise TypeError("events must be a sequence of events; wrap a single event in a list")
        if not isinstance(events, (list, tuple)):
            if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
                raise TypeError(f"events must be a list of minies.Event, got {type(events).__name__}")
            events = list(events)
        if not events:
            raise ValueError(f"nothing to append to {aggregate_id!r}: the batch of events is empty")
        if expected_version is not ANY and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0
        ):
            raise TypeError(f"expected_version must be an int >= 0 or minies.ANY, got {expected_version!r}")
        datas = [_codec.encode_event(e) for e in events]
        ids: list[str] | None = None
        if event_ids is not None:
            if isinstance(event_ids, str) or not isinstance(event_ids, Sequence):
                raise TypeError("event_ids must be a list of UUID strings, one per event")
            if len(event_ids) != len(events):
                raise ValueError(f"event_ids has {len(event_ids)} ids for {len(events)} events; give one per event")
            ids = []
            for value in event_ids:
                try:
                    ids.append(str(uuid.UUID(value if isinstance(value, str) else "")))
                except ValueError:
                    raise ValueError(f"event id {value!r} is not a UUID string") from None
            if len(set(ids)) != len(ids):
                raise ValueError("event_ids contains the same id twice")
        return list(events), datas, ids

    def append(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected: int | AnyVersion,
        meta: str,
        events: list[Event],
        datas: list[str],
        ids: list[str] | None,
        *,
        fresh: bool = False,
    ) -> int:
        """``fresh``: the ids were made for this write (no earlier one can hold them: not looked up)."""
        types = [event.event_type for event in events]
        schemas = [event.schema_version for event in events]
        already = None
        if ids is not None and not fresh:
            already = lambda: self._already(aggregate_id, expected, events, datas, ids)  # noqa: E731
        seal = None
        if _personal.SEALED and any(type(event) in _personal.SEALED for event in events):
            seal = functools.partial(self._keys.seal, self._tx.conn, events, datas, aggregate_id=aggregate_id)
        version, rows, created = self.write_events(
            aggregate_id, aggregate_type, expected, meta, types, datas, schemas, ids, already, seal
        )
        if not rows:  # an idempotent retry of an append already recorded
            return version
        self._types.note(self._tx.conn, events)
        session = self.device.watch() if self.device is not None else None
        if self._projector:
            timestamp = _codec.parse_timestamp(created)
            metadata = _codec.decode_metadata(meta)
            records = [
                Recorded(r[0], r[1], aggregate_id, aggregate_type, r[4], r[5], timestamp, e, metadata)
                for r, e in zip(rows, events, strict=True)
            ]
            self._projector.apply(self._tx.conn, self._db, records, rows[0][0] - 1, created)
        if session is not None:
            self.device.record(rows[-1][0], session)
        if self.appended is not None:
            self.appended(rows[0][0] - 1, rows[-1][0])
        return version

    def write_events(
        self,
        aggregate_id: str,
        aggregate_type: str,
        expected: int | AnyVersion,
        meta: str,
        types: list[str],
        datas: list[str],
        schemas: list[int],
        ids: list[str] | None,
        already: Callable[[], int | None] | None = None,
        seal: Callable[..., list[str]] | None = None,
    ) -> tuple[int, list[tuple[Any, ...]], str]:
        """Insert encoded events after the aggregate's last: ``(new version, rows, created_at)``.

        The caller holds the store's lock inside a write. ``already`` (when ``ids`` are given)
        returns the version an identical earlier append reached, and then nothing is written
        (the rows are empty). ``seal(ids=, now=)`` gives the payloads as stored, their personal
        fields sealed (it needs the events' ids).
        """
        conn = self._tx.conn
        n = len(datas)
        tip = self.tip
        stream = (aggregate_id, aggregate_type)
        known = tip.lookup(conn, stream) if self._tx.depth == 1 else None
        if known is None:
            state: Any = conn.execute(conn.sql.APPEND_STATE, (aggregate_id,)).fetchone()
            current, stored_type, head_position, previous = state if state else (0, None, 0, _audit.GENESIS)
            current = current or 0
            if stored_type is not None and stored_type != aggregate_type:
                raise ValueError(
                    f"aggregate {aggregate_id!r} is a {stored_type}, not a {aggregate_type}: one stream keeps "
                    "one aggregate_type (it is how load() knows its class); nothing was written"
                )
        else:
            current, head_position, previous = known
        if already is not None:
            done = already()
            if done is not None:
                return done, [], ""
        if ids is None:
            ids = _codec.new_event_ids(n)
        if expected is not ANY and expected != current:
            raise ConcurrencyError(aggregate_id, expected, current)
        created = _codec.now_text()
        if seal is not None:
            datas = seal(ids=ids, now=created)
        digests = _audit.chain_batch(
            previous,
            head_position + 1,
            ids,
            aggregate_id,
            aggregate_type,
            types,
            current + 1,
            datas,
            meta,
            created,
            schemas,
        )
        rows = [
            (head_position + k, event_id, aggregate_id, aggregate_type, t, current + k, data, meta, created, h, s)
            for k, event_id, t, data, h, s in zip(range(1, n + 1), ids, types, datas, digests, schemas, strict=True)
        ]
        self._tx.appending = (aggregate_id, current, ids[0])
        try:
            # (a device's rows go to its pending tail, each with its place in the device's sequence)
            conn.executemany(conn.sql.INSERT_EVENT, rows if self.device is None else self.device.stamp(rows, expected))
            # No acknowledgement without the rows: something on the table (a trigger that
            # RAISE(IGNORE)s, a rule DO INSTEAD NOTHING) may swallow an insert without an error.
            # One row: the statement's own count, free. Several: count them (a batch's one query).
            stored = conn.changes() if n == 1 else conn.execute(conn.sql.STORED_AFTER, (head_position,)).get
        except conn.Error as e:
            self._tx.raise_error(e, f"cannot append to {aggregate_id!r}")
        if stored != n:
            raise StorageError(swallowed(stored, n))
        tip.stage(stream, current + n, head_position + n, digests[-1], self._tx.depth == 1)
        return current + n, rows, created

    def version_after_clash(self, aggregate_id: str, believed: int) -> int:
        """The aggregate's version now, as far as can be read after a failed insert."""
        try:
            conn = self._tx.conn  # a row clashed: the aggregate exists
            return int(conn.execute(conn.sql.AGGREGATE_VERSION, (aggregate_id,)).get)
        except self._tx.conn.Error:  # PostgreSQL: the failed statement ended what the transaction can do
            return believed + 1

    def _already(
        self, aggregate_id: str, expected: int | AnyVersion, events: list[Event], datas: list[str], ids: list[str]
    ) -> int | None:
        """The version an identical earlier append reached, None if none; raise on a clash."""
        found = [self._tx.conn.execute(self._tx.sql.EVENT_BY_ID, (i,)).fetchone() for i in ids]
        if all(row is None for row in found):
            return None
        if any(row is None for row in found):
            raise DuplicateEventError(ids[0], "by an earlier append that held only part of this batch")
        first = found[0][1]
        for k, (row, event, data, event_id) in enumerate(zip(found, events, datas, ids, strict=True)):
            stored_aggregate, version, event_type, stored_data, _ = row
            if stored_aggregate != aggregate_id:
                raise DuplicateEventError(event_id, f"by an event of aggregate {stored_aggregate!r}")
            if _personal.MARK in stored_data:  # sealed: compare what it holds (the nonces differ)
                opened, gone = self._keys.open(self._tx.conn, stored_data, event_id, f"event {event_id}", strict=True)
                same = not gone and _codec.decode_payload(opened) == _codec.decode_payload(data)
            else:
                same = stored_data == data
            if event_type != event.event_type or not same:
                raise DuplicateEventError(event_id, f"by a different event ({event_type} at version {version})")
            if version != first + k:
                raise DuplicateEventError(event_id, "by an append with a different batch")
        around = (aggregate_id, first - 1, first + len(ids), found[0][4])
        if self._tx.conn.execute(self._tx.sql.SAME_APPEND_AROUND, around).get:
            raise DuplicateEventError(ids[0], "by an append with a different batch (this is only part of it)")
        if expected is not ANY and first != expected + 1:
            raise DuplicateEventError(ids[0], f"by an append at version {first}, not {expected + 1}")
        return int(first) + len(ids) - 1


class HeadCache:
    """What this store knows of the log's tip: the head and recent aggregates' versions.

    An append must know the head (position and hash) and the aggregate's version; querying
    them costs more than the rest of a single-event append. The cache is valid only while no
    other connection has committed since our last commit, which SQLite's data version tells
    for free inside a write (https://sqlite.org/c3ref/c_fcntl_begin_atomic_write.html#sqlitefcntldataversion).
    Only a store's own top-level appends fill it; anything else empties it.
    """

    __slots__ = ("_data_version", "_head", "_staged", "_versions")
    _LIMIT: Final = 10_000

    def __init__(self) -> None:
        self._data_version: int | None = None
        self._head: tuple[int, bytes] = (0, _audit.GENESIS)
        self._versions: dict[tuple[str, str], int] = {}
        self._staged: tuple[tuple[str, str], int, int, bytes] | None = None

    def lookup(self, conn: Connection, stream: tuple[str, str]) -> tuple[int, int, bytes] | None:
        """(version, head position, head hash) of an ``(aggregate_id, aggregate_type)``, or
        None if the cache cannot vouch for them."""
        if self._data_version != conn.data_version():
            self._data_version = None
            return None
        if self._staged is not None:  # an earlier append of this transaction moved the head
            return None
        version = self._versions.get(stream)
        return None if version is None else (version, *self._head)

    def unchanged(self, conn: Connection) -> bool:
        """Has no other connection committed since this store's last append did?"""
        return self._data_version is not None and self._data_version == conn.data_version()

    def stage(self, stream: tuple[str, str], version: int, position: int, digest: bytes, alone: bool) -> None:
        """Note an append in progress; ``alone``: the transaction is the append's own."""
        alone = alone and self._staged is None
        self._staged = (stream, version, position, digest) if alone else None
        if not alone:
            self._data_version = None

    def committed(self, conn: Connection) -> None:
        staged, self._staged = self._staged, None
        if staged is None or (self._data_version is None and self._versions):
            self.clear()
            if staged is None:
                return
        stream, version, position, digest = staged
        if len(self._versions) >= self._LIMIT:
            self._versions.clear()
        self._versions[stream] = version
        self._head = (position, digest)
        self._data_version = conn.data_version()

    def clear(self) -> None:
        self._data_version = None
        self._staged = None
        self._versions.clear()


def check_text(what: str, value: str) -> None:
    """Ids are stored as SQLite text: valid UTF-8 with no NUL, which C-string tools cut short."""
    if value.isascii():
        if "\x00" not in value:
            return
    else:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{what} {value!r:.80} is not valid Unicode text (a lone surrogate?)") from None
        if "\x00" not in value:
            return
    raise ValueError(f"{what} {value!r:.80} contains a NUL character; ids must be plain text")
