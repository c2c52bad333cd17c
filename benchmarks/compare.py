"""minies vs raw apsw + msgspec vs the `eventsourcing` library, measured in ONE run.

    python benchmarks/compare.py            # prints a Markdown table (events/s and ratios)

Every system writes a fresh file in the same temporary directory. The append workloads run
at synchronous=FULL for all three (the `eventsourcing` library's default; minies'
durability="full"); replay and scan fill their files with minies at durability="normal" (the
timed part only reads). Raw apsw uses the same time-ordered ids as minies (and, in a second
column, random uuid4 ids). Each figure is the best of ROUNDS runs, and every run checks its
own result (counts, final balance).
"""

from __future__ import annotations

import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Final

import apsw
import workloads as w
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

import minies

ROUNDS: Final = 5


def measure(runs: tuple[Callable[[str], float], ...]) -> list[float]:
    """Events per second for each system: the best of ROUNDS runs, each on a fresh file.

    The systems take turns within every round, so a slow patch of a noisy machine hits
    all of them alike.
    """
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(ROUNDS):
        for i, run in enumerate(runs):
            with tempfile.TemporaryDirectory() as tmp:
                rates[i].append(run(os.path.join(tmp, "bench.db")))
    return [max(r) for r in rates]


def timed(events: int, body: Callable[[], object]) -> float:
    started = time.perf_counter()
    body()
    return events / (time.perf_counter() - started)


# Every runner checks its own result, so a regression that does less work cannot look like a
# speed-up. Expected results:
BALANCE: Final = sum(i % 100 for i in range(w.REPLAY_EVENTS - 1))


def check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


# ---------------------------------------------------------------------------- minies
def minies_single(path: str) -> float:
    with minies.EventStore(path) as store:  # durability="full"
        store.append("acc", [w.Opened(owner="ann")], aggregate_type="Account")

        def body() -> None:
            for v in range(1, w.SINGLE_COMMANDS + 1):
                store.append("acc", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)

        rate = timed(w.SINGLE_COMMANDS, body)
        check("minies single", store.version("acc"), w.SINGLE_COMMANDS + 1)
        return rate


def minies_batch(path: str) -> float:
    with minies.EventStore(path) as store:  # durability="full"
        batches = [w.deposits(w.BATCH_SIZE) for _ in range(w.BATCH_TOTAL // w.BATCH_SIZE)]

        def body() -> None:
            for i, batch in enumerate(batches):
                store.append(f"acc-{i}", batch, aggregate_type="Account", expected_version=0)

        rate = timed(w.BATCH_TOTAL, body)
        check("minies batch", store.head()[0], w.BATCH_TOTAL)
        return rate


def minies_replay(path: str) -> float:
    with minies.EventStore(path, durability="normal") as store:
        store.append("acc", [w.Opened(owner="ann"), *w.deposits(w.REPLAY_EVENTS - 1)], aggregate_type="Account")
        store.load(w.Account, "acc")  # warm the page cache, as the others get
        rate = timed(w.REPLAY_EVENTS, lambda: store.load(w.Account, "acc"))
        check("minies replay", store.load(w.Account, "acc").balance, BALANCE)
        return rate


def minies_scan(path: str) -> float:
    with minies.EventStore(path, durability="normal") as store:
        for i in range(w.SCAN_EVENTS // w.BATCH_SIZE):
            store.append(f"acc-{i}", w.deposits(w.BATCH_SIZE), aggregate_type="Account")
        check("minies scan", sum(1 for _ in store.read_all()), w.SCAN_EVENTS)
        return timed(w.SCAN_EVENTS, lambda: sum(1 for _ in store.read_all()))


# ---------------------------------------------------------------------------- raw apsw + msgspec
def raw_single(path: str, ids: str) -> float:
    conn = w.raw_connect(path)
    w.raw_append(conn, "acc", [w.Opened(owner="ann")], 1, ids)
    events = [w.Deposited(amount=v) for v in range(1, w.SINGLE_COMMANDS + 1)]

    def body() -> None:
        for v, deposited in enumerate(events, 2):
            w.raw_append(conn, "acc", [deposited], v, ids)

    rate = timed(w.SINGLE_COMMANDS, body)
    check("raw single", w.raw_count(conn), w.SINGLE_COMMANDS + 1)
    conn.close()
    return rate


def raw_batch(path: str, ids: str) -> float:
    conn = w.raw_connect(path)
    batches = [w.deposits(w.BATCH_SIZE) for _ in range(w.BATCH_TOTAL // w.BATCH_SIZE)]

    def body() -> None:
        for i, batch in enumerate(batches):
            w.raw_append(conn, f"acc-{i}", batch, 1, ids)

    rate = timed(w.BATCH_TOTAL, body)
    check("raw batch", w.raw_count(conn), w.BATCH_TOTAL)
    conn.close()
    return rate


def raw_replay(path: str, ids: str) -> float:
    conn = w.raw_connect(path)
    w.raw_append(conn, "acc", [w.Opened(owner="ann"), *w.deposits(w.REPLAY_EVENTS - 1)], 1, ids)
    w.raw_replay(conn, "acc")
    rate = timed(w.REPLAY_EVENTS, lambda: w.raw_replay(conn, "acc"))
    check("raw replay", w.raw_replay(conn, "acc").balance, BALANCE)
    conn.close()
    return rate


def raw_scan(path: str, ids: str) -> float:
    conn = w.raw_connect(path)
    for i in range(w.SCAN_EVENTS // w.BATCH_SIZE):
        w.raw_append(conn, f"acc-{i}", w.deposits(w.BATCH_SIZE), 1, ids)
    check("raw scan", w.raw_scan(conn), w.SCAN_EVENTS)
    rate = timed(w.SCAN_EVENTS, lambda: w.raw_scan(conn))
    conn.close()
    return rate


# ---------------------------------------------------------------------------- eventsourcing
def es_app(path: str) -> Application:
    return Application(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path})


class ESAccount(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


def es_count(app: Application) -> int:
    return app.recorder.max_notification_id() or 0  # type: ignore[attr-defined]


def es_single(app: Application) -> float:
    account = ESAccount("ann")
    app.save(account)

    def body() -> None:
        for v in range(w.SINGLE_COMMANDS):
            account.deposit(v)
            app.save(account)

    rate = timed(w.SINGLE_COMMANDS, body)
    check("eventsourcing single", es_count(app), w.SINGLE_COMMANDS + 1)
    app.close()
    return rate


def es_batch(app: Application) -> float:
    accounts = []
    for _ in range(w.BATCH_TOTAL // w.BATCH_SIZE):
        account = ESAccount("ann")
        for v in range(w.BATCH_SIZE - 1):
            account.deposit(v)
        accounts.append(account)

    def body() -> None:
        for account in accounts:
            app.save(account)

    rate = timed(w.BATCH_TOTAL, body)
    check("eventsourcing batch", es_count(app), w.BATCH_TOTAL)
    app.close()
    return rate


def es_replay(app: Application) -> float:
    account = ESAccount("ann")
    for v in range(w.REPLAY_EVENTS - 1):
        account.deposit(v % 100)
    app.save(account)
    app.repository.get(account.id)
    rate = timed(w.REPLAY_EVENTS, lambda: app.repository.get(account.id))
    check("eventsourcing replay", app.repository.get(account.id).balance, BALANCE)
    app.close()
    return rate


def es_scan(app: Application) -> float:
    for _ in range(w.SCAN_EVENTS // w.BATCH_SIZE):
        account = ESAccount("ann")
        for v in range(w.BATCH_SIZE - 1):
            account.deposit(v)
        app.save(account)

    def body() -> int:
        recorder, mapper = app.recorder, app.mapper
        start, n = 1, 0
        while True:
            page = recorder.select_notifications(start=start, limit=1000)
            for notification in page:
                mapper.to_domain_event(notification)
            n += len(page)
            if len(page) < 1000:
                return n
            start = page[-1].id + 1

    check("eventsourcing scan", body(), w.SCAN_EVENTS)
    rate = timed(w.SCAN_EVENTS, body)
    app.close()
    return rate


def on_file(run: Callable[[Application], float]) -> Callable[[str], float]:
    return lambda path: run(es_app(path))


def raw7(run: Callable[[str, str], float]) -> Callable[[str], float]:
    return lambda path: run(path, "uuid7")


def raw4(run: Callable[[str, str], float]) -> Callable[[str], float]:
    return lambda path: run(path, "uuid4")


WORKLOADS: Final = [
    ("single-event commands", minies_single, raw_single, on_file(es_single)),
    (f"batch append ({w.BATCH_SIZE:,}/call, {w.BATCH_TOTAL:,} events)", minies_batch, raw_batch, on_file(es_batch)),
    (f"replay one {w.REPLAY_EVENTS:,}-event aggregate", minies_replay, raw_replay, on_file(es_replay)),
    (f"scan {w.SCAN_EVENTS:,} events in global order", minies_scan, raw_scan, on_file(es_scan)),
]


def main() -> None:
    from importlib.metadata import version

    only = sys.argv[1:]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    print(
        f"python {platform.python_version()}, SQLite {apsw.sqlite_lib_version()}, apsw {apsw.apsw_version()},"
        f" minies {minies.__version__}, eventsourcing {version('eventsourcing')}"
    )
    print()
    print(
        f"eventsourcing runs on the stdlib sqlite3 module (SQLite {sqlite3.sqlite_version}); minies and raw on apsw's"
    )
    print()
    x = "\N{MULTIPLICATION SIGN}"
    print(
        "| workload | minies ev/s | raw (UUIDv7) ev/s | raw (uuid4) ev/s | eventsourcing ev/s"
        " | minies / raw | minies / raw uuid4 | minies / eventsourcing |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, mine, raw, es in WORKLOADS:
        if only and not any(o in name for o in only):
            continue
        m, r, r4, e = measure((mine, raw7(raw), raw4(raw), es))
        print(
            f"| {name} | {m:,.0f} | {r:,.0f} | {r4:,.0f} | {e:,.0f} | {m / r:.2f}{x} | {m / r4:.2f}{x} | {m / e:.1f}{x} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
