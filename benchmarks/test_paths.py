"""minies' own benchmark suite: one group per path a user waits on.

    pip install -e ".[bench]" && python -m pytest benchmarks --benchmark-only

Sizes are the named constants below; nothing here asserts on time.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import pytest
import workloads as w

import minies

BATCH: Final = 1_000
REPLAY: Final = 10_000
LONG_HISTORY: Final = 1_000_000
SHORT_HISTORY: Final = 100
SCAN: Final = 100_000
REBUILD: Final = 100_000


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "bench.db")


@pytest.fixture
def store(path: str) -> Iterator[minies.EventStore]:
    with minies.EventStore(path) as s:
        yield s


class Snapshotted(w.Account):
    snapshot_every: ClassVar[int | None] = 100


@pytest.mark.benchmark(group="append single (FULL)")
def test_append_single(benchmark: Any, store: minies.EventStore) -> None:
    versions = itertools.count()
    benchmark(
        lambda: store.append("acc", [w.Deposited(amount=1)], aggregate_type="Account", expected_version=next(versions))
    )


@pytest.mark.benchmark(group="append single (FULL)")
def test_append_single_with_inline_projection(benchmark: Any, path: str) -> None:
    with minies.EventStore(path, projections=[w.Totals()]) as store:
        versions = itertools.count()
        benchmark(
            lambda: store.append(
                "acc", [w.Deposited(amount=1)], aggregate_type="Account", expected_version=next(versions)
            )
        )


@pytest.mark.benchmark(group="append single (FULL)")
def test_append_single_sealed_every_1000(benchmark: Any, path: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with minies.EventStore(path, seal_key=Ed25519PrivateKey.generate(), seal_every=BATCH) as store:
        benchmark(lambda: store.append("acc", [w.Deposited(amount=1)], aggregate_type="Account"))


@pytest.mark.benchmark(group="append batch of 1,000")
def test_append_batch(benchmark: Any, store: minies.EventStore) -> None:
    batch = w.deposits(BATCH)
    ids = (f"acc-{i}" for i in itertools.count())
    benchmark(lambda: store.append(next(ids), batch, aggregate_type="Account", expected_version=0))


@pytest.mark.benchmark(group="load 10,000 events")
def test_load_without_snapshot(benchmark: Any, store: minies.EventStore) -> None:
    store.append("acc", [w.Opened(owner="o"), *w.deposits(REPLAY - 1)], aggregate_type="Account")
    benchmark(store.load, w.Account, "acc")


@pytest.mark.benchmark(group="load with snapshots")
@pytest.mark.parametrize("history", [SHORT_HISTORY, LONG_HISTORY])
def test_load_with_snapshots(benchmark: Any, path: str, history: int) -> None:
    with minies.EventStore(path, durability="normal") as store:
        account = Snapshotted(id="acc")
        account.record(w.Opened(owner="o"))
        for chunk in range(0, history - 1, 10_000):
            for _ in range(min(10_000, history - 1 - chunk)):
                account.record(w.Deposited(amount=1))
            store.save(account)
        benchmark(store.load, Snapshotted, "acc")


@pytest.mark.benchmark(group="save with a snapshot due")
@pytest.mark.parametrize("snapshot", [False, True])
def test_save_with_snapshot(benchmark: Any, path: str, snapshot: bool) -> None:
    cls = Snapshotted if snapshot else w.Account
    with minies.EventStore(path) as store:
        account = cls(id="acc")
        account.record(w.Opened(owner="o"))
        for _ in range(98):
            account.record(w.Deposited(amount=1))
        store.save(account)  # version 99: every save below crosses 100, 200, ...

        def save() -> None:
            for _ in range(100):
                account.record(w.Deposited(amount=1))
            store.save(account)

        benchmark(save)


@pytest.mark.benchmark(group="read_all 100,000")
def test_read_all(benchmark: Any, store: minies.EventStore) -> None:
    for i in range(SCAN // BATCH):
        store.append(f"acc-{i}", w.deposits(BATCH), aggregate_type="Account")
    benchmark(lambda: sum(1 for _ in store.read_all()))


@pytest.mark.benchmark(group="verify 100,000")
def test_verify(benchmark: Any, store: minies.EventStore) -> None:
    for i in range(SCAN // BATCH):
        store.append(f"acc-{i}", w.deposits(BATCH), aggregate_type="Account")
    benchmark(store.verify)


@pytest.mark.benchmark(group="verify 100,000")
def test_verify_trusting_100_seals(benchmark: Any, path: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    with minies.EventStore(path, seal_key=key, seal_every=BATCH) as store:
        for i in range(SCAN // BATCH):
            store.append(f"acc-{i}", w.deposits(BATCH), aggregate_type="Account")
        assert store.verify(trust=[key.public_key()]).seals == SCAN // BATCH
        benchmark(store.verify, trust=[key.public_key()])


@pytest.mark.benchmark(group="verify 100,000")
def test_report(benchmark: Any, store: minies.EventStore, tmp_path: Path) -> None:
    """The auditor's HTML report: verify, the summaries and the latest 2,000 events (its target: at most 2x verify)."""
    from minies import _report

    for i in range(SCAN // BATCH):
        store.append(f"acc-{i}", w.deposits(BATCH), aggregate_type="Account")
    benchmark(_report.render, store, store.path)


@pytest.mark.benchmark(group="rebuild 100,000 (one UPSERT per event)")
def test_rebuild(benchmark: Any, path: str) -> None:
    with minies.EventStore(path, projections=[w.Totals()], durability="normal") as store:
        for i in range(REBUILD // BATCH):
            store.append(f"acc-{i % 10}", w.deposits(BATCH), aggregate_type="Account")
        benchmark(store.rebuild, "Totals")


@pytest.mark.benchmark(group="import time")
def test_import_time(benchmark: Any) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    benchmark(lambda: subprocess.run([sys.executable, "-c", "import minies"], check=True, env=env))


class Tick(minies.Event):
    schema_version: ClassVar[int] = 1
    n: int


@pytest.mark.benchmark(group="read_all 100,000: upcasting")
@pytest.mark.parametrize("upcast", [False, True])
def test_read_all_upcasting(benchmark: Any, path: str, upcast: bool) -> None:
    from minies import _events, _upcasters

    with minies.EventStore(path, durability="normal") as store:
        for i in range(SCAN // BATCH):
            store.append(f"t-{i}", [Tick(n=j) for j in range(BATCH)], aggregate_type="Clock")
        if upcast:  # the stored events become v1 of a v2 class with one upcaster step
            Tick.schema_version = 2
            _upcasters.upcasters[("Tick", 1)] = lambda data: data
            _events.generation += 1
        try:
            benchmark(lambda: sum(1 for _ in store.read_all()))
        finally:
            Tick.schema_version = 1
            _upcasters.upcasters.pop(("Tick", 1), None)
            _events.generation += 1
