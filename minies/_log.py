"""Reading the log back as ``Recorded`` envelopes, a page of rows at a time.

Pages keep each read transaction short: an iterator the caller holds open never pins the
WAL, and never keeps a writer (this store or another) waiting.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

import msgspec

from minies import _codec, _events, _personal, _upcasters
from minies._backends import Connection, device_sql, has_table
from minies._errors import SchemaError
from minies._events import Recorded
from minies._transactions import Transactions


class _Raw(dict[str, Callable[[Any], Any]]):
    """Decoders for ``raw=True``: every payload as stored, a plain dict, no upcasting."""

    def __missing__(self, event_type: str) -> Callable[[Any], Any]:
        return _codec.decode_payload


Opener = Callable[[str, str, int], tuple[str, frozenset[str]]]
"""``(stored payload, event id, position) -> (payload with personal fields opened, fields forgotten)``:
a store's ``Keyring.open`` on its connection, given to reads when the log holds sealed fields."""

_RAW: Final = _Raw()
PAGE: Final = 2000
LAST: Final = (1 << 63) - 1
_NO_LOCK: Final = nullcontext()


class Reach:
    """How far a paged read got: the version (or position) of the last row it fetched.

    A record may upcast into several events or into none, so counting records cannot tell
    the version a reader has applied; the rows can. ``load`` reports exactly this version:
    never one read by a separate query, which another writer may have moved meanwhile.
    """

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        self.last = last


def _pages(
    conn: Connection,
    query: str,
    args: Callable[[int, int], tuple[Any, ...]],
    after: int,
    key: int,
    limit: int | None,
    lock: AbstractContextManager[Any],
    upcasting: bool,
    raw: bool,
    opener: Opener | None,
    reach: Reach | None = None,
) -> Iterator[list[Recorded]]:
    upcasting = upcasting and not raw
    sql: str = conn.sql.VERSIONED[query] if upcasting else getattr(conn.sql, query)
    decoders = _RAW if raw else _codec.decoders()
    timestamps = _codec.timestamps
    metadata = _codec.decode_metadata
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE if remaining is None else min(PAGE, remaining)
        gone = None
        with lock:
            rows: list[Any] = conn.execute(sql, args(after, page)).fetchall()
            if opener is not None:
                gone = _open(rows, opener)
        try:
            if upcasting:
                records = _upcast_page(rows, decoders)
            else:
                # The hottest loop in reading: no Python call but the decode on the common path.
                records = [
                    Recorded(p, i, a, at, t, v, timestamps[c], decoders[t](d), {} if m == "{}" else metadata(m))
                    for p, i, a, at, t, v, c, d, m in rows
                ]
        except (msgspec.ValidationError, msgspec.DecodeError):
            _explain(rows, decoders)
            raise
        if gone:
            records = _mark_forgotten(records, gone)
        if reach is not None and rows:
            reach.last = rows[-1][key]
        yield records
        if len(rows) < page:
            return
        after = rows[-1][key]
        if remaining is not None:
            remaining -= page


def _open(rows: list[Any], opener: Opener) -> dict[int, frozenset[str]]:
    """Open the sealed personal fields of a page's rows in place; the fields forgotten, by position."""
    gone = {}
    mark = _personal.MARK
    for k, row in enumerate(rows):
        if mark in row[7]:
            text, names = opener(row[7], row[1], row[0])
            rows[k] = (*row[:7], text, *row[8:])
            if names:
                gone[row[0]] = names
    return gone


def _mark_forgotten(records: list[Recorded], gone: dict[int, frozenset[str]]) -> list[Recorded]:
    marked = []
    for record in records:
        names = gone.get(record.position)
        if names:
            record = msgspec.structs.replace(record, data=_personal.mark(record.data, names, _codec.attribute))
        marked.append(record)
    return marked


def _upcast_page(rows: list[Any], decoders: dict[str, Callable[[Any], Any]]) -> list[Recorded]:
    """A page read while upcasters are registered: events stored in today's shape decode as
    usual, older ones go through their upcasters (and may become several events, or none)."""
    upcast, as_stored = _upcasters.upcast, _upcasters.as_stored
    registry = _events.registry
    timestamps = _codec.timestamps
    decode, convert = _codec.decode_payload, msgspec.convert
    plain: dict[tuple[str, int], bool] = {}
    records: list[Recorded] = []
    append = records.append
    for p, i, a, at, t, v, c, d, m, sv in rows:
        meta = {} if m == "{}" else _codec.decode_metadata(m)
        try:
            stored = plain.get((t, sv))
            if stored is None:
                stored = plain[(t, sv)] = as_stored(t, sv)
            if not stored:
                for new_type, payload in upcast(t, sv, decode(d)):
                    cls = registry.get(new_type)
                    event = payload if cls is None else convert(payload, cls)
                    append(Recorded(p, i, a, at, new_type, v, timestamps[c], event, meta))
                continue
        except (SchemaError, msgspec.ValidationError) as e:
            raise SchemaError(f"event at position {p} ({t} v{sv}) cannot be upcast: {e}", p) from e
        append(Recorded(p, i, a, at, t, v, timestamps[c], decoders[t](d), meta))
    return records


def _explain(rows: list[tuple[Any, ...]], decoders: dict[str, Callable[[Any], Any]]) -> None:
    for p, _i, _a, _at, t, _v, _c, d, *_ in rows:
        try:
            decoders[t](d)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise SchemaError(
                f"event at position {p} ({t}) does not decode with the current class: {e}; "
                "add an upcaster or change the class back",
                p,
            ) from e


def log_pages(
    conn: Connection,
    upcasting: bool,
    after: int,
    types: frozenset[str] | None,
    lock: AbstractContextManager[Any] = _NO_LOCK,
    upto: int = LAST,
    opener: Opener | None = None,
) -> Iterator[list[Recorded]]:
    """Events with ``after < position <= upto`` in position order, a page (list) at a time,
    optionally of some types only. ``upcasting``: see ``EventStore._upcasting``."""
    if types is None:
        return _pages(conn, "READ_ALL", lambda a, n: (a, upto, n), after, 0, None, lock, upcasting, False, opener)
    if upcasting:
        # A stored type may upcast into a wanted one (a rename, a split): filter after upcasting.
        pages = _pages(conn, "READ_ALL", lambda a, n: (a, upto, n), after, 0, None, lock, upcasting, False, opener)
        return ([record for record in page if record.event_type in types] for page in pages)
    type_list = msgspec.json.encode(sorted(types)).decode()
    args: Callable[[int, int], tuple[Any, ...]] = lambda a, n: (a, upto, type_list, n)  # noqa: E731
    return _pages(conn, "READ_ALL_TYPES", args, after, 0, None, lock, upcasting, False, opener)


def read_log(
    conn: Connection,
    upcasting: bool,
    after: int,
    types: frozenset[str] | None,
    limit: int | None,
    lock: AbstractContextManager[Any],
    *,
    raw: bool,
    opener: Opener | None = None,
) -> Iterator[Recorded]:
    """``log_pages``, one event at a time, at most ``limit`` of them (``raw``: payloads as
    stored, plain dicts, no upcasting)."""
    if types is None:  # fetch no more than the limit
        pages = _pages(conn, "READ_ALL", lambda a, n: (a, LAST, n), after, 0, limit, lock, upcasting, raw, opener)
    elif raw:
        pages = _pages(conn, "READ_ALL", lambda a, n: (a, LAST, n), after, 0, None, lock, False, True, opener)
        pages = ([record for record in page if record.event_type in types] for page in pages)
    else:
        pages = log_pages(conn, upcasting, after, types, lock, opener=opener)
    records = itertools.chain.from_iterable(pages)
    return records if limit is None else itertools.islice(records, limit)


def read_aggregate(
    conn: Connection,
    upcasting: bool,
    aggregate_id: str,
    after: int,
    upto: int,
    lock: AbstractContextManager[Any],
    raw: bool,
    opener: Opener | None,
    reach: Reach | None = None,
) -> Iterator[Recorded]:
    """One aggregate's events with ``after < version <= upto``, in version order (``reach``:
    told the version of each page's last stored event as the page is yielded)."""
    args: Callable[[int, int], tuple[Any, ...]] = lambda a, n: (aggregate_id, a, upto, n)  # noqa: E731
    pages = _pages(conn, "READ_AGGREGATE", args, after, 5, None, lock, upcasting, raw, opener, reach)
    return itertools.chain.from_iterable(pages)


class StoreInfo(msgspec.Struct, frozen=True):
    """What ``EventStore.info`` reports.

    Attributes:
        schema_version: the file format's version.
        events: how many events the log holds.
        aggregates: how many aggregates (streams).
        projections: ``(name, version, position, updated_at)`` of each projection's checkpoint.
        subscriptions: ``(name, position, updated_at)`` of each subscription's checkpoint.
        forgotten_subjects: how many data subjects ``forget`` has forgotten.
        device: the device this file is (see ``EventStore.sync``), or None.
        pending: a device's events its hub has not placed yet (not counted in ``events``).
    """

    schema_version: int
    events: int
    aggregates: int
    projections: list[tuple[str, int, int, str]]
    subscriptions: list[tuple[str, int, str]]
    forgotten_subjects: int = 0
    device: str | None = None
    pending: int = 0


def store_info(tx: Transactions, forgetting: bool) -> StoreInfo:
    """``EventStore.info``: in one read view, so the counts agree."""
    with tx.lock, tx.translate("cannot read"), tx.backend.reading():
        conn = tx.open()
        counts: Any = conn.execute(conn.sql.COUNTS).fetchone()
        projections: list[Any] = conn.execute(conn.sql.PROJECTIONS).fetchall()
        subscriptions: list[Any] = conn.execute(conn.sql.SUBSCRIPTIONS).fetchall()
        schema_version = tx.backend.schema_version()
        forgotten = int(conn.execute(conn.sql.FORGOTTEN_SUBJECTS).get) if forgetting else 0
        device = conn.execute(device_sql.DEVICE_STATE).fetchone() if has_table(conn, "minies_device") else None
    info = StoreInfo(schema_version, counts[0], counts[1], projections, subscriptions, forgotten)
    return info if device is None else msgspec.structs.replace(info, device=device[0], pending=device[1])


def aggregates(tx: Transactions, aggregate_type: Any) -> list[tuple[str, str, int]]:
    """``EventStore.aggregates``: of one type (a name, or an ``Aggregate`` class), or all."""
    if aggregate_type is not None and not isinstance(aggregate_type, str):
        aggregate_type = aggregate_type.aggregate_type
    with tx.lock, tx.translate("cannot read"):
        conn = tx.open()
        if aggregate_type is None:
            rows: list[Any] = conn.execute(conn.sql.AGGREGATES).fetchall()
        else:
            rows = conn.execute(conn.sql.AGGREGATES_OF_TYPE, (aggregate_type,)).fetchall()
    return rows
