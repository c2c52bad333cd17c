"""Local-first sync: what a device's sync and its offline appends cost, as ratios.

    python benchmarks/sync.py                                  # the ratios, measured in ONE run
    python -m pytest benchmarks/sync.py --benchmark-only       # the same paths, one group each

(a) a sync that pushes 10,000 pending events from a device to a hub (a file) and pulls them
    back placed, against ``minies.copy`` of the same 10,000 events from one file to another
    (goal: the sync at >= 0.5x copy's events per second);
(b) a sync with nothing new, device and hub both holding 1,000 and then 100,000 events: one
    round trip each, and a time that does not grow with the log (goal: about 1x);
(c) a device's own append while offline against the same append on a plain file, at the same
    durability, with no projection and with one inline projection (goal: <= 1.1x); at "full"
    (the default: an fsync each, which hides CPU) and at "normal" (where CPU shows).

Each figure is the best of ROUNDS runs (APPEND_ROUNDS for the appends), the two sides of a ratio taking turns within each
round, each run on fresh files; every run checks its own result (events placed and pulled,
head hashes equal, round trips, versions), so a path that does less work cannot pass for a
faster one.
"""

from __future__ import annotations

import functools
import itertools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import workloads as w

import minies

ROUNDS: Final = 5
PENDING: Final = 10_000
PER_APPEND: Final = 100  # the device writes its 10,000 events as 100 appends of 100
SMALL: Final = 1_000
LARGE: Final = 100_000
IDLE_SYNCS: Final = 200  # syncs with nothing new, timed together
SINGLES: Final = 1_000  # single-event appends, timed together
APPEND_ROUNDS: Final = 15  # an fsync's time swings on a shared VM: more rounds for the appends


def check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


# ---------------------------------------------------------------- (a) 10,000 pending vs copy
def offline_device(folder: str) -> minies.EventStore:
    """A device holding PENDING events of its own, none of them synced yet."""
    device = minies.EventStore(os.path.join(folder, "device.db"), device="till-1")
    batch = w.deposits(PER_APPEND)
    for i in range(PENDING // PER_APPEND):
        device.append(f"acc-{i}", batch, aggregate_type="Account", expected_version=0)
    check("pending", len(device.pending()), PENDING)
    return device


def push_pending(device: minies.EventStore, hub: str) -> None:
    report = device.sync(hub)
    check("placed", (report.placed, report.rejected, report.pulled, report.pending), (PENDING, 0, PENDING, 0))
    with minies.EventStore(hub, readonly=True) as placed:
        check("head", placed.head(), device.head())


def copy_log(source: str, target: str) -> None:
    report = minies.copy(source, target)
    check("copied", report.copied, PENDING)
    with minies.EventStore(source, readonly=True) as original:
        check("head", report.head_position, original.head()[0])
        check("head hash", report.head_hash, original.head()[1])


def a_log(folder: str) -> str:
    """A file holding the same PENDING events, as placed on a hub (copy's source)."""
    hub = os.path.join(folder, "source.db")
    with offline_device(folder) as device, minies.EventStore(hub) as placed:
        device.sync(placed)
    return hub


def sync_vs_copy() -> tuple[float, float]:
    """Events per second: (sync of PENDING events device -> hub file, copy of PENDING events)."""
    sync_rates: list[float] = []
    copy_rates: list[float] = []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as tmp:
            device = offline_device(tmp)
            hub = os.path.join(tmp, "hub.db")
            minies.EventStore(hub).close()  # the hub exists, empty (its creation is not the sync)
            sync_rates.append(PENDING / clock(functools.partial(device.sync, hub)))
            check("synced", (len(device.pending()), device.head()[0]), (0, PENDING))
            device.close()
        with tempfile.TemporaryDirectory() as tmp:
            source = a_log(tmp)
            target = os.path.join(tmp, "copy.db")
            copy_rates.append(PENDING / clock(functools.partial(copy_log, source, target)))
    return max(sync_rates), max(copy_rates)


# ---------------------------------------------------------------- (b) a sync with nothing new
def synced_pair(folder: str, events: int) -> tuple[minies.EventStore, minies.EventStore]:
    """A hub holding ``events`` events, and a device that pulled them all."""
    hub = minies.EventStore(os.path.join(folder, "hub.db"), durability="normal")
    for i in range(events // w.BATCH_SIZE):
        hub.append(f"acc-{i}", w.deposits(w.BATCH_SIZE), aggregate_type="Account")
    device = minies.EventStore(os.path.join(folder, "device.db"), device="till-1", durability="normal")
    device.sync(hub)
    check("pulled", device.head(), hub.head())
    return hub, device


def idle_sync(hub: minies.EventStore, device: minies.EventStore, events: int, times: int = 1) -> None:
    for _ in range(times):
        report = device.sync(hub)
        check("idle sync", (report.pushed, report.pulled, report.round_trips, report.head_position), (0, 0, 1, events))


def idle_syncs() -> tuple[float, float]:
    """Seconds per sync with nothing new: (SMALL events in the log, LARGE events)."""
    times: dict[int, list[float]] = {SMALL: [], LARGE: []}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {}
        for n in (SMALL, LARGE):
            os.mkdir(os.path.join(tmp, str(n)))
            pairs[n] = synced_pair(os.path.join(tmp, str(n)), n)
        for _ in range(ROUNDS):
            for n, (hub, device) in pairs.items():
                times[n].append(clock(functools.partial(idle_sync, hub, device, n, IDLE_SYNCS)) / IDLE_SYNCS)
        for hub, device in pairs.values():
            device.close()
            hub.close()
    return min(times[SMALL]), min(times[LARGE])


# ---------------------------------------------------------------- (c) an append while offline
def appends(device: bool, projections: Sequence[minies.Projection], durability: str) -> Callable[[str], float]:
    """Seconds for SINGLES single-event appends (each its own command) on a device or a plain file."""

    def run(folder: str) -> float:
        path = os.path.join(folder, "till.db")
        till = "till-1" if device else None
        with minies.EventStore(path, projections=projections, device=till, durability=durability) as store:  # type: ignore[arg-type]
            versions = itertools.count()
            took = clock(
                lambda: [
                    store.append(
                        "acc", [w.Deposited(amount=1)], aggregate_type="Account", expected_version=next(versions)
                    )
                    for _ in range(SINGLES)
                ]
            )
            check("version", store.version("acc"), SINGLES)
            check("pending", len(store.pending()), SINGLES if device else 0)
            if projections:
                check("read model", store.query("SELECT total FROM totals"), [(SINGLES,)])
        return took

    return run


def append_ratios(projections: Sequence[minies.Projection], durability: str) -> tuple[float, float]:
    """Seconds per append: (device, plain file), taking turns, best of APPEND_ROUNDS."""
    runs = (appends(True, projections, durability), appends(False, projections, durability))
    times: list[list[float]] = [[], []]
    for _ in range(APPEND_ROUNDS):
        for i, run in enumerate(runs):
            with tempfile.TemporaryDirectory() as tmp:
                times[i].append(run(tmp) / SINGLES)
    return min(times[0]), min(times[1])


def clock(body: Callable[[], Any]) -> float:
    started = time.perf_counter()
    body()
    return time.perf_counter() - started


def main() -> None:
    print(
        f"# {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"best of {ROUNDS} ({APPEND_ROUNDS} for the appends)"
    )
    print("| what | measured | ratio | goal |")
    print("|---|---:|---:|---|")
    synced, copied = sync_vs_copy()
    print(
        f"| (a) sync of {PENDING:,} pending events device -> hub file vs `minies.copy` of {PENDING:,} "
        f"| {synced:,.0f} vs {copied:,.0f} ev/s | {synced / copied:.2f}x | >= 0.5x |"
    )
    small, large = idle_syncs()
    print(
        f"| (b) sync with nothing new (1 round trip): {LARGE:,} vs {SMALL:,} events in the log "
        f"| {large * 1e3:.2f} vs {small * 1e3:.2f} ms | {large / small:.2f}x | ~1x (O(1)) |"
    )
    for durability in ("full", "normal"):
        for label, projections in (("no projection", []), ("one inline projection", [w.Totals()])):
            on_device, plain = append_ratios(projections, durability)
            print(
                f"| (c) single-event append on a device (pending) vs a plain file, {durability}, {label} "
                f"| {on_device * 1e6:.0f} vs {plain * 1e6:.0f} µs | {on_device / plain:.2f}x | <= 1.1x |"
            )
    sys.stdout.flush()


# ---------------------------------------------------------------- the pytest-benchmark groups
@pytest.fixture
def folder(tmp_path: Path) -> str:
    return str(tmp_path)


@pytest.mark.benchmark(group="sync 10,000 pending events vs copy")
def test_sync_pushes_10000_pending(benchmark: Any, tmp_path: Path) -> None:
    rounds = itertools.count()

    def setup() -> tuple[tuple[minies.EventStore, str], dict[str, Any]]:
        folder = tmp_path / str(next(rounds))
        folder.mkdir()
        hub = str(folder / "hub.db")
        minies.EventStore(hub).close()
        return (offline_device(str(folder)), hub), {}

    benchmark.pedantic(push_pending, setup=setup, rounds=3, iterations=1)


@pytest.mark.benchmark(group="sync 10,000 pending events vs copy")
def test_copy_10000(benchmark: Any, tmp_path: Path) -> None:
    source = a_log(str(tmp_path))
    targets = (str(tmp_path / f"copy-{i}.db") for i in itertools.count())
    benchmark.pedantic(lambda: copy_log(source, next(targets)), rounds=3, iterations=1)


@pytest.mark.benchmark(group="sync with nothing new")
@pytest.mark.parametrize("events", [SMALL, LARGE])
def test_sync_with_nothing_new(benchmark: Any, folder: str, events: int) -> None:
    hub, device = synced_pair(folder, events)
    with hub, device:
        benchmark(idle_sync, hub, device, events)


@pytest.mark.benchmark(group="append single (FULL): device vs plain")
@pytest.mark.parametrize("projection", [False, True], ids=["no projection", "one projection"])
@pytest.mark.parametrize("kind", ["plain", "device"])
def test_append_single(benchmark: Any, folder: str, kind: str, projection: bool) -> None:
    projections = [w.Totals()] if projection else []
    path = os.path.join(folder, "till.db")
    with minies.EventStore(path, projections=projections, device="till-1" if kind == "device" else None) as store:
        versions = itertools.count()
        benchmark(
            lambda: store.append(
                "acc", [w.Deposited(amount=1)], aggregate_type="Account", expected_version=next(versions)
            )
        )
        check("pending", len(store.pending()) == store.version("acc"), kind == "device")
        if projection:
            check("read model", store.query("SELECT total FROM totals"), [(store.version("acc"),)])


if __name__ == "__main__":
    main()
