"""Reading the log back as ``Recorded`` envelopes, a page of rows at a time.

Pages keep each read transaction short: an iterator the caller holds open never pins the
WAL, and never keeps a writer (this store or another) waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

import apsw
import msgspec

from minies import _codec, _schema
from minies._errors import SchemaError
from minies._events import Recorded

PAGE: Final = 2000
LAST: Final = (1 << 63) - 1
_NO_LOCK: Final = nullcontext()


def _records(
    conn: apsw.Connection,
    sql: str,
    args: Callable[[int, int], tuple[Any, ...]],
    after: int,
    key: int,
    limit: int | None,
    lock: AbstractContextManager[Any],
) -> Iterator[Recorded]:
    decoders = _codec.decoders()
    timestamps = _codec.timestamps
    metadata = _codec.decode_metadata
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE if remaining is None else min(PAGE, remaining)
        with lock:
            rows: list[Any] = conn.execute(sql, args(after, page)).fetchall()
        try:
            # The hottest loop in reading: no Python call but the decode on the common path.
            records = [
                Recorded(p, i, a, at, t, v, timestamps[c], decoders[t](d), {} if m == "{}" else metadata(m))
                for p, i, a, at, t, v, c, d, m in rows
            ]
        except (msgspec.ValidationError, msgspec.DecodeError):
            _explain(rows, decoders)
            raise
        yield from records
        if len(rows) < page:
            return
        after = rows[-1][key]
        if remaining is not None:
            remaining -= page


def _explain(rows: list[tuple[Any, ...]], decoders: dict[str, Callable[[Any], Any]]) -> None:
    for p, _i, _a, _at, t, _v, _c, d, _m in rows:
        try:
            decoders[t](d)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise SchemaError(
                f"event at position {p} ({t}) does not decode with the current class: {e}; "
                "add an upcaster or change the class back"
            ) from e


def read_log(
    conn: apsw.Connection,
    after: int = 0,
    types: frozenset[str] | None = None,
    limit: int | None = None,
    lock: AbstractContextManager[Any] = _NO_LOCK,
    upto: int = LAST,
) -> Iterator[Recorded]:
    """Events with ``after < position <= upto`` in position order, optionally of some types only."""
    if types is None:
        return _records(conn, _schema.READ_ALL, lambda a, n: (a, upto, n), after, 0, limit, lock)
    type_list = msgspec.json.encode(sorted(types)).decode()
    return _records(conn, _schema.READ_ALL_TYPES, lambda a, n: (a, upto, type_list, n), after, 0, limit, lock)


def read_aggregate(
    conn: apsw.Connection,
    aggregate_id: str,
    after: int,
    upto: int,
    lock: AbstractContextManager[Any] = _NO_LOCK,
) -> Iterator[Recorded]:
    """One aggregate's events with ``after < version <= upto``, in version order."""
    return _records(conn, _schema.READ_AGGREGATE, lambda a, n: (aggregate_id, a, upto, n), after, 5, None, lock)
