from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from domain import Account, MoneyDeposited, OrderPlaced
from shop_today import CityChanged, CustomerRegistered, Ordered, StreetChanged, todays_upcasters

import minies


def fill(store: minies.EventStore, n: int, aggregate_id: str = "a") -> None:
    store.append(aggregate_id, [MoneyDeposited(amount=i) for i in range(n)], aggregate_type="Account")


def test_poll_delivers_in_order_and_resumes_from_the_checkpoint(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 250)
        seen: list[int] = []
        sub = store.subscription("mailer")
        assert sub.poll(lambda r: seen.append(r.position), limit=120) == 120
        assert sub.position == 120
    with minies.EventStore(location) as store:  # a new process would do the same
        sub = store.subscription("mailer")
        assert sub.poll(lambda r: seen.append(r.position)) == 130
        assert sub.poll(lambda r: seen.append(r.position)) == 0
    assert seen == list(range(1, 251))


def test_a_crash_before_the_ack_redelivers(store: minies.EventStore) -> None:
    fill(store, 10)
    sub = store.subscription("s")

    def crash(record: minies.Recorded) -> None:
        if record.position == 5:
            raise KeyboardInterrupt  # not an Exception: the consumer dies, no retry, no ack

    with pytest.raises(KeyboardInterrupt, match="^$"):
        sub.poll(crash)
    assert sub.position == 0
    seen: list[int] = []
    sub.poll(lambda r: seen.append(r.position))
    assert seen == list(range(1, 11))  # at-least-once


def test_poison_events_are_retried_then_parked(store: minies.EventStore) -> None:
    fill(store, 5)
    attempts: dict[int, int] = {}
    delivered: list[int] = []

    def handler(record: minies.Recorded) -> None:
        attempts[record.position] = attempts.get(record.position, 0) + 1
        if record.position == 3:
            raise ValueError("cannot send mail")
        delivered.append(record.position)

    sub = store.subscription("mailer", max_attempts=3)
    assert sub.poll(handler) == 5
    assert delivered == [1, 2, 4, 5]
    assert attempts[3] == 3
    (letter,) = sub.dead_letters()
    assert (letter.position, letter.attempts) == (3, 3)
    assert "ValueError: cannot send mail" in letter.error
    assert sub.position == 5
    with pytest.raises(ValueError, match="max_attempts must be an int >= 1, got 0"):
        store.subscription("x", max_attempts=0)


FOLLOWER = """
import sys, minies
with minies.EventStore(sys.argv[1]) as store:
    seen = []
    store.subscription("follower").follow(lambda r: seen.append(r.position), idle_timeout=float(sys.argv[2]))
    print(len(seen), seen == list(range(1, len(seen) + 1)))
"""


def test_follow_sees_another_process_appending(location: str) -> None:
    minies.EventStore(location).close()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    follower = subprocess.Popen(
        [sys.executable, "-c", FOLLOWER, location, "5"], env=env, stdout=subprocess.PIPE, text=True
    )
    with minies.EventStore(location, durability="normal") as store:
        deadline = time.monotonic() + 30
        while not store.query("SELECT 1 FROM minies_subscriptions WHERE name = 'follower'"):
            store.append("warm-up", [MoneyDeposited(amount=0)], aggregate_type="Account")  # until it follows
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # it is idle now, waiting for news from another process
        for i in range(200):
            store.append(f"a{i % 5}", [MoneyDeposited(amount=i)], aggregate_type="Account")
        total = store.query("SELECT count(*) FROM events")[0][0]
    out, _ = follower.communicate(timeout=60)
    assert follower.stdout is not None
    assert out.split() == [str(total), "True"]


def test_follow_wakes_for_same_store_writers_and_stops(store: minies.EventStore) -> None:
    seen: list[int] = []
    stop = threading.Event()

    def consume() -> None:
        store.subscription("live").follow(lambda r: seen.append(r.position), stop=stop)

    thread = threading.Thread(target=consume)
    thread.start()
    for _ in range(20):
        fill(store, 5)
    deadline = time.monotonic() + 30
    while len(seen) < 100:
        assert time.monotonic() < deadline, f"follow delivered {len(seen)} of 100 events in 30 s"
        threading.Event().wait(0.01)
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    assert seen == list(range(1, 101))


def test_follow_never_loses_a_wake_up(store: minies.EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit's wake-up can come while the follower is between its poll and its wait: it
    must still deliver (here every wake-up is lost, and only polling is left)."""
    monkeypatch.setattr(store._tx.changed, "notify_all", lambda: None)
    seen: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: store.subscription("live").follow(lambda r: seen.append(r.position), stop=stop, max_wait=0.05)
    )
    thread.start()
    deadline = time.monotonic() + 30
    try:
        for batch in range(1, 4):
            fill(store, 5)
            while len(seen) < 5 * batch:
                assert time.monotonic() < deadline, f"follow delivered {len(seen)} of {5 * batch} events in 30 s"
                threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and seen == list(range(1, 16))


def test_gap_free_positions_under_concurrent_writers_never_skip(location: str) -> None:
    """The invariant subscriptions and catch-up rely on, checked while 3 processes write."""
    minies.EventStore(location).close()
    writer = (
        "import sys, minies\nfrom domain import MoneyDeposited\n"
        "with minies.EventStore(sys.argv[1], durability='normal') as s:\n"
        "    for i in range(150): s.append(sys.argv[2], [MoneyDeposited(amount=i)] * (1 + i % 3), aggregate_type='A')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    procs = [subprocess.Popen([sys.executable, "-c", writer, location, f"w{w}"], env=env) for w in range(3)]
    seen: list[int] = []
    with minies.EventStore(location) as store:
        sub = store.subscription("checker")
        while any(p.poll() is None for p in procs):
            sub.poll(lambda r: seen.append(r.position))
        sub.poll(lambda r: seen.append(r.position))
        total = store.query("SELECT count(*) FROM events")[0][0]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert total == 3 * sum(1 + i % 3 for i in range(150))
    assert seen == list(range(1, total + 1))


def test_poll_inside_a_transaction_is_refused_so_nothing_that_may_roll_back_is_delivered(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 1)
        sub = store.subscription("mailer")
        seen: list[int] = []
        with pytest.raises(RuntimeError, match="rolled back"), store.transaction():
            fill(store, 1, "b")
            refused = (
                r"^subscription 'mailer' cannot poll inside store\.transaction\(\): it would deliver events"
                r" that may still roll back; poll after the block$"
            )
            with pytest.raises(minies.MiniesError, match=refused):
                sub.poll(lambda r: seen.append(r.position))
            with pytest.raises(minies.MiniesError, match=refused):
                sub.follow(lambda r: seen.append(r.position), idle_timeout=0)
            raise RuntimeError("rolled back")
        assert seen == [] and sub.position == 0
        fill(store, 1, "c")
        assert sub.poll(lambda r: seen.append(r.position)) == 2
        assert seen == [1, 2] and [r.aggregate_id for r in store.read_all()] == ["a", "c"]


def test_a_filtered_subscription_sees_its_types_and_its_checkpoint_passes_the_rest(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 3)
        store.append("o1", [OrderPlaced(customer_id="c", total=1.0)], aggregate_type="Order")
        fill(store, 3)
        seen: list[int] = []
        orders = store.subscription("orders", event_types=[OrderPlaced])
        assert orders.poll(lambda r: seen.append(r.position)) == 1
        assert seen == [4] and orders.position == 7  # the deposits after it were scanned too
        assert orders.poll(lambda r: seen.append(r.position)) == 0 and orders.position == 7
        store.append("o2", [OrderPlaced(customer_id="c", total=2.0)], aggregate_type="Order")
        assert store.subscription("orders", event_types="OrderPlaced").poll(lambda r: seen.append(r.position)) == 1
        assert seen == [4, 8]


def test_dead_letters_can_be_redelivered_discarded_and_the_checkpoint_rewound(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 6)
        broken = {2, 3, 5}

        def handler(record: minies.Recorded) -> None:
            if record.position in broken:
                raise ValueError(f"mail server down for {record.position}")
            seen.append(record.position)

        seen: list[int] = []
        sub = store.subscription("mailer", max_attempts=1)
        assert sub.poll(handler) == 6
        assert [d.position for d in sub.dead_letters()] == [2, 3, 5] and seen == [1, 4, 6]
        broken = {3}  # the server is back, except for one mail
        assert sub.redeliver(handler, 2) == 1 and seen == [1, 4, 6, 2]
        assert sub.redeliver(handler) == 1 and seen == [1, 4, 6, 2, 5]
        (letter,) = sub.dead_letters()
        assert (letter.position, letter.attempts) == (3, 2) and "mail server down for 3" in letter.error
        with pytest.raises(minies.NotFound, match="position 2 is not parked for subscription 'mailer'"):
            sub.redeliver(handler, 2)
        sub.discard(3)
        assert sub.dead_letters() == []
        with pytest.raises(minies.NotFound, match="position 3 is not parked"):
            sub.discard(3)
        sub.rewind(4)
        assert sub.position == 4 and sub.poll(handler) == 2 and seen[-2:] == [5, 6]
        sub.rewind()
        assert sub.position == 0 and sub.poll(handler) == 6
        with pytest.raises(ValueError, match=r"position must be an int from 0 to the head \(6\), got 7"):
            sub.rewind(7)


def test_aggregates_are_listed_without_sql(store: minies.EventStore) -> None:
    fill(store, 2, "acc-2")
    fill(store, 1, "acc-1")
    store.append("o1", [OrderPlaced(customer_id="c", total=1.0)], aggregate_type="Order")
    assert store.aggregates() == [("acc-1", "Account", 1), ("acc-2", "Account", 2), ("o1", "Order", 1)]
    assert store.aggregates("Order") == [("o1", "Order", 1)]
    assert store.aggregates(Account) == [("acc-1", "Account", 1), ("acc-2", "Account", 2)]


def test_subscribers_receive_todays_classes_for_old_payloads(tmp_path: Path) -> None:
    copy = tmp_path / "shop_v1.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "shop_v1.db", copy)
    with todays_upcasters(), minies.EventStore(str(copy)) as store:
        seen: list[object] = []
        assert store.subscription("mailer").poll(lambda r: seen.append(r.data)) == 5  # Ping is dropped
    assert seen == [
        CustomerRegistered(name="Ann"),
        StreetChanged(street="1 Main St"),
        CityChanged(city="Oslo"),
        Ordered(customer_id="cust-1", total=129.99, currency="EUR"),
        Ordered(customer_id="cust-1", total=5.5, currency="EUR"),
    ]


def test_rewind_accepts_exactly_the_positions_of_the_log(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 3)
        sub = store.subscription("s")
        sub.rewind(3)  # the head itself: nothing to redeliver
        assert sub.position == 3 and sub.poll(lambda r: None) == 0
        for bad in (-1, 4, True, "1"):
            with pytest.raises(
                ValueError, match=re.escape(f"position must be an int from 0 to the head (3), got {bad!r}")
            ):
                sub.rewind(bad)  # type: ignore[arg-type]


def test_the_default_is_three_attempts_and_redeliver_counts_every_success(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 3)
        attempts: list[int] = []
        failing = True

        def handler(record: minies.Recorded) -> None:
            attempts.append(record.position)
            if failing:
                raise ValueError("down")

        sub = store.subscription("s")
        assert sub.poll(handler) == 3
        assert attempts == [1, 1, 1, 2, 2, 2, 3, 3, 3]
        failing = False
        assert sub.redeliver(handler) == 3 and sub.dead_letters() == []


def test_a_filtered_subscription_passes_a_log_with_none_of_its_types(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 5)
        orders = store.subscription("orders", event_types=[OrderPlaced])
        assert orders.poll(lambda r: None) == 0
        assert orders.position == 5  # scanned, so the next poll starts after them


def test_polls_and_follows_with_nothing_new_write_nothing(tmp_path: Path) -> None:
    """An idle subscription must not write (flash wear, and other processes' wake-ups)."""
    path = str(tmp_path / "idle.db")
    seen: list[int] = []
    with minies.EventStore(path) as store:
        watcher = sqlite3.connect(path)

        def commits_by_others() -> int:
            return int(watcher.execute("PRAGMA data_version").fetchone()[0])

        sub = store.subscription("idle")
        before = commits_by_others()
        assert sub.poll(seen.append) == 0  # a new subscription on an empty log
        assert commits_by_others() == before
        fill(store, 3)
        assert sub.poll(seen.append) == 3
        delivered = commits_by_others()
        assert delivered != before  # the watcher does see this store's commits
        assert [sub.poll(seen.append) for _ in range(3)] == [0, 0, 0]
        assert sub.follow(seen.append, idle_timeout=0.05) == 0
        assert commits_by_others() == delivered
        watcher.close()


def test_follow_with_no_idle_time_delivers_what_is_there_then_returns(location: str) -> None:
    with minies.EventStore(location) as store:
        fill(store, 4)
        seen: list[int] = []
        assert store.subscription("drain").follow(lambda r: seen.append(r.position), idle_timeout=0) == 4
        assert seen == [1, 2, 3, 4]
        assert store.subscription("drain").follow(lambda r: seen.append(r.position), idle_timeout=0.05) == 0


def test_a_dead_letter_keeps_every_line_of_the_error_including_notes(location: str) -> None:
    def fail(record: minies.Recorded) -> None:
        error = ValueError("boom")
        error.add_note(f"while mailing position {record.position}")
        raise error

    with minies.EventStore(location) as store:
        fill(store, 1)
        sub = store.subscription("mailer", max_attempts=1)
        assert sub.poll(fail) == 1
        [letter] = sub.dead_letters()
        assert (letter.position, letter.attempts, letter.error) == (1, 1, "ValueError: boom\nwhile mailing position 1")
