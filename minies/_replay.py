"""Replay: an aggregate's events fed to a function, fast, from one view of the log.

``load`` and ``fold`` read here. On the plain path SQLite assembles each chunk of payloads
into one JSON array, so the per-event Python work is the decode and the step alone; when
upcasters are registered or sealed fields must be opened, the records path reads pages of
envelopes instead. Either way the version reported is the last one applied: a writer that
appends meanwhile is never counted in a state it is not in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

from minies import _codec, _events, _personal
from minies._errors import NotFound, PersonalDataError, SchemaError
from minies._events import Event, Recorded
from minies._log import Opener, Reach, read_aggregate
from minies._transactions import Transactions

_LOAD_CHUNK: Final = 20_000
_decode_raws = msgspec.json.Decoder(list[msgspec.Raw]).decode


class Replayer:
    """One store's replay (``read_view()`` says how reads must decode; ``remedy()`` what to do
    about a sealed field the store cannot open)."""

    def __init__(
        self,
        tx: Transactions,
        read_view: Callable[[], tuple[bool, Opener | None]],
        remedy: Callable[[], str],
    ) -> None:
        self._tx = tx
        self._read_view = read_view
        self._remedy = remedy

    def replay(
        self, aggregate_id: str, aggregate_type: str | None, after: int, upto: int, step: Callable[[Event], None]
    ) -> int:
        """Feed events ``after < version <= upto`` to ``step``; return how many there were.

        SQLite assembles each chunk into one JSON array, so the per-event Python work is
        the decode and ``step`` alone.
        """
        with self._tx.lock:
            upcasting, opener = self._read_view()
        if upcasting:
            return self._records(aggregate_id, aggregate_type, after, upto, step, opener)
        decoders = _codec.decoders()
        total = 0
        while after < upto:
            with self._tx.lock, self._tx.translate("cannot read"):
                conn = self._tx.open()
                chunk = (aggregate_id, after, min(upto, after + _LOAD_CHUNK))
                row: Any = conn.execute(conn.sql.READ_AGGREGATE_PAYLOADS, chunk).fetchone()
            payloads, types, high, count, low_type, high_type = row
            if not count:
                break
            if opener is not None and _personal.MARK in payloads:  # opening a sealed field needs its event's id
                return total + self._records(aggregate_id, aggregate_type, after, upto, step, opener)
            if aggregate_type is not None and (low_type != aggregate_type or high_type != aggregate_type):
                raise SchemaError(
                    f"aggregate {aggregate_id!r} holds {low_type} events, not {aggregate_type}; "
                    "load it with the matching class"
                )
            raws = _decode_raws(payloads)
            event_types = types.split(",")
            if len(raws) != count or len(event_types) != count:
                raise SchemaError(f"the events of aggregate {aggregate_id!r} after version {after} are damaged")
            unknown = set(event_types).difference(_events.registry)
            if unknown:
                raise no_class(aggregate_id, unknown)
            raw = None
            try:
                for event_type, raw in zip(event_types, raws):  # noqa: B905 - lengths checked above
                    step(decoders[event_type](raw))
            except Exception as e:
                version = after + 1 + next(i for i, r in enumerate(raws) if r is raw)
                if isinstance(e, msgspec.ValidationError | msgspec.DecodeError):
                    raise SchemaError(
                        f"event {version} of aggregate {aggregate_id!r} does not decode with the current class: {e}"
                    ) from e
                e.add_note(f"while applying event {version} of aggregate {aggregate_id!r}")
                raise
            total += count
            after = high
            if count < _LOAD_CHUNK:
                break
        return total

    def _records(
        self,
        aggregate_id: str,
        aggregate_type: str | None,
        after: int,
        upto: int,
        step: Callable[[Event], None],
        opener: Opener | None,
    ) -> int:
        """``replay`` through the records, which upcast and open sealed fields."""
        reach = Reach(after)
        conn, lock = self._tx.open(), self._tx.reading()
        records = read_aggregate(conn, True, aggregate_id, after, upto, lock, False, opener, reach)
        for record in records:
            if aggregate_type is not None and record.aggregate_type != aggregate_type:
                raise SchemaError(
                    f"aggregate {aggregate_id!r} holds {record.aggregate_type} events, not {aggregate_type}; "
                    "load it with the matching class"
                )
            if isinstance(record.data, dict):
                raise no_class(aggregate_id, {record.event_type})
            hidden = _personal.sealed(record.data) if opener is not None else None  # (only an opener marks them)
            if hidden:
                raise PersonalDataError(
                    f"aggregate {aggregate_id!r} cannot be loaded: its event {record.version} holds personal fields "
                    f"this store cannot open ({', '.join(sorted(hidden))}); {self._remedy()}"
                )
            try:
                step(record.data)
            except Exception as e:
                e.add_note(f"while applying event {record.version} of aggregate {aggregate_id!r}")
                raise
        return reach.last - after  # the last version applied: later appends are not in this state


def no_events(aggregate_id: str, upto: int | None) -> NotFound:
    return NotFound(
        f"aggregate {aggregate_id!r} has no events" + (f" at or below version {upto}" if upto is not None else "")
    )


def no_class(aggregate_id: str, event_types: set[str]) -> SchemaError:
    names = ", ".join(sorted(event_types))
    return SchemaError(
        f"aggregate {aggregate_id!r} holds events of types with no class in this process ({names}); "
        "import the module that defines them (read() returns such events as dicts)"
    )


def check_events(
    tx: Transactions,
    read_all: Callable[[int], Iterator[Recorded]],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[tuple[int, str, str]]:
    """``EventStore.check_events``: read the whole log (``read_all(after)``), and list
    ``(position, event_type, error)`` for each event that does not upcast or decode."""
    problems: list[tuple[int, str, str]] = []
    after = 0
    while True:
        try:
            for record in read_all(after):
                after = record.position
                if progress is not None and after % 10_000 == 0:
                    progress(after, total)
            return problems
        except SchemaError as e:
            if e.position is None or e.position <= after:
                raise
            after = e.position
            with tx.lock:
                event_type = tx.open().execute(tx.sql.EVENT_TYPE_AT, (after,)).get
            problems.append((after, str(event_type), str(e)))
