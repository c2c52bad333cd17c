"""Concurrent single-event commands at durability="full": threads, and asyncio tasks.

    python benchmarks/concurrency.py

Each writer appends to its own aggregate, one event per call, so every call is a command
that must be durable before it returns. Reports appends/s against one thread in the same
run, p50/p99 latency per append, and the event loop's worst tick while 1,000 tasks append.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time

import workloads as w

import minies

PER_THREAD = 300
TASKS = 1_000
PER_TASK = 10


def threads(n: int, path: str) -> tuple[float, list[float]]:
    latencies: list[float] = []
    with minies.EventStore(path) as store:

        def worker(k: int) -> None:
            for v in range(PER_THREAD):
                started = time.perf_counter()
                store.append(f"acc-{k}", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)
                latencies.append(time.perf_counter() - started)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
        started = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        rate = n * PER_THREAD / (time.perf_counter() - started)
        assert store.head()[0] == n * PER_THREAD  # the benchmark checks its own result
    return rate, latencies


async def tasks(path: str) -> tuple[float, float]:
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    async with minies.AsyncEventStore(path) as store:

        async def task(k: int) -> None:
            for v in range(PER_TASK):
                await store.append(f"acc-{k}", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)

        tick = asyncio.create_task(ticker())
        started = time.perf_counter()
        await asyncio.gather(*(task(k) for k in range(TASKS)))
        rate = TASKS * PER_TASK / (time.perf_counter() - started)
        done.set()
        await tick
        assert (await store.head())[0] == TASKS * PER_TASK
    return rate, worst


def percentile(values: list[float], p: float) -> float:
    return sorted(values)[int(len(values) * p)] * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one, one_latency = threads(1, os.path.join(tmp, "one.db"))
        eight, eight_latency = threads(8, os.path.join(tmp, "eight.db"))
        many, worst = asyncio.run(tasks(os.path.join(tmp, "tasks.db")))
    print("| writers | appends/s | vs one thread | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| 1 thread | {one:,.0f} | 1.0× | {percentile(one_latency, 0.5):.2f} | {percentile(one_latency, 0.99):.2f} |"
    )
    print(
        f"| 8 threads | {eight:,.0f} | {eight / one:.1f}× | {percentile(eight_latency, 0.5):.2f}"
        f" | {percentile(eight_latency, 0.99):.2f} |"
    )
    print(f"| {TASKS:,} asyncio tasks | {many:,.0f} | {many / one:.1f}× | | |")
    print(
        f"\nworst event-loop tick delay while {TASKS:,} tasks appended {TASKS * PER_TASK:,} events: {worst * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
