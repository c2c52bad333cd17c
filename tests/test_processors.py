"""Processors: each input event turned into new events exactly once, even across kill -9."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from domain import OrderPlaced, OrderShipped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minies


def place(store: minies.EventStore, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        store.append(f"order-{k}", [OrderPlaced(customer_id=f"c{k}", total=k)], aggregate_type="Order")


def ship(record: minies.Recorded, store: minies.EventStore) -> None:
    """The processor under test: every placed order is shipped, in a stream of its own."""
    store.append(f"shipment-{record.aggregate_id}", [OrderShipped()], aggregate_type="Shipment", expected_version=0)


def shipped(store: minies.EventStore) -> list[str]:
    return [r.aggregate_id for r in store.read_all(event_types=[OrderShipped])]


def test_a_processor_appends_once_per_input_with_causation_and_correlation(store: minies.EventStore) -> None:
    with minies.metadata_scope(correlation_id="request-7"):
        place(store, 2)
    place(store, 1, start=2)
    processor = store.processor("shipping", ship, event_types=[OrderPlaced])
    assert processor.run() == 3 and processor.position == 3
    assert processor.run() == 0  # nothing new: nothing processed twice
    placed = {r.aggregate_id: r for r in store.read_all(event_types=[OrderPlaced])}
    outputs = list(store.read_all(event_types=[OrderShipped]))
    assert [r.aggregate_id for r in outputs] == ["shipment-order-0", "shipment-order-1", "shipment-order-2"]
    for output in outputs:
        source = placed[output.aggregate_id.removeprefix("shipment-")]
        assert output.metadata["causation_id"] == source.event_id
        expected = "request-7" if source.aggregate_id != "order-2" else source.event_id
        assert output.metadata["correlation_id"] == expected
    place(store, 1, start=3)
    assert processor.run() == 1 and processor.position == 7  # its own outputs (4-6) were passed over
    assert len(shipped(store)) == 4


def test_a_failing_input_leaves_nothing_is_parked_and_redelivered_with_its_outputs(store: minies.EventStore) -> None:
    place(store, 3)
    broken = {"order-1"}

    def flaky(record: minies.Recorded, s: minies.EventStore) -> None:
        ship(record, s)  # written, then undone with the input's savepoint
        if record.aggregate_id in broken:
            raise RuntimeError("warehouse offline")

    processor = store.processor("shipping", flaky, max_attempts=2, event_types=[OrderPlaced])
    assert processor.run() == 3
    assert shipped(store) == ["shipment-order-0", "shipment-order-2"]
    [letter] = processor.dead_letters()
    assert (letter.position, letter.attempts) == (2, 2) and "RuntimeError: warehouse offline" in letter.error
    broken.clear()
    assert processor.redeliver() == 1
    assert processor.dead_letters() == [] and shipped(store)[-1] == "shipment-order-1"


def test_an_interrupted_page_commits_nothing_and_is_processed_again(store: minies.EventStore) -> None:
    place(store, 4)
    calls: list[str] = []

    def interrupted(record: minies.Recorded, s: minies.EventStore) -> None:
        calls.append(record.aggregate_id)
        ship(record, s)
        if record.aggregate_id == "order-2" and calls.count("order-2") == 1:
            raise KeyboardInterrupt  # not an Exception: no retry, the whole page rolls back

    processor = store.processor("shipping", interrupted, event_types=[OrderPlaced])
    with pytest.raises(KeyboardInterrupt):
        processor.run()
    assert processor.position == 0 and shipped(store) == []
    assert processor.run() == 4
    assert shipped(store) == [f"shipment-order-{k}" for k in range(4)]


def test_a_store_that_fails_stops_the_page_at_once_and_parks_nothing(store: minies.EventStore) -> None:
    place(store, 3)
    calls: list[str] = []

    def unlucky(record: minies.Recorded, s: minies.EventStore) -> None:
        calls.append(record.aggregate_id)
        ship(record, s)
        if len(calls) == 2:
            raise minies.StorageError("the disk is full")  # the store's fault, not this input's

    processor = store.processor("shipping", unlucky, event_types=[OrderPlaced])
    with pytest.raises(minies.StorageError, match="disk is full"):
        processor.run()
    assert calls == ["order-0", "order-1"]  # no retry of the same input, no waiting inside the page
    assert processor.position == 0 and processor.dead_letters() == [] and shipped(store) == []
    assert processor.run() == 3 and len(shipped(store)) == 3


def test_a_processor_refuses_to_run_inside_a_transaction_and_checks_its_handler(store: minies.EventStore) -> None:
    processor = store.processor("shipping", ship)
    with (
        pytest.raises(minies.MiniesError, match="processor 'shipping' cannot run inside store.transaction"),
        store.transaction(),
    ):
        processor.run()
    with pytest.raises(TypeError, match="handler must be callable as handler\\(record, store\\)"):
        store.processor("shipping", "ship")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^name must be a str, got int: 7$"):
        store.processor(7, ship)  # type: ignore[arg-type]


def test_a_processor_tries_an_input_three_times_by_default(store: minies.EventStore) -> None:
    place(store, 1)
    tries: list[int] = []

    def broken(record: minies.Recorded, s: minies.EventStore) -> None:
        tries.append(record.position)
        raise RuntimeError("always")

    processor = store.processor("shipping", broken, event_types=[OrderPlaced])
    assert processor.run() == 1 and tries == [1, 1, 1]
    [letter] = processor.dead_letters()
    assert letter.attempts == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=st.lists(st.sampled_from(["ok", "fails-once", "fails-always", "interrupts-once"]), max_size=12),
    limits=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6),
)
def test_a_processor_matches_a_model_of_exactly_once(tmp_path: Path, inputs: list[str], limits: list[int]) -> None:
    """Whatever fails or is interrupted, each input ends up processed exactly once or parked."""
    path = tmp_path / f"model-{uuid.uuid4().hex}.db"  # (hypothesis seeds random: not unique)
    with minies.EventStore(path) as store:
        place(store, len(inputs))
        attempts: dict[int, int] = {}

        def handler(record: minies.Recorded, s: minies.EventStore) -> None:
            k = int(record.aggregate_id.removeprefix("order-"))
            attempts[k] = attempts.get(k, 0) + 1
            ship(record, s)
            kind = inputs[k]
            if kind == "fails-always" or (kind == "fails-once" and attempts[k] == 1):
                raise ValueError(kind)
            if kind == "interrupts-once" and attempts[k] == 1:
                raise KeyboardInterrupt

        processor = store.processor("model", handler, max_attempts=2, event_types=[OrderPlaced])
        for limit in [*limits, None]:
            while True:
                try:
                    processor.run(limit=limit)
                    break
                except KeyboardInterrupt:
                    continue  # as if the process were restarted
            if limit is None:
                break
        expected = [f"shipment-order-{k}" for k, kind in enumerate(inputs) if kind != "fails-always"]
        assert sorted(shipped(store)) == sorted(expected)
        assert [d.position for d in processor.dead_letters()] == [
            k + 1 for k, kind in enumerate(inputs) if kind == "fails-always"
        ]
        assert processor.position >= len(inputs) and processor.run() == 0  # every input done


CHILD = """
import sys, time
import minies
from domain import OrderPlaced, OrderShipped

def ship(record, store):
    time.sleep(0.002)  # slow enough that kills land mid-page
    store.append(f"shipment-{record.aggregate_id}", [OrderShipped()], aggregate_type="Shipment", expected_version=0)

with minies.EventStore(sys.argv[1]) as store:
    store.processor("shipping", ship, event_types=[OrderPlaced]).follow(idle_timeout=1.0, max_wait=0.02)
"""


def test_killed_processors_lose_and_repeat_nothing(tmp_path: Path) -> None:
    """Two processes run the same processor; each is killed -9 at random, then restarted."""
    path = str(tmp_path / "orders.db")
    with minies.EventStore(path, durability="normal") as store:
        place(store, 600)
    rng = random.Random(17)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    deadline = time.monotonic() + 240
    kills = 0
    progress: list[int] = []
    while True:
        with minies.EventStore(path, readonly=True) as store:
            progress.append(len(shipped(store)))
            if progress[-1] == 600 and store.processor("shipping", ship).position >= 600:
                break
        assert time.monotonic() < deadline, "the processors made no progress"
        children = [
            subprocess.Popen([sys.executable, "-c", CHILD, path], env=env, stderr=subprocess.PIPE) for _ in range(2)
        ]
        time.sleep(rng.uniform(0.3, 1.2))
        for child in children:
            child.kill()
            _, err = child.communicate(timeout=60)
            assert child.returncode == -9 or child.returncode == 0, err.decode()
            kills += child.returncode == -9
    with minies.EventStore(path, readonly=True) as store:
        outputs = shipped(store)
        assert sorted(outputs) == sorted(f"shipment-order-{k}" for k in range(600))  # each exactly once
        assert store.processor("shipping", ship).dead_letters() == []
        assert store.verify().ok
    assert kills >= 2 and any(0 < done < 600 for done in progress), (kills, progress)  # killed mid-way


def test_a_processor_follows_runs_in_pages_and_manages_its_dead_letters(store: minies.EventStore) -> None:
    place(store, 3)
    attempts: collections.Counter[str] = collections.Counter()
    failing = {"order-0", "order-1"}

    def handler(record: minies.Recorded, s: minies.EventStore) -> None:
        attempts[record.aggregate_id] += 1
        if record.aggregate_id in failing:
            raise RuntimeError("warehouse offline")
        ship(record, s)

    processor = store.processor("shipping", handler, event_types=[OrderPlaced])
    assert processor.name == "shipping"
    assert processor.run(limit=2) == 2 and processor.position == 2
    assert attempts == {"order-0": 3, "order-1": 3}  # three tries by default, then parked
    assert processor.run() == 1 and shipped(store) == ["shipment-order-2"]
    failing.clear()
    assert processor.redeliver(1) == 1  # only the one at position 1
    assert [d.position for d in processor.dead_letters()] == [2]
    processor.discard(2)
    assert processor.dead_letters() == [] and sorted(shipped(store)) == ["shipment-order-0", "shipment-order-2"]

    writer = threading.Thread(target=place, args=(store, 2, 3))
    writer.start()
    assert processor.follow(idle_timeout=2.0, max_wait=0.01) == 2  # woken by the other thread's commits
    writer.join()
    assert "shipment-order-4" in shipped(store)
    stop = threading.Event()
    stop.set()
    assert processor.follow(stop=stop) == 0
    assert processor.follow(idle_timeout=0.05) == 0  # its own default wait
    processor.rewind(0)
    assert processor.position == 0


def test_a_redelivery_commits_its_outputs_and_leaves_the_dead_letters_together(
    store: minies.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    place(store, 2)
    broken = {"order-1"}

    def flaky(record: minies.Recorded, s: minies.EventStore) -> None:
        if record.aggregate_id in broken:
            raise RuntimeError("warehouse offline")
        ship(record, s)

    processor = store.processor("shipping", flaky, max_attempts=1, event_types=[OrderPlaced])
    assert processor.run() == 2 and len(processor.dead_letters()) == 1
    broken.clear()
    sql = store._tx.sql
    # the outputs are written, then taking the input off the dead letters fails
    monkeypatch.setattr(store._tx, "sql", types.SimpleNamespace(**{**vars(sql), "UNPARK": "SELECT no_such_function()"}))
    with pytest.raises(minies.MiniesError):
        processor.redeliver()
    monkeypatch.setattr(store._tx, "sql", sql)
    assert shipped(store) == ["shipment-order-0"]  # its outputs went with it: nothing half done
    assert processor.redeliver() == 1
    assert shipped(store) == ["shipment-order-0", "shipment-order-1"]  # processed once
    assert processor.dead_letters() == []
