"""A hub: any minies store (a file, or PostgreSQL for a team) that devices sync through.

The hub's log is *the* history. A device's push is settled in one transaction: each pending
event the hub has not seen, in the device's sequence, is checked against the device's origin
chain (a gap, a reorder, an altered or forged event refuses the whole push, and nothing is
written), then placed at the next position with its origin in its metadata, or, when the
aggregate moved on without the device knowing (a conflict), recorded as an ``EventRejected``
unless the aggregate type's policy is to accept it. An event the hub settled already is
skipped, so a push sent twice (a retry, a replayed bundle) places nothing twice. Then the
reply carries the hub's log after the device's head, which includes the device's own events
where the hub placed them.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from minies import _audit, _codec, _origins, _personal
from minies._append import Appender
from minies._backends import has_table, swallowed
from minies._erasure import Eraser
from minies._errors import StorageError, SyncError
from minies._events import REJECTIONS, EventRejected
from minies._projections import hold_the_log
from minies._stored_types import StoredTypes
from minies._transactions import Transactions
from minies._wire import Pending, Push, Reply

CREATE_ORIGINS: Final = (
    "CREATE TABLE IF NOT EXISTS minies_origins (device TEXT PRIMARY KEY, seq BIGINT NOT NULL, origin TEXT NOT NULL)"
)
_CURSOR: Final = "SELECT seq, origin FROM minies_origins WHERE device = ?"
_ADVANCE: Final = (
    "INSERT INTO minies_origins (device, seq, origin) VALUES (?, ?, ?)"
    " ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, origin = excluded.origin"
)
# (as text: PostgreSQL's driver would hand a JSON column over parsed)
_LAST_OF: Final = (
    "SELECT version, aggregate_type, position, CAST(metadata AS TEXT) FROM events WHERE aggregate_id = ?"
    " ORDER BY version DESC LIMIT 1"
)
_BY_ID: Final = (
    "SELECT CAST(data AS TEXT), CAST(metadata AS TEXT), event_type, aggregate_id, aggregate_type, schema_version"
    " FROM events WHERE event_id = ?"
)
_NAMESPACE: Final = uuid.UUID("6f0b5f8e-6c55-4c8e-9d0a-3b1c4e2f7a91")


def rejection_id(device: str, seq: int) -> str:
    """The event id of the rejection of a device's event ``seq`` (one per event, ever)."""
    return str(uuid.uuid5(_NAMESPACE, f"{device}\x00{seq}"))


def exchange(store: Any, push: Push, *, may_push: Callable[[str], bool] | None = None) -> Reply:
    """Settle ``push`` on the hub ``store`` (an ``EventStore``) and answer it (see ``Hub.exchange``)."""
    if store._device is not None:
        raise SyncError(
            f"{store._backend.where!r} is a device, not a hub: it would hold the pushed events as its own pending "
            "ones; sync through the hub it syncs with"
        )
    hub: Hub = store._hub
    return hub.exchange(push, may_push=may_push)


class Hub:
    """One store's side of its devices' syncs (see the module's docstring)."""

    def __init__(
        self, tx: Transactions, appender: Appender, types: StoredTypes, eraser: Eraser, file_version: int
    ) -> None:
        self._tx = tx
        self._appender = appender
        self._types = types
        self._eraser = eraser
        self._file_version = file_version

    def exchange(self, push: Push, *, may_push: Callable[[str], bool] | None = None) -> Reply:
        """Settle ``push`` and answer it.

        ``may_push(aggregate_type)``: whether this device may write that aggregate type (an
        authenticated device's rights; None: any).

        Raises:
            SyncError: the push does not fit (nothing was written): not allowed, a gap or an
                altered event in the device's sequence, or a device whose log diverged.
        """
        if not isinstance(push.device, str) or not push.device or len(push.device) > 200:
            raise SyncError(f"a device id is a non-empty str of at most 200 characters, got {push.device!r:.80}")
        if may_push is not None:
            refused = sorted({p.aggregate_type for p in push.pending if not may_push(p.aggregate_type)})
            if refused:
                raise SyncError(f"device {push.device!r} may not write {', '.join(refused)}; nothing was written")
        placed = rejected = 0
        erased = False
        tx = self._tx
        with tx.lock:
            if not push.pending or push.pending[-1].seq <= _cursor(tx.open(), push.device, missing=True)[0]:
                # nothing new to settle (a device that only pulls, or a push sent again): no write
                with tx.reading(), tx.translate(f"cannot sync device {push.device!r}"):
                    conn = tx.open()
                    self._check_prefix(push, int(conn.execute(conn.sql.HEAD_POSITION).get))
                    seq, origin = _cursor(conn, push.device, missing=True)
                    _fresh(conn, push, seq, origin)
                    return self._reply(push, seq, 0, 0)
            with tx.write(), tx.translate(f"cannot sync device {push.device!r}"):
                conn = tx.conn
                hold_the_log(conn)  # before it reads the head, as an append does
                conn.execute(CREATE_ORIGINS)
                head = int(conn.execute(conn.sql.HEAD_POSITION).get)
                self._check_prefix(push, head)
                seq, origin = _cursor(conn, push.device)
                fresh = _fresh(conn, push, seq, origin)
                if fresh:
                    conn.executemany(conn.sql.COPY_EVENT_TYPE, push.types)
                    placing = _Placing(conn, push.device, fresh)
                    for _, batch in itertools.groupby(fresh, key=lambda p: p.batch):
                        events = list(batch)
                        never = placing.refusal(events)
                        conflict = never or placing.conflict(events[0])
                        if never or (conflict and not events[0].accept):
                            for p in events:
                                placing.reject(p, conflict)
                            rejected += len(events)
                        else:
                            for p in events:
                                placing.place(p)
                            placed += len(events)
                    rows = placing.insert()
                    if rejected:
                        self._types.note(conn, [placing.last_rejection])  # type: ignore[list-item]
                    conn.execute(conn.sql.NOTE_EVENT_TYPES, (head,))
                    conn.execute(_ADVANCE, (push.device, fresh[-1].seq, fresh[-1].origin.hex()))
                    erased = self._eraser.received(rows, push.keys)
                    seq = fresh[-1].seq
                reply = self._reply(push, seq, placed, rejected)
            if erased:
                tx.backend.purge(snapshots=True)
        return reply

    def _check_prefix(self, push: Push, head: int) -> None:
        where = self._tx.backend.where
        if push.after > head:
            raise SyncError(
                f"device {push.device!r} holds {push.after - head} events {where!r} does not: "
                "it synced with another hub"
            )
        conn = self._tx.conn
        if push.after and bytes(conn.execute(conn.sql.HASH_AT, (push.after,)).get) != push.after_hash:
            raise SyncError(
                f"device {push.device!r}'s log differs from {where!r}'s at or before position {push.after}: "
                "it diverged (it synced with another hub, or its file was replaced)"
            )

    def _reply(self, push: Push, seq: int, placed: int, rejected: int) -> Reply:
        conn = self._tx.conn
        rows: list[Any] = conn.execute(conn.sql.RAW_EVENTS, (push.after, max(1, min(push.limit, 100_000)))).fetchall()
        if rows and not isinstance(rows[0][9], bytes):  # (PostgreSQL's driver: a memoryview)
            rows = [(*row[:9], bytes(row[9]), row[10]) for row in rows]
        needed = {key_id for row in rows for key_id in _personal.key_ids(row[6])}
        keys = [tuple(row) for row in conn.execute(conn.sql.KEY_ROWS).fetchall() if row[0] in needed] if needed else []
        named = {row[4] for row in rows}
        types = [
            tuple(r) for r in conn.execute(conn.sql.EVENT_TYPE_ROWS[self._file_version]).fetchall() if r[0] in named
        ]
        head, head_hash = conn.execute(conn.sql.HEAD).fetchone() or (0, b"")
        return Reply(push.device, push.after, rows, keys, types, seq, int(head), bytes(head_hash), placed, rejected)


def cursors(conn: Any) -> list[tuple[str, int, str]]:
    """Every device's cursor (none if this store was never a hub)."""
    if not has_table(conn, "minies_origins"):
        return []
    return [tuple(row) for row in conn.execute("SELECT device, seq, origin FROM minies_origins").fetchall()]


def keep_cursors(conn: Any, rows: list[tuple[str, int, str]]) -> None:
    """Store ``cursors`` (a copy of a hub's log goes on serving its devices), in a write."""
    if rows:
        conn.execute(CREATE_ORIGINS)
        conn.executemany(_ADVANCE, rows)


def _cursor(conn: Any, device: str, missing: bool = False) -> tuple[int, bytes]:
    """How far the hub settled ``device``'s sequence (``missing``: the table may not exist yet)."""
    row = None if missing and not has_table(conn, "minies_origins") else conn.execute(_CURSOR, (device,)).fetchone()
    return (0, _origins.GENESIS) if row is None else (int(row[0]), bytes.fromhex(row[1]))


def _fresh(conn: Any, push: Push, seq: int, origin: bytes) -> list[Pending]:
    """The pushed events the hub has not settled, their chain checked; the ones it settled
    must be the very ones it holds (else the push is a forgery or a replay of other events)."""
    fresh = [p for p in push.pending if p.seq > seq]
    for p in push.pending:
        if p.seq <= seq and not _settled_as_pushed(conn, push.device, p):
            raise SyncError(
                f"device {push.device!r}'s event {p.seq} differs from the one the hub settled as {p.seq}: "
                "an altered or forged bundle; nothing was written"
            )
    for p in fresh:
        if p.seq != seq + 1:
            raise SyncError(
                f"device {push.device!r}'s events are out of sequence: {p.seq} after {seq} (dropped or reordered); "
                "nothing was written"
            )
        expected = _origins.digest(origin, push.device, p.seq, *p.written())
        if expected != p.origin:
            raise SyncError(
                f"device {push.device!r}'s event {p.seq} is not the one it wrote (its origin hash differs): "
                "an altered bundle; nothing was written"
            )
        if p.batch > p.seq:
            raise SyncError(f"device {push.device!r}'s event {p.seq} claims a batch it is not part of")
        seq, origin = p.seq, p.origin
    return fresh


def _settled_as_pushed(conn: Any, device: str, p: Pending) -> bool:
    """Is ``p`` (an event of the device the hub settled already) the very event it settled?"""
    row = conn.execute(_BY_ID, (p.event_id,)).fetchone()
    if row is not None and row[2] != EventRejected.event_type:
        found = _origins.unstamped(row[1])
        if found is None:
            return False
        meta, o = found
        written: tuple[Any, ...] = (p.event_id, row[3], row[4], row[2], row[5], row[0], meta, o.at, o.expected, o.base)
        held: tuple[Any, ...] = (o.device, o.seq, *written, o.hash)
    else:
        row = conn.execute(_BY_ID, (rejection_id(device, p.seq),)).fetchone()
        if row is None or row[2] != EventRejected.event_type:
            return False
        r = msgspec.json.decode(row[0], type=EventRejected)
        written = (r.event_id, r.aggregate_id, r.aggregate_type, r.rejected_type, r.rejected_schema, r.data)
        held = (r.device, r.seq, *written, r.metadata, r.created_at, r.expected, r.base, r.origin)
    pushed = (device, p.seq, *p.written(), p.origin.hex())
    return held == pushed


def _recorded(conn: Any, ids: list[str]) -> set[str]:
    """Which of ``ids`` the log holds already."""
    found: set[str] = set()
    for k in range(0, len(ids), 500):
        chunk = ids[k : k + 500]
        query = f"SELECT CAST(event_id AS TEXT) FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})"
        found.update(str(row[0]) for row in conn.execute(query, chunk).fetchall())
    return found


class _Placing:
    """One push's events placed after the hub's head: checked and chained in memory, against
    the streams as the log and the events placed before them hold them, then inserted at once."""

    def __init__(self, conn: Any, device: str, fresh: list[Pending]) -> None:
        self._conn = conn
        self._device = device
        self._recorded = _recorded(conn, [p.event_id for p in fresh])
        head = conn.execute(conn.sql.HEAD).fetchone()
        self._position, self._previous = (int(head[0]), bytes(head[1])) if head else (0, _origins.GENESIS)
        self._streams: dict[str, list[Any]] = {}  # id -> [version, type, last position, last event's device]
        self._ids: set[str] = set()
        self._created = _codec.now_text()
        self.rows: list[tuple[Any, ...]] = []
        self.last_rejection: EventRejected | None = None

    def _stream(self, aggregate_id: str) -> list[Any]:
        known = self._streams.get(aggregate_id)
        if known is None:
            last = self._conn.execute(_LAST_OF, (aggregate_id,)).fetchone()
            known = [0, None, 0, None]
            if last is not None:
                found = _origins.unstamped(last[3])
                known = [int(last[0]), last[1], int(last[2]), None if found is None else found[1].device]
            self._streams[aggregate_id] = known
        return known

    def refusal(self, batch: list[Pending]) -> str:
        """Why a batch can never be placed as it is (whatever the policy), or ""."""
        for p in batch:
            kind = self._stream(p.aggregate_id)[1]
            if kind is not None and kind != p.aggregate_type:
                return f"{p.aggregate_id!r} holds {kind} events on the hub, not {p.aggregate_type} ones"
            if p.event_id in self._ids or p.event_id in self._recorded:
                return f"event id {p.event_id} is recorded already, for another event"
        return ""

    def conflict(self, p: Pending) -> str:
        """Why the first event of a batch cannot be placed as written ("" if it can): the
        aggregate is not at the version the device expected, or the event there is one the
        device had not seen when it wrote (another writer's, placed after its last sync)."""
        if p.expected is None:
            return ""
        version, _, position, device = self._stream(p.aggregate_id)
        if version != p.expected:
            return f"{p.aggregate_id!r} is at version {version} on the hub; the device expected {p.expected}"
        if version == 0 or position <= p.base or device == self._device:
            return ""
        return (
            f"version {version} of {p.aggregate_id!r} on the hub (position {position}) was written by another "
            "writer after the device's last sync"
        )

    def place(self, p: Pending) -> None:
        origin = _origins.Origin(self._device, p.seq, p.origin.hex(), p.created_at, p.expected, p.base)
        meta = _origins.stamped(p.metadata, origin)
        self._add(p.aggregate_id, p.aggregate_type, p.event_type, p.schema_version, p.data, meta, p.event_id)
        self._ids.add(p.event_id)

    def reject(self, p: Pending, reason: str) -> None:
        self.last_rejection = rejection = EventRejected(
            device=self._device,
            seq=p.seq,
            reason=reason,
            event_id=p.event_id,
            aggregate_id=p.aggregate_id,
            aggregate_type=p.aggregate_type,
            rejected_type=p.event_type,
            rejected_schema=p.schema_version,
            data=p.data,
            metadata=p.metadata,
            created_at=p.created_at,
            expected=p.expected,
            base=p.base,
            origin=p.origin.hex(),
        )
        data = _codec.encode_event(rejection)
        self._add(REJECTIONS, REJECTIONS, EventRejected.event_type, 1, data, "{}", rejection_id(self._device, p.seq))

    def _add(
        self, aggregate_id: str, kind: str, event_type: str, schema: int, data: str, meta: str, event_id: str
    ) -> None:
        stream = self._stream(aggregate_id)
        self._position += 1
        version = stream[0] + 1
        self._streams[aggregate_id] = [version, kind, self._position, self._device]
        row = (
            self._position,
            event_id,
            aggregate_id,
            kind,
            event_type,
            version,
            data,
            meta,
            self._created,
            b"",
            schema,
        )
        self._previous = _audit.chain_row(self._previous, row)
        self.rows.append((*row[:9], self._previous, schema))

    def insert(self) -> list[tuple[Any, ...]]:
        """Insert every row (no acknowledgement without them: they are counted)."""
        if self.rows:
            conn = self._conn
            conn.executemany(conn.sql.INSERT_EVENT, self.rows)
            stored = conn.execute(conn.sql.STORED_AFTER, (self.rows[0][0] - 1,)).get
            if stored != len(self.rows):
                raise StorageError(swallowed(stored, len(self.rows)))
        return self.rows


__all__: Sequence[str] = ("exchange", "rejection_id")
