"""minies on PostgreSQL vs raw psycopg vs the `eventsourcing` library on PostgreSQL, ONE run.

    python benchmarks/compare_postgres.py     # starts a private PostgreSQL 15 cluster (fsync on)
    MINIES_PG_DSN=postgresql://... python benchmarks/compare_postgres.py   # or uses yours

Every run gets a fresh schema on the same server, with synchronous_commit on for all three.
Raw psycopg is what a careful engineer would write by hand on the seed's table (BIGSERIAL
position, UUID ids, json payloads, the same UUIDv7 ids minies uses): one transaction per
command, a pipelined executemany for one command's events, COPY for batches; one row per
event for replay and scan. It checks no version and keeps no chain or gap-free order. Each
figure is the best of ROUNDS runs; every run checks its own result.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import compare
import psycopg
import workloads as w
from compare import BALANCE, ESAccount, check, es_count, timed
from eventsourcing.application import Application

import minies

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import pgserver

ROUNDS: Final = 3
WRITERS: Final = 4
DSN = ""


@contextmanager
def schema() -> Iterator[str]:
    """A fresh schema's name, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def measure(runs: tuple[Callable[[str], float], ...]) -> list[float]:
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(ROUNDS):
        for i, run in enumerate(runs):
            with schema() as name:
                rates[i].append(run(name))
    return [max(r) for r in rates]


# ---------------------------------------------------------------------------- minies
def url(name: str) -> str:
    return f"{DSN}?schema={name}"


def minies_writers(name: str) -> float:
    per_writer = w.SINGLE_COMMANDS // WRITERS
    stores = [minies.EventStore(url(name)) for _ in range(WRITERS)]  # a connection each, as processes would have

    def writer(me: int) -> None:
        for v in range(per_writer):
            stores[me].append(f"acc-{me}", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)

    rate = timed(per_writer * WRITERS, lambda: _threads(writer))
    check("minies writers", stores[0].head()[0], per_writer * WRITERS)
    for store in stores:
        store.close()
    return rate


# ---------------------------------------------------------------------------- raw psycopg
RAW_SCHEMA: Final = """
CREATE TABLE events (
    position BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL UNIQUE, aggregate_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL, event_type TEXT NOT NULL, version BIGINT NOT NULL,
    data JSON NOT NULL, metadata JSON NOT NULL DEFAULT '{}', created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (aggregate_id, version))
"""
RAW_INSERT: Final = (
    "INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
RAW_COPY: Final = (
    "COPY events (event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at) FROM STDIN"
)


def raw_connect(name: str) -> psycopg.Connection:
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute(f"SET search_path TO {name}")
    if not conn.execute("SELECT to_regclass('events')").fetchone()[0]:  # type: ignore[index]
        conn.execute(RAW_SCHEMA)
    return conn


def raw_append(conn: psycopg.Connection, aggregate_id: str, events: list[minies.Event], first: int) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(RAW_INSERT, w.raw_rows(aggregate_id, events, first))


def raw_copy(conn: psycopg.Connection, aggregate_id: str, events: list[minies.Event], first: int) -> None:
    with conn.transaction(), conn.cursor() as cursor, cursor.copy(RAW_COPY) as copy:
        for row in w.raw_rows(aggregate_id, events, first):
            copy.write_row(row)


def raw_count(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def raw_single(name: str) -> float:
    with raw_connect(name) as conn:
        raw_append(conn, "acc", [w.Opened(owner="ann")], 1)
        events = [w.Deposited(amount=v) for v in range(1, w.SINGLE_COMMANDS + 1)]

        def body() -> None:
            for v, deposited in enumerate(events, 2):
                raw_append(conn, "acc", [deposited], v)

        rate = timed(w.SINGLE_COMMANDS, body)
        check("raw single", raw_count(conn), w.SINGLE_COMMANDS + 1)
        return rate


def raw_writers(name: str) -> float:
    per_writer = w.SINGLE_COMMANDS // WRITERS
    conns = [raw_connect(name) for _ in range(WRITERS)]

    def writer(me: int) -> None:
        for v in range(per_writer):
            raw_append(conns[me], f"acc-{me}", [w.Deposited(amount=v)], v + 1)

    rate = timed(per_writer * WRITERS, lambda: _threads(writer))
    check("raw writers", raw_count(conns[0]), per_writer * WRITERS)
    for conn in conns:
        conn.close()
    return rate


def raw_batch(name: str) -> float:
    with raw_connect(name) as conn:
        batches = [w.deposits(w.BATCH_SIZE) for _ in range(w.BATCH_TOTAL // w.BATCH_SIZE)]

        def body() -> None:
            for i, batch in enumerate(batches):
                raw_copy(conn, f"acc-{i}", batch, 1)

        rate = timed(w.BATCH_TOTAL, body)
        check("raw batch", raw_count(conn), w.BATCH_TOTAL)
        return rate


def raw_replay_once(conn: psycopg.Connection) -> w.Account:
    account = w.Account(id="acc")
    decoders = w._DECODERS
    for event_type, data in conn.execute(
        "SELECT event_type, data::text FROM events WHERE aggregate_id = %s ORDER BY version", ("acc",)
    ):
        account.apply(decoders[event_type](data))
    return account


def raw_replay(name: str) -> float:
    with raw_connect(name) as conn:
        raw_copy(conn, "acc", [w.Opened(owner="ann"), *w.deposits(w.REPLAY_EVENTS - 1)], 1)
        raw_replay_once(conn)
        rate = timed(w.REPLAY_EVENTS, lambda: raw_replay_once(conn))
        check("raw replay", raw_replay_once(conn).balance, BALANCE)
        return rate


def raw_scan_once(conn: psycopg.Connection) -> int:
    decoders = w._DECODERS
    n = 0
    for row in conn.execute(
        "SELECT position, event_id::text, aggregate_id, aggregate_type, event_type, version, created_at, data::text,"
        " metadata::text FROM events ORDER BY position"
    ):
        decoders[row[4]](row[7])
        n += 1
    return n


def raw_scan(name: str) -> float:
    with raw_connect(name) as conn:
        for i in range(w.SCAN_EVENTS // w.BATCH_SIZE):
            raw_copy(conn, f"acc-{i}", w.deposits(w.BATCH_SIZE), 1)
        check("raw scan", raw_scan_once(conn), w.SCAN_EVENTS)
        return timed(w.SCAN_EVENTS, lambda: raw_scan_once(conn))


# ---------------------------------------------------------------------------- eventsourcing
def es_app(name: str) -> Application:
    info = psycopg.conninfo.conninfo_to_dict(DSN)
    return Application(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(info.get("dbname", "postgres")),
            "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
            "POSTGRES_PORT": str(info.get("port", "5432")),
            "POSTGRES_USER": str(info.get("user", "postgres")),
            "POSTGRES_PASSWORD": str(info.get("password", "")),
            "POSTGRES_SCHEMA": name,
        }
    )


def es_writers(name: str) -> float:
    per_writer = w.SINGLE_COMMANDS // WRITERS
    apps = [es_app(name) for _ in range(WRITERS)]  # one at a time: its concurrent CREATE TABLEs collide
    accounts = [ESAccount("ann") for _ in range(WRITERS)]

    def writer(me: int) -> None:
        app, account = apps[me], accounts[me]
        app.save(account)
        for v in range(per_writer - 1):
            account.deposit(v)
            app.save(account)

    rate = timed(per_writer * WRITERS, lambda: _threads(writer))
    check("eventsourcing writers", es_count(apps[0]), per_writer * WRITERS)
    for app in apps:
        app.close()
    return rate


def _threads(work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(me,)) for me in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def on_server(run: Callable[[str], float]) -> Callable[[str], float]:
    """A workload of compare.py's minies on a fresh schema's URL."""
    return lambda name: run(url(name))


def es_on_server(run: Callable[[Application], float]) -> Callable[[str], float]:
    return lambda name: run(es_app(name))


minies_single, minies_batch = on_server(compare.minies_single), on_server(compare.minies_batch)
minies_replay, minies_scan = on_server(compare.minies_replay), on_server(compare.minies_scan)
es_single, es_batch = es_on_server(compare.es_single), es_on_server(compare.es_batch)
es_replay, es_scan = es_on_server(compare.es_replay), es_on_server(compare.es_scan)

WORKLOADS: Final = [
    ("single-event commands", minies_single, raw_single, es_single),
    (f"{WRITERS} concurrent writers, single-event commands", minies_writers, raw_writers, es_writers),
    (f"batch append ({w.BATCH_SIZE:,}/call, {w.BATCH_TOTAL:,} events)", minies_batch, raw_batch, es_batch),
    (f"replay one {w.REPLAY_EVENTS:,}-event aggregate", minies_replay, raw_replay, es_replay),
    (f"scan {w.SCAN_EVENTS:,} events in global order", minies_scan, raw_scan, es_scan),
]


def main() -> None:
    global DSN
    only = sys.argv[1:]
    with pgserver.cluster(durable=True) as dsn:
        DSN = dsn
        with psycopg.connect(DSN) as conn:
            print(f"PostgreSQL {conn.info.server_version}, psycopg {psycopg.__version__}, minies {minies.__version__}")
        print()
        x = "\N{MULTIPLICATION SIGN}"
        print(
            "| workload | minies ev/s | raw psycopg ev/s | eventsourcing ev/s | minies / raw | minies / eventsourcing |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, mine, raw, es in WORKLOADS:
            if only and not any(o in name for o in only):
                continue
            m, r, e = measure((mine, raw, es))
            print(f"| {name} | {m:,.0f} | {r:,.0f} | {e:,.0f} | {m / r:.2f}{x} | {m / e:.1f}{x} |", flush=True)


if __name__ == "__main__":
    main()
