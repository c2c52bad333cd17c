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
from collections.abc import Callable
from typing import Final

import compare
import workloads as w
from compare import es_batch, es_replay, es_scan, es_single
from eventsourcing.application import Application

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


if __name__ == "__main__":
    main()
