"""The costs inside minies, as ratios measured in one run.

    python benchmarks/internals.py

Inline projection overhead, rebuild vs raw UPSERTs, the hash chain's cost, verify vs
read_all, upcasting, personal fields, a snapshot's cost on save, and load time with
snapshots as history grows.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

import apsw
import workloads as w

import minies
from minies import _audit, _events, _upcasters

ROUNDS: Final = 5
SINGLE: Final = 1_000
REBUILD: Final = 200_000
VERIFY: Final = 200_000
LONG: Final = 1_000_000


class BatchedTotals(w.Totals):
    """The same read model, writing each batch with one executemany."""

    name = "Totals"

    def handle_batch(self, db: minies.Database, events: Sequence[minies.Recorded]) -> None:
        db.executemany(UPSERT, [(e.aggregate_id, e.data.amount) for e in events])


UPSERT: Final = "INSERT INTO totals VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET total = total + excluded.total"


class Signup(minies.Event):
    email: minies.Personal[str] = ""
    name: minies.Personal[str] = ""
    plan: str = "free"


class PlainSignup(minies.Event):
    email: str = ""
    name: str = ""
    plan: str = "free"


def personal(cls: type[Signup] | type[PlainSignup]) -> Callable[[str], tuple[float, float]]:
    """Batch append (50 customers of 1,000 events each), then read_all: in memory, one class."""

    def run(path: str) -> tuple[float, float]:
        with minies.EventStore(":memory:") as store:
            batch = [cls(email=f"user{i}@example.com", name=f"User Number {i}", plan="pro") for i in range(1_000)]
            append = clock(lambda: [store.append(f"c{i}", batch, aggregate_type="Customer") for i in range(50)])
            records: list[minies.Recorded] = []
            read = clock(lambda: records.extend(store.read_all()))
            assert len(records) == 50_000 and records[-1].data == batch[-1]
            return append, read

    return run


class Snapped(w.Account):
    snapshot_every: ClassVar[int | None] = 100


def best(*runs: Callable[[str], float]) -> list[float]:
    """Seconds for each run: the best of ROUNDS, taking turns, each on a fresh file."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(ROUNDS):
        for i, run in enumerate(runs):
            with tempfile.TemporaryDirectory() as tmp:
                times[i].append(run(os.path.join(tmp, "b.db")))
    return [min(t) for t in times]


def clock(body: Callable[[], Any]) -> float:
    started = time.perf_counter()
    body()
    return time.perf_counter() - started


def singles(projections: list[minies.Projection], in_memory: bool = False) -> Callable[[str], float]:
    def run(path: str) -> float:
        with minies.EventStore(":memory:" if in_memory else path, projections=projections) as store:
            versions = itertools.count()
            return clock(
                lambda: [
                    store.append(
                        "acc", [w.Deposited(amount=1)], aggregate_type="Account", expected_version=next(versions)
                    )
                    for _ in range(SINGLE)
                ]
            )

    return run


def batches(path: str) -> float:
    with minies.EventStore(":memory:") as store:
        data = [w.deposits(1_000) for _ in range(50)]
        return clock(lambda: [store.append(f"a{i}", b, aggregate_type="Account") for i, b in enumerate(data)])


def unchained(run: Callable[[str], float]) -> Callable[[str], float]:
    """The same run with the chain's hashing replaced by constant bytes (the cost of the chain)."""

    def stub(previous: bytes, position: int, ids: list[str], *args: Any) -> list[bytes]:
        return [b"\\0" * 32] * len(ids)

    def measured(path: str) -> float:
        real = _audit.chain_batch
        _audit.chain_batch = stub  # type: ignore[assignment]
        try:
            return run(path)
        finally:
            _audit.chain_batch = real

    return measured


def rebuild(projection: minies.Projection) -> Callable[[str], float]:
    def run(path: str) -> float:
        with minies.EventStore(path, projections=[projection], durability="normal") as store:
            for i in range(REBUILD // 1_000):
                store.append(f"acc-{i % 100}", w.deposits(1_000), aggregate_type="Account")
            seconds = clock(lambda: store.rebuild("Totals"))
            assert store.query("SELECT count(*), sum(total) FROM totals") == [
                (min(100, REBUILD // 1_000), REBUILD // 100 * sum(range(100)))
            ]
            return seconds

    return run


def raw_upserts(path: str) -> float:
    conn = apsw.Connection(path)
    conn.pragma("journal_mode", "wal")
    conn.execute("CREATE TABLE totals (account_id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
    rows = [(f"acc-{(i // 1_000) % 100}", i % 100) for i in range(REBUILD)]  # decoded beforehand

    def body() -> None:
        with conn:
            conn.executemany(UPSERT, rows)

    seconds = clock(body)
    assert conn.execute("SELECT count(*), sum(total) FROM totals").fetchall() == [
        (min(100, REBUILD // 1_000), REBUILD // 100 * sum(range(100)))
    ]
    conn.close()
    return seconds


def verify_vs_read_all(path: str) -> tuple[float, float]:
    with minies.EventStore(path, durability="normal") as store:
        for i in range(VERIFY // 1_000):
            store.append(f"acc-{i}", w.deposits(1_000), aggregate_type="Account")
        reads, checks = [], []
        for _ in range(3):  # taking turns
            reads.append(clock(lambda: sum(1 for _ in store.read_all())))
            checks.append(clock(lambda: store.verify()))
        assert store.verify().events_checked == VERIFY and sum(1 for _ in store.read_all()) == VERIFY
        return min(checks), min(reads)


def read_all_upcasting(path: str) -> tuple[float, float]:
    """read_all of 100,000 events as they are, then with one upcaster step each (their type's
    class bumped to v2, the identity upcaster from v1): taking turns, best of 3."""
    with minies.EventStore(path, durability="normal") as store:
        for i in range(VERIFY // 2_000):
            store.append(f"acc-{i}", w.deposits(1_000), aggregate_type="Account")
        plain, upcast = [], []

        def scan() -> None:
            assert sum(1 for _ in store.read_all()) == VERIFY // 2

        for _ in range(3):
            plain.append(clock(scan))
            w.Deposited.schema_version = 2
            _upcasters.upcasters[("Deposited", 1)] = lambda data: data
            _events.generation += 1
            try:
                upcast.append(clock(scan))
                assert next(iter(store.read_all())).data == w.Deposited(amount=0)
            finally:
                w.Deposited.schema_version = 1
                del _upcasters.upcasters[("Deposited", 1)]
                _events.generation += 1
        return min(upcast), min(plain)


def saves(cls: type[w.Account]) -> Callable[[str], float]:
    def run(path: str) -> float:
        with minies.EventStore(path) as store:
            account = cls(id="acc")
            account.record(w.Opened(owner="o"))
            for _ in range(98):
                account.record(w.Deposited(amount=1))
            store.save(account)

            def body() -> None:
                for _ in range(20):  # every save crosses a multiple of 100
                    for _ in range(100):
                        account.record(w.Deposited(amount=1))
                    store.save(account)

            return clock(body)

    return run


def load_with_history(history: int) -> Callable[[str], float]:
    def run(path: str) -> float:
        with minies.EventStore(path, durability="normal") as store:
            account = Snapped(id="acc")
            account.record(w.Opened(owner="o"))
            done = 1
            while done < history:
                for _ in range(min(10_000, history - done)):
                    account.record(w.Deposited(amount=1))
                done = account.version
                store.save(account)
            return min(clock(lambda: store.load(Snapped, "acc")) for _ in range(20))

    return run


def row(what: str, measured: str, ratio: str, goal: str) -> None:
    print(f"| {what} | {measured} | {ratio} | {goal} |", flush=True)


def in_tmp(run: Callable[[str], Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return run(os.path.join(tmp, "b.db"))


def main() -> None:
    print("| what | measured | ratio | goal |")
    print("|---|---:|---:|---|")
    plain, inline = best(singles([]), singles([w.Totals()]))
    row(
        "inline projection on a single-event append",
        f"{inline / SINGLE * 1e6:.0f} µs vs {plain / SINGLE * 1e6:.0f} µs",
        f"{(inline / plain - 1) * 100:+.0f}%",
        "< +30%",
    )
    # The chain costs CPU, not I/O: measured in memory, where nothing hides it.
    with_chain, without = best(singles([], in_memory=True), unchained(singles([], in_memory=True)))
    row(
        "hash chain, single-event append (CPU, in memory)",
        f"{with_chain / SINGLE * 1e6:.0f} µs vs {without / SINGLE * 1e6:.0f} µs",
        f"{(with_chain / without - 1) * 100:+.0f}%",
        "< +15%",
    )
    with_chain, without = best(batches, unchained(batches))
    row(
        "hash chain, batch append (1,000/call, in memory)",
        f"{50_000 / with_chain:,.0f} vs {50_000 / without:,.0f} ev/s",
        f"{(with_chain / without - 1) * 100:+.0f}%",
        "< +15%",
    )
    mine, batched, raw = best(rebuild(w.Totals()), rebuild(BatchedTotals()), raw_upserts)
    row(
        f"rebuild, one UPSERT per event in `on_Deposited` ({REBUILD:,})",
        f"{REBUILD / mine:,.0f} vs raw {REBUILD / raw:,.0f} ev/s",
        f"{raw / mine * 100:.0f}% of raw",
        "≥ 60%",
    )
    row(
        "rebuild, the same UPSERTs in `handle_batch` (executemany)",
        f"{REBUILD / batched:,.0f} vs raw {REBUILD / raw:,.0f} ev/s",
        f"{raw / batched * 100:.0f}% of raw",
        "≥ 60%",
    )
    check, read = in_tmp(verify_vs_read_all)
    row(
        f"verify vs read_all ({VERIFY:,} events)",
        f"{VERIFY / check:,.0f} vs {VERIFY / read:,.0f} ev/s",
        f"{read / check:.2f}×",
        "≥ 1.0×",
    )
    upcast, read = in_tmp(read_all_upcasting)
    row(
        f"read_all with one upcaster step vs plain ({VERIFY // 2:,} events)",
        f"{VERIFY // 2 / upcast:,.0f} vs {VERIFY // 2 / read:,.0f} ev/s",
        f"{read / upcast:.2f}×",
        "≥ 0.8×",
    )
    sealed_runs, plain_runs = [], []
    for _ in range(ROUNDS):  # taking turns
        sealed_runs.append(in_tmp(personal(Signup)))
        plain_runs.append(in_tmp(personal(PlainSignup)))
    (sealed, plain) = (min(r[0] for r in sealed_runs), min(r[0] for r in plain_runs))
    row(
        "batch append, two `Personal[str]` fields vs plain (50,000)",
        f"{50_000 / sealed:,.0f} vs {50_000 / plain:,.0f} ev/s",
        f"{sealed / plain:.2f}×",
        "≤ 1.3×",
    )
    (sealed, plain) = (min(r[1] for r in sealed_runs), min(r[1] for r in plain_runs))
    row(
        "read_all, the same events",
        f"{50_000 / sealed:,.0f} vs {50_000 / plain:,.0f} ev/s",
        f"{sealed / plain:.2f}×",
        "≤ 1.3×",
    )
    plain, snapshotting = best(saves(w.Account), saves(Snapped))
    row(
        "save with a snapshot due",
        f"{snapshotting / 20 * 1e3:.2f} ms vs {plain / 20 * 1e3:.2f} ms",
        f"{(snapshotting / plain - 1) * 100:+.0f}%",
        "< +50%",
    )
    short, long = in_tmp(load_with_history(100)), in_tmp(load_with_history(LONG))
    row(
        f"load with snapshots every 100: {LONG:,} vs 100 events of history",
        f"{long * 1e6:.0f} µs vs {short * 1e6:.0f} µs",
        f"{long / short:.2f}×",
        "≤ 2×",
    )


if __name__ == "__main__":
    main()
