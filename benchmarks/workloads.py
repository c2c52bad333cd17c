"""The domain and the no-engine baseline shared by the benchmarks.

The baseline is what a careful developer would write with raw apsw + msgspec and no engine:
the seed's events table (same columns and UNIQUE constraints as minies, no hash chain, no
triggers), the same pragmas, time-ordered (UUIDv7) ids like minies' own, msgspec-encoded
payloads, ``executemany`` for batches. ``RAW_IDS["uuid4"]`` is the careless variant: random
ids scatter the inserts over the ``event_id`` index.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import apsw
import msgspec

import minies
from minies._codec import new_event_ids

SINGLE_COMMANDS: Final = 2_000
BATCH_TOTAL: Final = 100_000
BATCH_SIZE: Final = 1_000
REPLAY_EVENTS: Final = 10_000
SCAN_EVENTS: Final = 100_000


class Opened(minies.Event):
    owner: str


class Deposited(minies.Event):
    amount: int


class Totals(minies.Projection):
    """An inline read model: a running total per account (one UPSERT per deposit)."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE totals (account_id TEXT PRIMARY KEY, total INTEGER NOT NULL)")

    def on_Deposited(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO totals VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET total = total + excluded.total",
            (event.aggregate_id, event.data.amount),
        )


class Account(minies.Aggregate):
    owner: str = ""
    balance: int = 0

    def apply(self, event: minies.Event) -> None:
        if type(event) is Deposited:
            self.balance += event.amount
        elif type(event) is Opened:
            self.owner = event.owner


def deposits(n: int) -> list[minies.Event]:
    return [Deposited(amount=i % 100) for i in range(n)]


RAW_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, aggregate_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL, event_type TEXT NOT NULL, version INTEGER NOT NULL,
    data TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL,
    UNIQUE (aggregate_id, version))
"""
RAW_INSERT: Final = (
    "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_encode = msgspec.json.Encoder().encode


def raw_connect(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "FULL")
    conn.set_busy_timeout(30_000)
    conn.execute(RAW_SCHEMA)
    return conn


RAW_IDS: Final[dict[str, Callable[[int], list[str]]]] = {
    "uuid7": new_event_ids,  # what a careful hand-written store uses (minies' own generator)
    "uuid4": lambda n: [str(uuid.uuid4()) for _ in range(n)],
}


def raw_rows(
    aggregate_id: str, events: list[minies.Event], first_version: int, ids: str = "uuid7"
) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        (event_id, aggregate_id, "Account", e.event_type, first_version + i, _encode(e).decode(), "{}", now)
        for i, (event_id, e) in enumerate(zip(RAW_IDS[ids](len(events)), events, strict=True))
    ]


def raw_count(conn: apsw.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").get)


def raw_append(
    conn: apsw.Connection, aggregate_id: str, events: list[minies.Event], first_version: int, ids: str = "uuid7"
) -> None:
    rows = raw_rows(aggregate_id, events, first_version, ids)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(RAW_INSERT, rows)
    conn.execute("COMMIT")


_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    "Opened": msgspec.json.Decoder(Opened).decode,
    "Deposited": msgspec.json.Decoder(Deposited).decode,
}


def raw_replay(conn: apsw.Connection, aggregate_id: str) -> Account:
    account = Account(id=aggregate_id)
    decoders = _DECODERS
    for event_type, data in conn.execute(
        "SELECT event_type, data FROM events WHERE aggregate_id = ? ORDER BY version", (aggregate_id,)
    ):
        account.apply(decoders[event_type](data))
    return account


def raw_scan(conn: apsw.Connection) -> int:
    decoders = _DECODERS
    n = 0
    for row in conn.execute(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, created_at, data, metadata"
        " FROM events ORDER BY position"
    ):
        decoders[row[4]](row[7])
        n += 1
    return n
