"""Erasure: forgetting a data subject, in the log that was written here or in one received.

``forget`` destroys the subject's keys, drops the snapshots that hold its data, cleans the
read models (their ``forget`` hook, or a rebuild) and records a ``SubjectForgotten`` event,
all in one transaction; then the bytes leave the files (``Backend.purge``). A log that
arrives by ``copy`` (or any later way of moving a log) carries its erasures with it:
``received`` applies each exactly as the ``forget`` that recorded it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from minies import _codec, _personal
from minies._append import Appender
from minies._database import Database
from minies._errors import ProjectionError, SchemaError
from minies._events import ANY, ERASURES, SubjectForgotten
from minies._keyring import Keyring
from minies._projections import Projector
from minies._stored_types import StoredTypes
from minies._transactions import Transactions


class Erasure(msgspec.Struct, frozen=True):
    """What ``EventStore.forget`` did.

    Attributes:
        subject: the data subject forgotten.
        keys: how many of its keys were destroyed (0: it had none; nothing was written).
        snapshots_dropped: the aggregates whose snapshots held its data and were dropped.
        projections: the read models cleaned, by their ``forget`` hook or a rebuild.
        position: the ``SubjectForgotten`` event's position (0 if none was written).
        purged: the old bytes left the files too (SQLite's WAL truncated: False if a reader
            kept old pages in use, which leave at the next checkpoint, or on close; PostgreSQL's
            keys and snapshots tables rewritten: False if that failed).
    """

    subject: str
    keys: int
    snapshots_dropped: list[str]
    projections: list[str]
    position: int
    purged: bool


class Eraser:
    """One store's erasures."""

    def __init__(
        self,
        tx: Transactions,
        keys: Keyring,
        appender: Appender,
        projector: Projector,
        db: Database,
        types: StoredTypes,
        failed: dict[str, ProjectionError],
    ) -> None:
        self._tx = tx
        self._types = types
        self._failed = failed
        self._keys = keys
        self._appender = appender
        self._projector = projector
        self._db = db

    def forget(self, subject: object, reason: object, metadata: Mapping[str, Any] | None) -> Erasure:
        """``EventStore.forget``."""
        if not isinstance(subject, str):
            raise TypeError(f"subject must be a str, got {type(subject).__name__}: {subject!r:.80}")
        if not subject:
            raise ValueError("subject must not be empty")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        meta = _codec.encode_metadata(metadata)
        event = SubjectForgotten(subject=subject, reason=reason)
        nothing = Erasure(subject, 0, [], [], 0, False)
        with self._tx.lock:
            if not self._keys.enabled:
                return nothing
            with self._tx.write(), self._tx.translate(f"cannot forget {subject!r}"):
                conn = self._tx.conn
                keys = self._keys.forget(conn, subject, _codec.now_text())
                if not keys:
                    return nothing
                holders = self.drop_sealed_snapshots(keys)
                self._projector.erased.clear()  # the event's inline apply cleans the read models
                self._appender.append(ERASURES, ERASURES, ANY, meta, [event], [_codec.encode_event(event)], None)
                cleaned = sorted(set(self._projector.erased))
                position = int(conn.execute(conn.sql.HEAD_POSITION).get)
            purged = self._tx.backend.purge(snapshots=bool(holders))
        return Erasure(subject, len(keys), holders, cleaned, position, purged)

    def drop_sealed_snapshots(self, keys: Sequence[str]) -> list[str]:
        """Drop the snapshots of every aggregate holding a value sealed under one of ``keys``
        (a snapshot holds the plaintext); return those aggregates. Inside the caller's write."""
        conn = self._tx.conn
        holders = sorted(
            {row[0] for key in keys for row in conn.execute(conn.sql.SEALED_AGGREGATES, (_personal.sealed_by(key),))}
        )
        for aggregate_id in holders:
            conn.execute(conn.sql.DROP_SNAPSHOTS_OF, (aggregate_id,))
        return holders

    def received(self, rows: Sequence[Sequence[Any]], keys: Sequence[Sequence[Any]] = ()) -> bool:
        """Take in ``rows`` (stored events this store did not write: a copy's, stored already)
        and the key rows ``keys`` their sealed fields need. The erasures among them are applied
        exactly as the ``forget`` that recorded each: the subject's keys that sealed events
        before it are destroyed and the snapshots holding their data dropped; then the keys are
        stored, and this store's read models brought up to the head (which cleans them: their
        ``forget`` hook, or a rebuild).

        Callers hold the lock inside the write that stored ``rows``; all of it commits with
        them. True if a key was destroyed or a read model cleaned: then ``purge`` once the
        write has committed.
        """
        conn = self._tx.conn
        destroyed = False
        for row in rows:
            if row[4] == SubjectForgotten.event_type:
                subject = msgspec.json.decode(row[6])["subject"]
                gone = self._keys.forget(conn, subject, row[8], before=row[0])
                self.drop_sealed_snapshots(gone)
                destroyed = destroyed or bool(gone)
        if keys:  # (a subject forgotten and written again has a second key: it fits once the first is gone)
            conn.executemany(conn.sql.COPY_KEY, [self._keys.fitting(conn, row) for row in keys])
            self._keys.clear()
        self._types.load(conn)  # (so newer events read as such from now on, not with fields dropped)
        self._projector.erased.clear()
        for name in list(self._projector.projections):
            try:
                with self._tx.write():  # a savepoint
                    self._projector.catch_up(conn, self._db, name)
            except ProjectionError as e:
                if not isinstance(e.__cause__, SchemaError):
                    raise
                # events written by newer code: the log takes them, this read model stops before them
                self._failed[name] = e
                del self._projector.projections[name]
        self._projector.forget()
        self._appender.tip.clear()
        return destroyed or bool(self._projector.erased)
