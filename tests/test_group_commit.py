"""Group commit (``Transactions.grouped``): writers share commits, each keeps its own outcome.

Groups form on a slow disk (``crashdisk`` with a sleep in every sync, as on a laptop's flash),
or behind a commit in flight (the test holds the store's lock while the writers queue). No
test asserts on time; a thread that never returns fails its ``join``.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crashdisk import CrashDisk
from domain import Balances, MoneyDeposited

import minies

WRITERS = 8
EACH = 15


def deposit(amount: int = 1) -> list[minies.Event]:
    return [MoneyDeposited(amount=amount)]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.0005)


def queued_behind_a_commit(store: minies.EventStore, calls: list[Callable[[], object]]) -> list[object]:
    """Each call in a thread of its own, queued in this order while a commit is in flight
    (this thread holds the store's lock), so that one group takes them all: each call's
    result, or the exception it raised."""
    outcomes: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            outcomes[k] = calls[k]()
        except BaseException as e:  # a KeyboardInterrupt is an outcome too
            outcomes[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    with store._tx.lock:
        for k, t in enumerate(threads):
            t.start()
            wait_for(lambda k=k: len(store._tx.queue) == k + 1, f"call {k} queued")
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a writer never returned"
    return outcomes


def test_writers_on_a_slow_disk_share_commits_and_each_gets_its_own_versions(tmp_path: Path) -> None:
    """While one commit's fsync runs, the other writers queue and the next commit takes them
    all (before leader/follower, a commit carried 1.7 writes on average: finished writers
    queued for the store's lock behind the next commit)."""
    with CrashDisk(sync_seconds=0.005), minies.EventStore(str(tmp_path / "slow.db")) as store:
        returned: dict[int, list[int]] = {}
        commits = store._tx.commits

        def writer(n: int) -> None:
            returned[n] = [
                store.append(f"acc-{n}", deposit(v), aggregate_type="Account", expected_version=v) for v in range(EACH)
            ]

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        made = store._tx.commits - commits
        assert returned == {n: list(range(1, EACH + 1)) for n in range(WRITERS)}
        events = list(store.read_all())
        assert [r.position for r in events] == list(range(1, WRITERS * EACH + 1))
        assert all([r.data.amount for r in store.read(f"acc-{n}")] == list(range(EACH)) for n in range(WRITERS))
        assert made * 3 <= WRITERS * EACH, f"{WRITERS * EACH} writes took {made} commits: they hardly shared them"
        assert store.verify().ok


def test_a_failing_member_fails_alone_and_the_others_share_one_commit(location: str) -> None:
    with minies.EventStore(location) as store:
        ids = [str(uuid.uuid4())]
        store.append("taken", deposit(), aggregate_type="Account", event_ids=ids)
        commits = store._tx.commits
        outcomes = queued_behind_a_commit(
            store,
            [
                lambda: store.append("a", deposit(), aggregate_type="Account"),
                lambda: store.append("b", deposit(), aggregate_type="Account", expected_version=5),
                lambda: store.append("c", deposit(), aggregate_type="Account"),
                lambda: store.append("d", deposit(2), aggregate_type="Account", event_ids=ids),
                lambda: store.append("e", deposit(), aggregate_type="Account"),
            ],
        )
        assert outcomes[0] == 1 and outcomes[2] == 1 and outcomes[4] == 1
        assert isinstance(outcomes[1], minies.ConcurrencyError) and str(outcomes[1]).startswith(
            "aggregate 'b' is at version 0, expected 5;"
        )
        assert isinstance(outcomes[3], minies.DuplicateEventError) and outcomes[3].event_id == ids[0]
        assert store._tx.commits == commits + 1  # one transaction for the five
        assert [r.aggregate_id for r in store.read_all()] == ["taken", "a", "c", "e"]
        assert store.verify().ok


def failing_sync(disk: CrashDisk, store: minies.EventStore) -> None:
    disk.fail = ("store.db-wal", "sync", 1)


def failing_hook(disk: CrashDisk, store: minies.EventStore) -> None:
    store._conn.set_commit_hook(lambda: True)  # SQLite turns the commit into a rollback


@pytest.mark.parametrize("inject", [failing_sync, failing_hook])
def test_a_failed_commit_fails_every_write_in_the_group_and_stores_none(
    tmp_path: Path, inject: Callable[[CrashDisk, minies.EventStore], None]
) -> None:
    with CrashDisk() as disk, minies.EventStore(str(tmp_path / "store.db")) as store:
        store.append("before", deposit(), aggregate_type="Account")
        commits = store._tx.commits
        calls = [lambda n=n: store.append(f"a{n}", deposit(), aggregate_type="Account") for n in range(6)]
        inject(disk, store)  # the next commit fails: the group's
        outcomes = queued_behind_a_commit(store, calls)
        store._conn.set_commit_hook(None)
        assert all(isinstance(e, minies.StorageError) for e in outcomes), outcomes
        assert len({str(e) for e in outcomes}) == 1 and str(outcomes[0]).startswith("cannot commit")
        assert store._tx.commits == commits
        assert [r.aggregate_id for r in store.read_all()] == ["before"]  # none of them was written
        assert store.append("a0", deposit(), aggregate_type="Account", expected_version=0) == 1
    with minies.EventStore(str(tmp_path / "store.db")) as store:  # and none reached the file
        assert [r.aggregate_id for r in store.read_all()] == ["before", "a0"] and store.verify().ok


class Stalling(minies.Projection):
    """The projection of an amount of 13 waits for ``go``, then is interrupted (Ctrl-C)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE amounts (amount INTEGER)")

    def on_MoneyDeposited(self, db: minies.Database, event: minies.Recorded) -> None:
        if event.data.amount == 13:
            self.reached.set()
            assert self.go.wait(30)
            raise KeyboardInterrupt
        db.execute("INSERT INTO amounts VALUES (?)", (event.data.amount,))


def test_an_interrupted_group_fails_every_write_in_it_and_tells_them_nothing_was_written(tmp_path: Path) -> None:
    stalling = Stalling()
    stalling.go.set()
    with minies.EventStore(str(tmp_path / "store.db"), projections=[stalling]) as store:
        outcomes = queued_behind_a_commit(
            store,
            [
                lambda amount=amount: store.append(f"a{amount}", deposit(amount), aggregate_type="Account")
                for amount in (1, 13, 2)
            ],
        )
        assert isinstance(outcomes[0], KeyboardInterrupt)  # the leader's thread ran the 13 and was interrupted
        assert all(
            isinstance(e, minies.StorageError)
            and str(e) == "the group commit was interrupted; nothing from this call was written"
            for e in outcomes[1:]
        ), outcomes
        assert list(store.read_all()) == [] and store.query("SELECT * FROM amounts") == []
        assert not store._tx.leading and not store._tx.queue
        assert store.append("after", deposit(), aggregate_type="Account") == 1


def test_an_interrupted_leader_hands_the_lead_to_the_writes_queued_behind_it(tmp_path: Path) -> None:
    """The writes that queued while the leader's group ran are committed by a next leader,
    however the leader's group ended: nobody waits forever."""
    stalling = Stalling()
    with minies.EventStore(str(tmp_path / "store.db"), projections=[stalling]) as store:
        outcomes: dict[str, Any] = {}

        def append(aggregate: str, amount: int) -> None:
            try:
                outcomes[aggregate] = store.append(aggregate, deposit(amount), aggregate_type="Account")
            except BaseException as e:
                outcomes[aggregate] = e

        leader = threading.Thread(target=append, args=("lead", 13))
        leader.start()
        assert stalling.reached.wait(30)  # the leader's group is running
        followers = [threading.Thread(target=append, args=(f"f{n}", n + 1)) for n in range(4)]
        for t in followers:
            t.start()
        wait_for(lambda: len(store._tx.queue) == 4, "four writes queued behind the leader")
        stalling.go.set()
        for t in [leader, *followers]:
            t.join(30)
            assert not t.is_alive(), "a writer never returned"
        assert isinstance(outcomes.pop("lead"), KeyboardInterrupt)
        assert outcomes == {f"f{n}": 1 for n in range(4)}
        assert sorted(r.aggregate_id for r in store.read_all()) == ["f0", "f1", "f2", "f3"]
        assert not store._tx.leading and not store._tx.queue


def test_a_follower_interrupted_while_it_waits_is_not_written_and_the_group_goes_on(tmp_path: Path) -> None:
    """Ctrl-C in a thread whose write is still queued: it leaves the queue (nothing written),
    and the leader waiting for the store's lock still commits its own."""
    with minies.EventStore(str(tmp_path / "store.db")) as store:
        outcome: dict[str, object] = {}
        main = threading.get_ident()
        leader = threading.Thread(
            target=lambda: outcome.update(lead=store.append("lead", deposit(), aggregate_type="Account"))
        )

        def interrupt_the_main_thread() -> None:
            wait_for(lambda: len(store._tx.queue) == 2, "the main thread's write queued behind the leader")
            signal.pthread_kill(main, signal.SIGINT)

        with store._tx.lock:  # a commit in flight: the leader waits for the lock, this thread follows
            leader.start()
            wait_for(lambda: len(store._tx.queue) == 1, "the leader's write queued")
            interrupter = threading.Thread(target=interrupt_the_main_thread)
            interrupter.start()
            with pytest.raises(KeyboardInterrupt):
                store.append("follower", deposit(), aggregate_type="Account")
            assert len(store._tx.queue) == 1  # only the leader's write is left
        leader.join(30)
        interrupter.join(30)
        assert not leader.is_alive() and outcome == {"lead": 1}
        assert [r.aggregate_id for r in store.read_all()] == ["lead"]
        assert store.append("follower", deposit(), aggregate_type="Account") == 1


def test_contending_writers_in_large_groups_keep_exactly_their_acknowledged_appends(tmp_path: Path) -> None:
    """A history: eight threads on a slow disk race for one shared aggregate (read its
    version, append expecting it, retry on a conflict), so most groups hold several appends
    that expect the same version. Every acknowledged append is stored at the version it was
    told, every refused one is absent, and nothing else is there."""
    with CrashDisk(sync_seconds=0.003), minies.EventStore(str(tmp_path / "race.db"), projections=[Balances()]) as store:
        acknowledged: list[tuple[str, int]] = []  # (event id, version returned)
        refused: list[str] = []
        commits = store._tx.commits

        def racer() -> None:
            for _ in range(6):
                while True:
                    seen = store.version("shared")
                    event_id = str(uuid.uuid4())
                    try:
                        version = store.append(
                            "shared", deposit(), aggregate_type="Account", expected_version=seen, event_ids=[event_id]
                        )
                    except minies.ConcurrencyError:
                        refused.append(event_id)
                        continue
                    acknowledged.append((event_id, version))
                    break

        threads = [threading.Thread(target=racer) for _ in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        stored = {r.event_id: r.version for r in store.read("shared")}
        assert stored == dict(acknowledged) and sorted(stored.values()) == list(range(1, WRITERS * 6 + 1))
        assert not stored.keys() & set(refused) and refused  # the race happened, and lost nothing
        assert store._tx.commits - commits < len(acknowledged) + len(refused)  # refused ones shared commits too
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        store.rebuild("Balances")
        assert store.query("SELECT * FROM balances ORDER BY account_id") == live and store.verify().ok
