"""Reads that return more than one fact take them from one view of the log, and the
consumers' exactly-once holds with several of them at once (one actor at a time cannot show
either: each test here puts a second writer inside the first one's operation)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
from domain import MoneyDeposited

import minies


class Counted(minies.Aggregate):
    """Every event adds one, and the first applied makes another store append (a writer that
    commits while this load is reading)."""

    aggregate_type: ClassVar[str] = "Counted"
    snapshot_every: ClassVar[int | None] = None
    balance: int = 0
    intruder: ClassVar[minies.EventStore | None] = None

    def apply(self, event: minies.Event) -> None:
        self.balance += 1
        if Counted.intruder is not None:
            other, Counted.intruder = Counted.intruder, None
            other.append(self.id, [MoneyDeposited(amount=1)], aggregate_type="Counted")


@pytest.fixture(params=["per-record", "chunked"])
def read_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The two ways a load reads: through the records (upcasters or personal fields exist)
    and through SQLite-assembled chunks."""
    request.getfixturevalue("upcasting_on" if request.param == "per-record" else "no_upcasting")
    yield request.param


def test_a_load_reports_the_version_it_applied_while_another_writer_appends(location: str, read_path: str) -> None:
    with minies.EventStore(location) as store, minies.EventStore(location) as other:
        store.append("c", [MoneyDeposited(amount=1)] * 3, aggregate_type="Counted")
        Counted.intruder = other
        loaded = store.load(Counted, "c")
        assert Counted.intruder is None  # the other writer did append, during the load
        assert store.version("c") == 4
        assert (loaded.version, loaded.balance) == (3, 3)
        # and a save built on that load is refused: it did not see event 4
        loaded.record(MoneyDeposited(amount=1))
        with pytest.raises(minies.ConcurrencyError):
            store.save(loaded)
        assert store.load(Counted, "c").balance == 4


def test_a_fold_reports_the_version_it_applied_while_another_writer_appends(location: str, read_path: str) -> None:
    with minies.EventStore(location) as store, minies.EventStore(location) as other:
        store.append("c", [MoneyDeposited(amount=1)] * 2, aggregate_type="Counted")
        intruded = []

        def evolve(total: int, event: minies.Event) -> int:
            if not intruded:
                intruded.append(other.append("c", [MoneyDeposited(amount=1)], aggregate_type="Counted"))
            return total + 1

        assert store.fold("c", evolve, 0) == (2, 2)
        assert intruded == [3]


# ------------------------------------------------------------------ snapshots are never trusted more than the log


def _forge_snapshot(store: minies.EventStore, db_path: str | None) -> None:
    """Edit the newest snapshot's balance outside minies (no trigger guards the table)."""
    if db_path is None:  # PostgreSQL: the owner's own session
        import psycopg

        dsn, schema = store.path.split("?schema=")
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                f"UPDATE {schema}.minies_snapshots SET state = replace(state::text, '\"balance\":40', '\"balance\":1000000')::json"
            )
        return
    import sqlite3

    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE minies_snapshots SET state = replace(state, '\"balance\":40', '\"balance\":1000000')")


def test_verify_with_snapshots_replays_each_snapshot_and_names_a_forged_one(location: str, no_upcasting: None) -> None:
    from domain import Account, AccountOpened, SnappedAccount

    with minies.EventStore(location) as store:
        account = SnappedAccount(id="acc-1")
        account.record(AccountOpened(owner="ann", balance=1))
        for _ in range(39):
            account.record(MoneyDeposited(amount=1))
        store.save(account)  # a snapshot at version 40, balance 40
        assert [(t, n) for t, n, _ in store.snapshot_stats()] == [("Account", 1)]
        clean = store.verify(snapshots=True)
        assert (clean.ok, clean.snapshots_checked, clean.snapshots_unchecked) == (True, 1, 0)
        assert store.verify().snapshots_checked == 0  # a plain verify does not look at them

        _forge_snapshot(store, None if location.startswith("postgres") else location)
        assert store.load(SnappedAccount, "acc-1").balance == 1_000_000  # load trusts the snapshot...
        assert store.verify().ok  # ...and the chain is intact: only the snapshot check sees it
        report = store.verify(snapshots=True)
        assert not report.ok
        assert report.reason.startswith("the snapshot of aggregate 'acc-1' at version 40 differs from a replay")
        assert store.load(Account, "acc-1").balance == 40


def test_minies_verify_snapshots_imports_the_classes_and_fails_on_a_forged_snapshot(db_path: str) -> None:
    from conftest import run_python

    run_python(
        "import sys, minies; from domain import AccountOpened, MoneyDeposited, SnappedAccount\n"
        "a = SnappedAccount(id='acc-1'); a.record(AccountOpened(owner='ann', balance=1))\n"
        "[a.record(MoneyDeposited(amount=1)) for _ in range(39)]\n"
        "with minies.EventStore(sys.argv[1]) as s: s.save(a)",
        db_path,
    )
    verify = "import sys; from minies._cli import main; sys.exit(main(sys.argv[1:]))"
    unimported = run_python(verify, "verify", db_path, "--snapshots")
    assert (
        "snapshots: 0 equal to a replay; 1 not checked: no class imported (pass --import MODULE)" in unimported.stdout
    )
    ok = run_python(verify, "verify", db_path, "--snapshots", "--import", "domain")
    assert "snapshots: 1 equal to a replay\n" in ok.stdout
    _forge_snapshot(None, db_path)  # type: ignore[arg-type]
    forged = run_python(verify, "verify", db_path, "--snapshots", "--import", "domain", check=False)
    assert forged.returncode == 1
    assert "NOT OK: the snapshot of aggregate 'acc-1' at version 40 differs from a replay" in forged.stdout
    assert run_python(verify, "verify", db_path, check=False).returncode == 0


def test_verify_reads_one_view_of_the_log_while_another_store_appends(location: str) -> None:
    import threading

    with minies.EventStore(location) as store, minies.EventStore(location) as other:
        for k in range(5):
            store.append(f"a{k}", [MoneyDeposited(amount=1)] * 4000, aggregate_type="Account")
        stop = threading.Event()

        def append() -> None:
            while not stop.is_set():
                other.append("busy", [MoneyDeposited(amount=1)] * 50, aggregate_type="Account")

        writer = threading.Thread(target=append)
        writer.start()
        try:
            seen: list[tuple[int, int]] = []
            report = store.verify(progress=lambda done, total: seen.append((done, total)))
        finally:
            stop.set()
            writer.join()
        assert report.ok
        totals = {total for _, total in seen}
        assert len(totals) == 1 and all(done <= total for done, total in seen), seen[-3:]
        assert report.events_checked == report.head_position == totals.pop()
        assert store.head()[0] > report.head_position  # the other store did append meanwhile


def test_postgres_at_normal_durability_a_crash_can_reuse_positions_an_outside_follower_saw(tmp_path: object) -> None:
    """What the README tells an outside follower to do: keep the event id of the last position
    it handled, and on resume check that the log still holds it there."""
    import pgserver

    crash: list[Callable[[], None]] = []
    settings = "-c wal_writer_delay=10000 -c wal_writer_flush_after=0 -c checkpoint_timeout=3600"
    with contextlib.ExitStack() as server:
        try:
            dsn = server.enter_context(pgserver.cluster(settings=settings, restart=crash))
        except RuntimeError as e:
            if os.environ.get("MINIES_REQUIRE_POSTGRES") == "1":
                pytest.fail(str(e))
            pytest.skip(str(e))
        url = f"{dsn}?schema=reuse"
        with minies.EventStore(url, durability="full") as store:  # a durable start
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        with minies.EventStore(url, durability="normal") as store:
            store.append("a", [MoneyDeposited(amount=2)] * 3, aggregate_type="Account")
            seen = [(r.position, r.event_id) for r in store.read_all()]  # an outside follower's view
        assert [p for p, _ in seen] == [1, 2, 3, 4]
        crash[0]()  # the server crashes before its WAL writer flushed the last commits
        with minies.EventStore(url, durability="full") as store:
            lost = store.head()[0]
            assert lost < 4  # the acknowledged tail is gone (documented for "normal")
            store.append("b", [MoneyDeposited(amount=9)] * (5 - lost), aggregate_type="Account")
            # the positions the follower saw now hold other events: the documented check finds it
            position, event_id = seen[-1]
            (now,) = store.read_all(after=position - 1, limit=1)
            assert now.event_id != event_id
            resume = max(p for p, i in seen if next(iter(store.read_all(after=p - 1, limit=1))).event_id == i)
            assert resume == lost
            assert store.verify().ok
