"""Where a batch append's microseconds go, each part measured on its own (µs per event).

    python benchmarks/append_parts.py

Python parts: encoding, the type check, ids, the hash chain, for a batch of 1,000 events.
SQLite part: inserting the same rows (synchronous=FULL, 1,000 per transaction) with the
append-only trigger as minies has it, with the trigger of minies 0.1 (position only), with a
trigger that does nothing (``WHEN 0``: what merely having a row trigger costs), without any
trigger, and raw's narrower rows into raw's table (no hash, no schema version).

The last lines are ceilings: raw's whole batch append (ids, encoding, insert, commit), timed
the same way, over minies' SQLite part alone, then over that part plus the hash chain and the
type check (the promises' own Python work). Even if the rest of minies cost nothing, its batch
append could not beat those ratios to raw. Each figure is the best of several runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import apsw
import workloads as w

import minies
from minies import _audit, _codec
from minies._backends import sqlite_sql as _schema

BATCH = 1_000
BATCHES = 60
ROUNDS = 5
OLD_TRIGGER = (
    "CREATE TRIGGER events_append_only BEFORE INSERT ON events"
    " WHEN NEW.position IS NOT (SELECT coalesce(max(position), 0) + 1 FROM events)"
    " BEGIN SELECT RAISE(ABORT, 'append-only'); END"
)
IDLE_TRIGGER = "CREATE TRIGGER events_append_only BEFORE INSERT ON events WHEN 0 BEGIN SELECT 1; END"


def per_event(body: Callable[[], object], n: int = 100) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            body()
        best = min(best, (time.perf_counter() - started) / n / BATCH * 1e6)
    return best


def inserts(trigger: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "parts.db")
        if trigger.startswith("raw"):
            return raw_inserts(path, whole=trigger == "raw whole")
        minies.EventStore(path).close()
        conn = apsw.Connection(path)
        conn.pragma("synchronous", "FULL")
        if trigger != "minies":
            conn.execute("DROP TRIGGER events_append_only")
        if trigger != "minies" and trigger != "none":
            conn.execute(OLD_TRIGGER if trigger == "0.1" else IDLE_TRIGGER)
        total, position = 0.0, 0
        for b in range(BATCHES):
            ids = _codec.new_event_ids(BATCH)
            rows = [
                (
                    position + k + 1,
                    ids[k],
                    f"acc-{b}",
                    "Account",
                    "Deposited",
                    k + 1,
                    f'{{"amount":{k % 100}}}',
                    "{}",
                    "2026-01-01T00:00:00.000000Z",
                    os.urandom(32),
                    1,
                )
                for k in range(BATCH)
            ]
            position += BATCH
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_schema.INSERT_EVENT, rows)
            conn.execute("COMMIT")
            total += time.perf_counter() - started
        assert conn.execute("SELECT count(*) FROM events").get == position  # checks its own result
        conn.close()
    return total / (BATCHES * BATCH) * 1e6


def raw_inserts(path: str, whole: bool) -> float:
    """Raw's rows into raw's table; with ``whole``, building them (ids, encoding) is timed too."""
    conn = w.raw_connect(path)
    events = w.deposits(BATCH)
    total = 0.0
    for b in range(BATCHES):
        built = time.perf_counter()
        rows = w.raw_rows(f"acc-{b}", events, 1)
        started = built if whole else time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(w.RAW_INSERT, rows)
        conn.execute("COMMIT")
        total += time.perf_counter() - started
    assert w.raw_count(conn) == BATCHES * BATCH  # checks its own result
    conn.close()
    return total / (BATCHES * BATCH) * 1e6


def main() -> None:
    events = w.deposits(BATCH)
    datas = [_codec.encode_event(e) for e in events]
    ids = _codec.new_event_ids(BATCH)
    types = [e.event_type for e in events]
    encode = _codec.encode
    plain = per_event(lambda: [encode(e).decode() for e in events])
    print(f"encode (raw does this too)   {plain:.2f} µs/event")
    checked = per_event(lambda: [_codec.encode_event(e) for e in events]) - plain
    print(f"type check                   {checked:.2f}")
    print(f"ids (raw does this too)      {per_event(lambda: _codec.new_event_ids(BATCH)):.2f}")
    chain = per_event(
        lambda: _audit.chain_batch(
            bytes(32), 1, ids, "acc-1", "Account", types, 1, datas, "{}", "2026-01-01T00:00:00.000000Z", [1] * BATCH
        )
    )
    print(f"hash chain                   {chain:.2f}")
    # The variants take turns within each round, so a slow patch of this noisy VM hits all alike.
    kinds = ("minies", "0.1", "idle", "none", "raw", "raw whole")
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(ROUNDS):
        for kind in kinds:
            best[kind] = min(best[kind], inserts(kind))
    for kind in kinds[:-1]:
        label = "raw table, raw rows" if kind == "raw" else f"trigger {kind}"
        print(f"SQLite insert + commit, {label:<19} {best[kind]:.2f}")
    print(f"raw's whole batch append (ids, encoding, insert, commit) {best['raw whole']:.2f}")
    print(f"ceiling: raw's whole / minies' SQLite part = {best['raw whole'] / best['minies']:.2f}x")
    promised = best["minies"] + chain + checked
    print(f"ceiling with the chain and the type check too = {best['raw whole'] / promised:.2f}x")


if __name__ == "__main__":
    main()
