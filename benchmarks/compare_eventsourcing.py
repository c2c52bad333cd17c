"""An `eventsourcing` application on minies vs on the library's own SQLite and POPO modules.

    python benchmarks/compare_eventsourcing.py      # prints a Markdown table, ONE run

The same application code (compare.py's ESAccount: open an account, deposit) runs three
times, changing only ``PERSISTENCE_MODULE``: ``minies.eventsourcing`` (a minies file,
durability "full"), ``eventsourcing.sqlite`` (the library's module on the stdlib's sqlite3,
WAL, its default synchronous=FULL) and ``eventsourcing.popo`` (plain Python objects in
memory: the ceiling, with no durability at all). Each figure is the best of
compare.ROUNDS runs, each on a fresh file; every run checks its own result.
"""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import Callable
from typing import Any, Final

import compare
import workloads as w
from compare import es_batch, es_replay, es_scan, es_single
from eventsourcing.application import Application
from eventsourcing.persistence import InfrastructureFactory, StoredEvent
from eventsourcing.utils import Environment

import minies

MODULES: Final = {
    "minies": lambda path: {"PERSISTENCE_MODULE": "minies.eventsourcing", "MINIES_PATH": path},
    "sqlite": lambda path: {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path},
    "popo": lambda path: {"PERSISTENCE_MODULE": "eventsourcing.popo"},
}


def on(module: str, run: Callable[[Application], float]) -> Callable[[str], float]:
    return lambda path: run(Application(env=MODULES[module](path)))


WORKLOADS: Final = [
    ("write: single-event commands", es_single),
    (f"write: {w.BATCH_SIZE:,} events per save, {w.BATCH_TOTAL:,} events", es_batch),
    (f"read: get one {w.REPLAY_EVENTS:,}-event aggregate", es_replay),
    (f"read: {w.SCAN_EVENTS:,} notifications in order", es_scan),
]


# ---------------------------------------------------------------------------- the recorder alone
# What minies replaces is the recorder; the library's mapping (domain event <-> stored event)
# runs above it, the same for every module. These workloads call the recorder directly.
STATE: Final = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-28T06:50:09.970705+00:00"},"amount":%d}'


def stored_batches() -> list[list[StoredEvent]]:
    batches = []
    for _ in range(w.BATCH_TOTAL // w.BATCH_SIZE):
        originator = uuid.uuid4()
        batches.append(
            [StoredEvent(originator, v, "compare:ESAccount.Deposited", STATE % v) for v in range(1, w.BATCH_SIZE + 1)]
        )
    return batches


def recorder(module: str, path: str) -> tuple[Any, Any]:
    factory = InfrastructureFactory.construct(Environment(env=MODULES[module](path)))
    return factory, factory.application_recorder()


def insert(module: str) -> Callable[[str], float]:
    def run(path: str) -> float:
        factory, rec = recorder(module, path)
        batches = stored_batches()
        rate = compare.timed(w.BATCH_TOTAL, lambda: [rec.insert_events(b) for b in batches])
        compare.check(f"{module} insert", rec.max_notification_id(), w.BATCH_TOTAL)
        factory.close()
        return rate

    return run


def notifications(module: str) -> Callable[[str], float]:
    def run(path: str) -> float:
        factory, rec = recorder(module, path)
        for batch in stored_batches():
            rec.insert_events(batch)

        def body() -> int:
            start, n = 1, 0
            while True:
                page = rec.select_notifications(start=start, limit=1000)
                n += len(page)
                if len(page) < 1000:
                    return n
                start = page[-1].id + 1

        rate = compare.timed(w.BATCH_TOTAL, body)
        compare.check(f"{module} notifications", body(), w.BATCH_TOTAL)
        factory.close()
        return rate

    return run


def streams(module: str) -> Callable[[str], float]:
    def run(path: str) -> float:
        factory, rec = recorder(module, path)
        batches = stored_batches()
        for batch in batches:
            rec.insert_events(batch)
        ids = [b[0].originator_id for b in batches]
        rate = compare.timed(w.BATCH_TOTAL, lambda: [rec.select_events(i) for i in ids])
        compare.check(f"{module} streams", sum(len(rec.select_events(i)) for i in ids), w.BATCH_TOTAL)
        factory.close()
        return rate

    return run


RECORDER_WORKLOADS: Final = [
    (f"insert_events, {w.BATCH_SIZE:,} per call", insert),
    ("select_notifications, 1,000 per page", notifications),
    (f"select_events, {w.BATCH_SIZE:,}-event streams", streams),
]


def main() -> None:
    from importlib.metadata import version

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; minies {minies.__version__}, "
        f"eventsourcing {version('eventsourcing')}"
    )
    print()
    x = "\N{MULTIPLICATION SIGN}"
    print("| workload | on minies ev/s | on its SQLite ev/s | on POPO ev/s | minies / its SQLite | minies / POPO |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in WORKLOADS:
        m, s, p = compare.measure((on("minies", run), on("sqlite", run), on("popo", run)))
        print(f"| {name} | {m:,.0f} | {s:,.0f} | {p:,.0f} | {m / s:.2f}{x} | {m / p:.2f}{x} |", flush=True)
    print()
    print("The recorder alone (no domain events, no mapping):")
    print()
    print("| workload | minies ev/s | its SQLite ev/s | minies / its SQLite |")
    print("|---|---:|---:|---:|")
    for name, make in RECORDER_WORKLOADS:
        m, s = compare.measure((make("minies"), make("sqlite")))
        print(f"| {name} | {m:,.0f} | {s:,.0f} | {m / s:.2f}{x} |", flush=True)


if __name__ == "__main__":
    main()
