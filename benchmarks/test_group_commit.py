"""Group commit on a slow disk, in the pytest-benchmark suite (``group_commit.py`` prints the
full table: this VM's disk, 2 and 10 ms, several processes, before and after).

    python -m pytest benchmarks/test_group_commit.py --benchmark-only

One round: every writer appends ``EACH`` single events to its own aggregate through one
shared store at ``durability="full"``. Compare the rounds' times: 8 writers append 8 times
the events of one. Nothing here asserts on time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import apsw
import pytest
import workloads as w
from group_commit import slow_disk

import minies

FSYNC_MS: Final = 2.0
EACH: Final = 25


@pytest.fixture
def slow_store(tmp_path: Path) -> Iterator[minies.EventStore]:
    default = apsw.vfs_names()[0]
    disk = slow_disk(FSYNC_MS)
    try:
        with minies.EventStore(str(tmp_path / "slow.db")) as store:
            yield store
    finally:
        disk.unregister()
        apsw.set_default_vfs(default)


@pytest.mark.benchmark(group=f"group commit ({FSYNC_MS:g} ms fsync, {EACH} appends per writer)")
@pytest.mark.parametrize("writers", [1, 8])
def test_group_commit(benchmark: Any, slow_store: minies.EventStore, writers: int) -> None:
    rounds = itertools.count()
    commits = slow_store._commits

    def one_round() -> None:
        prefix = f"r{next(rounds)}-"

        def writer(k: int) -> None:
            for v in range(EACH):
                slow_store.append(f"{prefix}{k}", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)

        pool = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    done = next(rounds)
    assert slow_store.head()[0] == done * writers * EACH  # the benchmark checks its own result
    benchmark.extra_info["appends per commit"] = round(done * writers * EACH / (slow_store._commits - commits), 2)
