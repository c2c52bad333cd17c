"""A device: a minies file that writes offline and syncs through a hub.

Its own appends go to its pending tail (see ``_backends.device_sql``), each stamped with its
place in the device's sequence and its origin hash, and with the change it made to the read
models, recorded by SQLite's session extension (https://sqlite.org/sessionintro.html). A sync
takes the reply of the hub in one transaction: it checks that the hub's rows extend its chain,
undoes the pending changes to the read models (their inverse changesets, newest first),
appends the hub's rows to the confirmed log exactly as the hub stores them, brings the read
models up to them, takes out the pending events whose placement or rejection they carry, and
puts the others back on top. So the read models always show the confirmed log plus the
pending tail, and are exactly a rebuild from the hub's log once nothing is pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw
import msgspec

from minies import _audit, _codec, _origins, _personal
from minies._append import Appender
from minies._backends import device_sql
from minies._database import Database
from minies._erasure import Eraser
from minies._errors import SyncError
from minies._events import ANY, AnyVersion, EventRejected, Recorded
from minies._keyring import Keyring
from minies._projections import Projector
from minies._transactions import Transactions
from minies._wire import Pending, Push, Reply


def _watched(table: str) -> bool:
    """What a pending append's changeset records: the read models' own tables, never the log,
    minies' tables (their checkpoints go back to the confirmed head by themselves) or SQLite's."""
    return not (table == "events" or table.lower().startswith(("minies_", "sqlite_")))


class Device:
    """One device store's pending tail and its syncs (see the module's docstring)."""

    def __init__(
        self, tx: Transactions, keys: Keyring, appender: Appender, projector: Projector, db: Database, eraser: Eraser
    ) -> None:
        self._tx = tx
        self._keys = keys
        self._appender = appender
        self._projector = projector
        self._db = db
        self._eraser = eraser
        self.id: str = tx.conn.execute(device_sql.DEVICE).fetchone()[0]
        self._mine = f'"{_origins.KEY}":{{"device":{msgspec.json.encode(self.id).decode()},'  # (how its origin starts)
        # (rollbacks, seq, origin, base) as this store's last append left them
        self._head: tuple[int, int, bytes, int] | None = None

    @classmethod
    def of(
        cls, tx: Transactions, keys: Keyring, appender: Appender, projector: Projector, db: Database, eraser: Eraser
    ) -> Device | None:
        """The store's device, if its file is one (and its appends then stamped by it)."""
        if tx.sql is not device_sql.SQL:
            return None
        appender.device = device = cls(tx, keys, appender, projector, db, eraser)
        return device

    # ------------------------------------------------------------------ offline appends
    def watch(self) -> apsw.Session | None:
        """Start recording what the read models do (None: there are none)."""
        if not self._projector:
            return None
        session = apsw.Session(self._tx.conn, "main")  # type: ignore[arg-type]
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)  # read tables without a primary key too
        session.table_filter(_watched)
        session.attach()
        return session

    def stamp(self, rows: Sequence[Sequence[Any]], expected: int | AnyVersion) -> list[tuple[Any, ...]]:
        """An append's rows as its pending tail stores them: each with its place in the device's
        sequence, its origin hash, the version it expected and the hub position it had seen."""
        conn = self._tx.conn
        key = self._tx.rollbacks
        if self._head is not None and self._head[0] == key and self._appender.tip.unchanged(conn):
            _, seq, origin, base = self._head
        else:  # another connection wrote, or this one rolled back, or took in a sync
            seq, origin, base = conn.execute(device_sql.STAMPING).fetchone()
        first = seq + 1
        stamped = []
        for k, row in enumerate(rows):
            seq += 1
            wanted = None if expected is ANY else expected + k
            origin = _origins.digest(
                origin, self.id, seq, row[1], row[2], row[3], row[4], row[10], row[6], row[7], row[8], wanted, base
            )
            stamped.append((*row, seq, origin, wanted, base, first, None))
        self._head = (key, seq, origin, base)
        return stamped

    def record(self, position: int, session: apsw.Session) -> None:
        """Keep what an append's read models did (``watch``), to undo it at the next sync."""
        changes = session.changeset()
        session.close()
        if changes:
            self._tx.conn.execute(device_sql.CHANGES, (changes, position))

    # ------------------------------------------------------------------ what goes up
    def push(self, accepting: frozenset[str] = frozenset(), limit: int = 10_000) -> Push:
        """The pending events the hub has not settled, and where the confirmed log ends."""
        with self._tx.lock, self._tx.translate("cannot read the pending events"):
            conn = self._tx.open()
            settled = conn.execute(device_sql.DEVICE).fetchone()[3]
            rows: list[Any] = conn.execute(device_sql.PENDING_ROWS, (settled,)).fetchall()
            head = conn.execute(device_sql.CONFIRMED_HEAD_ROW).fetchone() or (0, _audit.GENESIS)
            needed = {key_id for row in rows for key_id in _personal.key_ids(row[6])}
            keys = [row for row in conn.execute(conn.sql.KEY_ROWS).fetchall() if row[0] in needed]
            named = {row[4] for row in rows}
            types = [row for row in conn.execute(conn.sql.EVENT_TYPE_ROWS[4]).fetchall() if row[0] in named]
        pending = [
            Pending(seq, i, a, at, t, s, d, m, c, e, b, batch, o, at in accepting)
            for _, i, a, at, t, _, d, m, c, _, s, seq, o, e, b, batch in rows
        ]
        return Push(self.id, head[0], head[1], pending, keys, types, limit)

    # ------------------------------------------------------------------ what comes down
    def receive(self, reply: Reply) -> tuple[list[Recorded], bool]:
        """Take in a hub's ``reply`` (see the module's docstring), all of it in one
        transaction: ``(this device's rejections it brought, more to pull)``."""
        if reply.device != self.id:
            raise SyncError(f"this reply is for device {reply.device!r}, not {self.id!r}")
        with self._tx.lock:
            conn = self._tx.open()
            with self._tx.translate("cannot read this device's log"):
                head = conn.execute(device_sql.CONFIRMED_HEAD).get
            if reply.head <= head and reply.after >= head:
                return [], False  # nothing new: nothing to write
            with self._tx.write(), self._tx.translate("cannot take in the hub's events"):
                conn = self._tx.conn
                head, head_hash = conn.execute(device_sql.CONFIRMED_HEAD_ROW).fetchone() or (0, _audit.GENESIS)
                rows = [tuple(row) for row in reply.rows if row[0] > head]
                if reply.after > head:
                    raise SyncError(
                        f"this reply continues the hub's log after position {reply.after}, and this device's "
                        f"ends at {head}: take the replies in order (or sync again)"
                    )
                if reply.rows and reply.rows[0][0] <= head:
                    # events the device holds already (an older reply): they must be the same
                    mine = {p: h for p, h in conn.execute(device_sql.HASHES_BETWEEN, (reply.rows[0][0], head))}
                    if any(mine.get(row[0]) != row[9] for row in reply.rows if row[0] <= head):
                        raise SyncError("this reply's events differ from the ones this device holds: it diverged")
                _check_chain(head, head_hash, rows)
                # A pending event leaves the tail when its placement (or rejection) arrives in
                # the confirmed log, not before: the device's reads never lose sight of it.
                settled = self._settled(rows)
                if settled is not None:
                    conn.execute(device_sql.SETTLE, settled)
                survivors: list[Any] = conn.execute(device_sql.PENDING_AFTER, (self._settled_seq(conn),)).fetchall()
                undone = self.undo()
                self._head = None
                conn.execute(device_sql.DROP_PENDING)
                conn.executemany(device_sql.INSERT_CONFIRMED, rows)
                if conn.execute(device_sql.STORED_CONFIRMED_AFTER, (head,)).get != len(rows):
                    raise SyncError("the hub's events were not all stored; nothing was taken in")
                conn.executemany(conn.sql.COPY_EVENT_TYPE, reply.types)
                erased = self._eraser.received(rows, reply.keys)
                if not undone:  # the read models cannot be trusted to be the log's: rebuilt from it
                    for name in self._projector.projections:
                        self._projector.rebuild(conn, self._db, name)
                self._replace(survivors)
            if erased:
                self._tx.backend.purge(snapshots=True)
        more = bool(rows) and rows[-1][0] < reply.head
        rejected = [
            Recorded(r[0], r[1], r[2], r[3], r[4], r[5], _codec.parse_timestamp(r[8]), rejection, {})
            for r in rows
            if r[4] == EventRejected.event_type and (rejection := _codec.decoders()[r[4]](r[6])).device == self.id
        ]
        return rejected, more

    def _settled(self, rows: Sequence[Sequence[Any]]) -> tuple[int, bytes] | None:
        """(seq, origin hash) of this device's last event that ``rows`` place or reject (its
        sequence grows with the hub's positions: the last one found from the end)."""
        for row in reversed(rows):
            if row[4] == EventRejected.event_type:
                rejection = msgspec.json.decode(row[6], type=EventRejected)
                if rejection.device == self.id:
                    return rejection.seq, bytes.fromhex(rejection.origin)
            elif self._mine in row[7]:  # (a cheap look before the decode)
                found = _origins.unstamped(row[7])
                if found is not None and found[1].device == self.id:
                    return found[1].seq, bytes.fromhex(found[1].hash)
        return None

    @staticmethod
    def _settled_seq(conn: Any) -> int:
        return int(conn.execute(device_sql.DEVICE).fetchone()[3])

    def undo(self) -> bool:
        """Undo what the pending events did to the read models (inside a write). False if some
        change no longer applied (a read model was rebuilt since): then rebuild them all."""
        conn = self._tx.conn
        missed = 0

        def conflict(reason: int, change: Any) -> int:
            nonlocal missed
            missed += 1
            return apsw.SQLITE_CHANGESET_OMIT

        changesets = [changes for (changes,) in conn.execute(device_sql.PENDING_CHANGES).fetchall()]
        for changes in changesets:
            apsw.Changeset.apply(apsw.Changeset.invert(changes), conn, conflict=conflict)  # type: ignore[call-overload]
        if changesets:  # each read model is where it was before the first of them: at the confirmed head
            conn.execute(device_sql.CHECKPOINTS_BACK)
        self._projector.forget()
        return not missed

    def _replace(self, survivors: Sequence[Sequence[Any]]) -> None:
        """Put pending events back on top of the confirmed log, as their appends would now
        write them (their versions and positions after it), keeping their origins."""
        conn = self._tx.conn
        self._appender.tip.clear()
        k = 0
        while k < len(survivors):
            batch = [row for row in survivors[k:] if row[15] == survivors[k][15]]
            k += len(batch)
            first = batch[0]
            state = conn.execute(conn.sql.APPEND_STATE, (first[2],)).fetchone()
            current, _, position, previous = state if state else (0, None, 0, _audit.GENESIS)
            current = current or 0
            session = self.watch()
            rows = []
            for n, row in enumerate(batch, 1):
                (digest,) = _audit.chain_batch(
                    previous,
                    position + n,
                    [row[1]],
                    row[2],
                    row[3],
                    [row[4]],
                    current + n,
                    [row[6]],
                    row[7],
                    row[8],
                    [row[10]],
                )
                previous = row[9]
                rows.append((position + n, *row[1:5], current + n, *row[6:9], digest, *row[10:16], None))
            conn.executemany(conn.sql.INSERT_EVENT, rows)
            if session is not None:
                self._projector.apply(conn, self._db, [self._record(row) for row in rows], position, _codec.now_text())
                self.record(rows[-1][0], session)

    def _record(self, row: Sequence[Any]) -> Recorded:
        data = row[6]
        if _personal.MARK in data:
            data, _ = self._keys.open(self._tx.conn, data, row[1], row[0])
        event = _codec.decoders()[row[4]](data)
        metadata = _codec.decode_metadata(row[7])
        return Recorded(row[0], row[1], row[2], row[3], row[4], row[5], _codec.parse_timestamp(row[8]), event, metadata)

    # ------------------------------------------------------------------ its rejections
    def handled(self) -> int:
        """The version of the stream of rejections up to which this device's were handed over."""
        with self._tx.lock, self._tx.translate("cannot read this device's state"):
            return int(self._tx.open().execute(device_sql.HANDLED).get)

    def handle(self, version: int) -> None:
        """Note a rejection handed over (in the caller's transaction, with what its retry saved)."""
        with self._tx.lock, self._tx.write(), self._tx.translate("cannot write this device's state"):
            self._tx.conn.execute(device_sql.HANDLE, (version,))

    # ------------------------------------------------------------------ what it knows
    def audit_state(self) -> tuple[str, list[Any], Any]:
        """(its id, its pending rows, its settled (seq, origin)) for ``verify(origins=True)``."""
        with self._tx.lock, self._tx.translate("cannot read the pending events"):
            conn = self._tx.open()
            rows: list[Any] = conn.execute(device_sql.PENDING_ROWS, (0,)).fetchall()
            state = conn.execute(device_sql.DEVICE).fetchone()[1:3]
        return self.id, rows, state

    def pending(self) -> list[Recorded]:
        with self._tx.lock, self._tx.translate("cannot read the pending events"):
            rows: list[Any] = self._tx.open().execute(device_sql.PENDING_ROWS, (0,)).fetchall()
            return [self._record(row) for row in rows]


def _check_chain(head: int, previous: bytes, rows: Sequence[Sequence[Any]]) -> None:
    """The hub's rows must extend this device's confirmed log: the next positions, each hash
    the chain's own (so they are the hub's events, unaltered, in its order)."""
    for row in rows:
        head += 1
        expected = _audit.chain_row(previous, row)
        if row[0] != head or expected != row[9]:
            raise SyncError(
                f"the hub's event at position {row[0]} does not extend this device's log (its hash or position "
                "is not the chain's); nothing was taken in"
            )
        previous = row[9]
