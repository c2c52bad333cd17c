"""A device's SQL: the dialect of a minies file that syncs through a hub.

A device's log has two parts. Its confirmed events, in ``events``, are a prefix of its hub's
log, byte for byte. After them comes its pending tail, in ``minies_pending``: the events it
wrote since the hub last placed its work, with the same columns (their positions, versions
and hashes provisional, chained on the confirmed head) plus each one's origin (the device's
own sequence number and origin hash) and the change it made to the read models.

The reads of one aggregate and the append path see both parts, through the view
``minies_local``: a device loads and saves offline as any store does. Everything that reads
the log as history (``read_all``, subscriptions, processors, ``verify``, ``copy``) sees the
confirmed events only, so a position a reader has seen is never taken back.
"""

from __future__ import annotations

import types
from typing import Any, Final

from minies._backends import sqlite_sql
from minies._errors import SyncError

_EVENT_COLUMNS: Final = (
    "position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at,"
    " hash, schema_version"
)
CREATE: Final = (
    # The device's id, and its sequence as far as the hub settled it (placed or rejected): the
    # next pending event chains on the last pending one, or on this.
    """
    CREATE TABLE minies_device (
        device       TEXT    NOT NULL,
        seq          INTEGER NOT NULL,
        origin       BLOB    NOT NULL,
        confirmed_seq INTEGER NOT NULL,
        created_at   TEXT    NOT NULL,
        handled      INTEGER NOT NULL DEFAULT 0
    )""",
    # Each pending event: the event's own columns, as an append wrote them, then its origin.
    # The device may rewrite this table (a sync takes out what the hub placed); the hub's
    # origin check proves nothing in it was lost, reordered or altered on the way.
    """
    CREATE TABLE minies_pending (
        position       INTEGER PRIMARY KEY,
        event_id       TEXT    NOT NULL UNIQUE,
        aggregate_id   TEXT    NOT NULL,
        aggregate_type TEXT    NOT NULL,
        event_type     TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        data           TEXT    NOT NULL,
        metadata       TEXT    NOT NULL,
        created_at     TEXT    NOT NULL,
        hash           BLOB    NOT NULL,
        schema_version INTEGER NOT NULL,
        seq            INTEGER,
        origin         BLOB,
        expected       INTEGER,
        base           INTEGER,
        batch          INTEGER,
        changes        BLOB,
        UNIQUE (aggregate_id, version)
    )""",
    f"""
    CREATE VIEW minies_local AS
        SELECT {_EVENT_COLUMNS} FROM events UNION ALL SELECT {_EVENT_COLUMNS} FROM minies_pending""",
)
IS_DEVICE: Final = "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'minies_device')"
DEVICE: Final = "SELECT device, seq, origin, confirmed_seq FROM minies_device"
# What an append needs to stamp its events: the sequence's head (the last pending event's, or
# the last the hub settled), and the confirmed log's.
STAMPING: Final = (
    "SELECT coalesce(p.seq, d.seq), coalesce(p.origin, d.origin), (SELECT coalesce(max(position), 0) FROM events)"
    " FROM minies_device d LEFT JOIN (SELECT seq, origin FROM minies_pending ORDER BY position DESC LIMIT 1) p"
)
# How far (a version of the stream of rejections) this device's rejections were handed to its
# sync's policies: a retry's saves commit with its advance, so each is redone exactly once.
HANDLED: Final = "SELECT handled FROM minies_device"
HANDLE: Final = "UPDATE minies_device SET handled = ?1 WHERE handled < ?1"
SETTLE: Final = "UPDATE minies_device SET seq = ?1, origin = ?2, confirmed_seq = ?1"
ENROL: Final = (
    "INSERT INTO minies_device (device, seq, origin, confirmed_seq, created_at)"
    " VALUES (?, 0, zeroblob(32), 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
)
CHECKPOINTS_BACK: Final = (
    "UPDATE minies_projections SET position = (SELECT coalesce(max(position), 0) FROM events)"
    " WHERE position > (SELECT coalesce(max(position), 0) FROM events)"
)
CHANGES: Final = "UPDATE minies_pending SET changes = ? WHERE position = ?"
PENDING_ROWS: Final = (
    f"SELECT {_EVENT_COLUMNS}, seq, origin, expected, base, batch FROM minies_pending WHERE seq > ? ORDER BY seq"
)
PENDING_AFTER: Final = PENDING_ROWS
CONFIRMED_HEAD: Final = sqlite_sql.HEAD_POSITION
CONFIRMED_HEAD_ROW: Final = sqlite_sql.HEAD
HASHES_BETWEEN: Final = "SELECT position, hash FROM events WHERE position >= ? AND position <= ?"
STORED_CONFIRMED_AFTER: Final = sqlite_sql.STORED_AFTER
PENDING_CHANGES: Final = "SELECT changes FROM minies_pending WHERE changes IS NOT NULL ORDER BY position DESC"
PENDING_COUNT: Final = "SELECT count(*) FROM minies_pending"
DROP_PENDING: Final = "DELETE FROM minies_pending"
INSERT_CONFIRMED: Final = sqlite_sql.INSERT_EVENT  # a row the hub placed: into the log itself


DEVICE_STATE: Final = "SELECT device, (SELECT count(*) FROM minies_pending) FROM minies_device"  # (info)


def enrol(conn: Any, device: object) -> None:
    """Make the file behind ``conn`` (inside a write) the device ``device``; a file that is a
    device already must be that one."""
    if not isinstance(device, str) or not device or len(device) > 200 or not device.isprintable():
        raise ValueError(f"a device id is a printable str of 1 to 200 characters, got {device!r:.80}")
    if not conn.execute(IS_DEVICE).get:
        for statement in CREATE:
            conn.execute(statement)
        conn.execute(ENROL, (device,))
        return
    known = conn.execute(DEVICE).fetchone()[0]
    if known != device:
        raise SyncError(f"this file is device {known!r}, not {device!r}; a device keeps its id")


def _local(statement: str) -> str:
    return statement.replace("FROM events", "FROM minies_local")


def dialect() -> Any:
    """``sqlite_sql`` with the statements that read one aggregate, or append, seeing the
    pending tail too (a connection's ``sql`` on a device)."""
    sql = types.SimpleNamespace(**{k: v for k, v in vars(sqlite_sql).items() if k.isupper()})
    for name in ("EVENT_BY_ID", "SAME_APPEND_AROUND", "READ_AGGREGATE"):
        setattr(sql, name, _local(getattr(sqlite_sql, name)))
    sql.VERSIONED = {**sqlite_sql.VERSIONED, "READ_AGGREGATE": _local(sqlite_sql.VERSIONED["READ_AGGREGATE"])}
    # The payloads of a run in version order: the confirmed part by its index, then the tail.
    sql.READ_AGGREGATE_PAYLOADS = (
        "SELECT '[' || group_concat(data, ',') || ']', group_concat(event_type, ','),"
        " max(version), count(*), min(aggregate_type), max(aggregate_type) FROM ("
        f" SELECT data, event_type, version, aggregate_type FROM events INDEXED BY {sqlite_sql.AGGREGATE_INDEX}"
        " WHERE aggregate_id = ?1 AND version > ?2 AND version <= ?3"
        " UNION ALL SELECT data, event_type, version, aggregate_type FROM minies_pending"
        " WHERE aggregate_id = ?1 AND version > ?2 AND version <= ?3 ORDER BY version)"
    )
    sql.INSERT_EVENT = (  # an event and its origin (see ``_device.Device.stamp``)
        f"INSERT INTO minies_pending ({_EVENT_COLUMNS}, seq, origin, expected, base, batch, changes)"
        f" VALUES ({', '.join('?' * 17)})"
    )
    sql.STORED_AFTER = "SELECT count(*) FROM minies_pending WHERE position > ?"
    # The tail's last, else the log's: each arm by its own index, never a scan of the union.
    last = "SELECT {0} FROM minies_pending {1} UNION ALL SELECT {0} FROM events {1}"
    sql.AGGREGATE_VERSION = (
        "SELECT version FROM ("
        + last.format("version", "WHERE aggregate_id = ?1 ORDER BY version DESC LIMIT 1").replace(
            " UNION ALL ", ") UNION ALL SELECT version FROM ("
        )
        + ") LIMIT 1"
    )
    sql.APPEND_STATE = (
        f"SELECT ({sql.AGGREGATE_VERSION}),"
        " (SELECT aggregate_type FROM minies_local WHERE aggregate_id = ?1 AND version = 1), position, hash"
        " FROM (SELECT position, hash FROM (SELECT position, hash FROM minies_pending ORDER BY position DESC LIMIT 1)"
        " UNION ALL SELECT position, hash FROM (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1))"
        " ORDER BY position DESC LIMIT 1"
    )
    return sql


SQL: Final = dialect()
