"""asyncio on a slow disk: 100 concurrent AsyncEventStore tasks against sequential awaits.

    python benchmarks/async_tasks.py [--rounds N] [--fsync-ms MS]

Each task appends single events to an aggregate of its own at ``durability="full"``: every
await is a command that must be durable before it returns. Sequential: one task awaits its
appends one after the other. Concurrent: 100 tasks at once, which the store's worker threads
hand to group commit. The disk syncs take ``--fsync-ms`` longer (an apsw VFS, as in
``group_commit.py``). Also: 100 tasks doing load-decide-save on 10 shared accounts, inside
``async with store.transaction()`` against optimistic load-then-save with retries on
``ConcurrencyError``. Every run checks what it stored. Goal: concurrent at least 4 times sequential.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from group_commit import slow_disk

import minies

TASKS = 100
EVENTS_PER_TASK = 6


class Ticked(minies.Event):
    event_type: ClassVar[str] = "bench.Ticked"
    n: int


class Counter(minies.Aggregate):
    aggregate_type: ClassVar[str] = "Counter"
    total: int = 0

    def apply(self, event: minies.Event) -> None:
        self.total += event.n  # type: ignore[attr-defined]


async def sequential(path: str) -> float:
    async with minies.AsyncEventStore(path) as store:
        started = time.perf_counter()
        for k in range(EVENTS_PER_TASK * 10):
            await store.append("alone", [Ticked(n=k)], aggregate_type="Counter")
        seconds = time.perf_counter() - started
        assert await store.version("alone") == EVENTS_PER_TASK * 10
    return EVENTS_PER_TASK * 10 / seconds


async def concurrent(path: str) -> tuple[float, float]:
    async with minies.AsyncEventStore(path) as store:
        commits = store.store._tx.commits

        async def task(t: int) -> None:
            for k in range(EVENTS_PER_TASK):
                await store.append(f"task-{t}", [Ticked(n=k)], aggregate_type="Counter")

        started = time.perf_counter()
        await asyncio.gather(*(task(t) for t in range(TASKS)))
        seconds = time.perf_counter() - started
        made = store.store._tx.commits - commits
        assert (await store.head())[0] == TASKS * EVENTS_PER_TASK
    return TASKS * EVENTS_PER_TASK / seconds, TASKS * EVENTS_PER_TASK / made


async def decide(path: str, inside: bool) -> tuple[float, int]:
    """100 tasks add 1 to one of 10 accounts, 3 times each: in a transaction, or optimistically."""
    async with minies.AsyncEventStore(path) as store:
        conflicts = 0

        async def task(t: int) -> None:
            nonlocal conflicts
            for _ in range(3):
                account = f"acc-{t % 10}"
                while True:
                    try:
                        if inside:
                            async with store.transaction():
                                await save_one(store, account)
                        else:
                            await save_one(store, account)
                        break
                    except minies.ConcurrencyError:
                        conflicts += 1

        started = time.perf_counter()
        await asyncio.gather(*(task(t) for t in range(TASKS)))
        seconds = time.perf_counter() - started
        totals = [(await store.load(Counter, f"acc-{a}")).total for a in range(10)]
        assert sum(totals) == TASKS * 3
    return TASKS * 3 / seconds, conflicts


async def save_one(store: minies.AsyncEventStore, account: str) -> None:
    try:
        counter = await store.load(Counter, account)
    except minies.NotFound:
        counter = Counter(id=account)
    counter.record(Ticked(n=1))
    await store.save(counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync-ms", type=float, default=2.0)
    args = parser.parse_args()
    disk = slow_disk(args.fsync_ms)
    rows: dict[str, list[float]] = {
        "seq": [],
        "con": [],
        "per": [],
        "ratio": [],
        "tx": [],
        "opt": [],
        "txc": [],
        "optc": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            seq = asyncio.run(sequential(str(Path(folder) / f"s{r}.db")))
            con, per_commit = asyncio.run(concurrent(str(Path(folder) / f"c{r}.db")))
            tx, tx_conflicts = asyncio.run(decide(str(Path(folder) / f"t{r}.db"), inside=True))
            opt, opt_conflicts = asyncio.run(decide(str(Path(folder) / f"o{r}.db"), inside=False))
            for key, value in zip(
                rows, (seq, con, per_commit, con / seq, tx, opt, tx_conflicts, opt_conflicts), strict=True
            ):
                rows[key].append(value)
    del disk
    med = {key: statistics.median(values) for key, values in rows.items()}
    print(f"asyncio on a {args.fsync_ms:g} ms fsync, {args.rounds} rounds (medians)")
    print("| | ev/s | ratio | writes per commit | goal |")
    print("|---|---:|---:|---:|---|")
    print(f"| sequential awaits (one task) | {med['seq']:,.0f} | 1.0× | 1 | |")
    print(f"| {TASKS} concurrent tasks | {med['con']:,.0f} | {med['ratio']:.1f}× | {med['per']:.1f} | ≥ 4× |")
    print(
        f"| load-decide-save, 100 tasks on 10 accounts, in `async with store.transaction()` | {med['tx']:,.0f} | {med['tx'] / med['opt']:.1f}× optimistic | | conflicts: {med['txc']:.0f} |"
    )
    print(
        f"| the same, optimistic load then save, retried on ConcurrencyError | {med['opt']:,.0f} | 1.0× | | conflicts: {med['optc']:.0f} |"
    )


if __name__ == "__main__":
    main()
