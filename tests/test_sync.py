"""Local-first sync: devices that write offline, a hub that orders, origins that prove it.

Each promise of ``EventStore.sync`` on its own, on real files (and a PostgreSQL hub): the
recorded histories with five devices, kills and power cuts are in test_sync_histories.py.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from conftest import run_python

import minies
from minies import _sync
from minies._backends import sqlite_sql


class Opened(minies.Event):
    event_type: ClassVar[str] = "sync.Opened"
    owner: str


class Deposited(minies.Event):
    event_type: ClassVar[str] = "sync.Deposited"
    amount: int


class Renamed(minies.Event):
    event_type: ClassVar[str] = "sync.Renamed"
    owner: str


class Signed(minies.Event):
    event_type: ClassVar[str] = "sync.Signed"
    data_subject: ClassVar[str] = "person"
    person: str
    email: minies.Personal[str] = ""


class Account(minies.Aggregate):
    snapshot_every: ClassVar[int | None] = 2
    owner: str = ""
    balance: int = 0

    def apply(self, event: minies.Event) -> None:
        match event:
            case Opened(owner=owner) | Renamed(owner=owner):
                self.owner = owner
            case Deposited(amount=amount):
                self.balance += amount


class Balances(minies.Projection):
    name = "balances"

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE balances (id TEXT PRIMARY KEY, owner TEXT, balance INTEGER NOT NULL)")
        db.execute("CREATE TABLE ledger (amount INTEGER)")  # no primary key: a rowid table

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        match event.data:
            case Opened(owner=owner):
                db.execute("INSERT INTO balances VALUES (?, ?, 0)", (event.aggregate_id, owner))
            case Renamed(owner=owner):
                db.execute("UPDATE balances SET owner = ? WHERE id = ?", (owner, event.aggregate_id))
            case Deposited(amount=amount):
                db.execute("UPDATE balances SET balance = balance + ? WHERE id = ?", (amount, event.aggregate_id))
                db.execute("INSERT INTO ledger VALUES (?)", (amount,))


READ_MODEL = "SELECT id, owner, balance FROM balances ORDER BY id"
LEDGER = "SELECT count(*), coalesce(sum(amount), 0) FROM ledger"


@pytest.fixture(params=["file", "postgres"])
def hub_at(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return str(tmp_path / "hub.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def hub(hub_at: str) -> Iterator[minies.EventStore]:
    with minies.EventStore(hub_at, projections=[Balances()]) as store:
        yield store


def device(tmp_path: Path, name: str, **options: Any) -> minies.EventStore:
    return minies.EventStore(tmp_path / f"{name}.db", device=name, projections=[Balances()], **options)


def deposit(store: minies.EventStore, account: str, amount: int) -> int:
    acct = store.load(Account, account)
    acct.record(Deposited(amount=amount))
    return store.save(acct)


def rebuilt(store: minies.EventStore, tmp_path: Path, name: str) -> list[Any]:
    """The read model a fresh store builds from this device's confirmed log."""
    minies.copy(store.path, tmp_path / f"{name}-rebuilt.db")
    with minies.EventStore(tmp_path / f"{name}-rebuilt.db", projections=[Balances()]) as fresh:
        return fresh.query(READ_MODEL)


def conflicting(tmp_path: Path, hub: minies.EventStore) -> tuple[minies.EventStore, minies.EventStore]:
    """Two devices that both deposited to one account while apart; a's deposit reached the hub
    first, so b's (7, expecting version 1) conflicts with it (5, now version 2)."""
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    a.append("acc", [Opened(owner="ann")], aggregate_type="Account", expected_version=0)
    a.sync(hub), b.sync(hub)
    deposit(a, "acc", 5)
    deposit(b, "acc", 7)
    a.sync(hub)
    return a, b


# ---------------------------------------------------------------------------- offline
def test_a_device_writes_offline_and_reads_its_pending_events_back(tmp_path: Path) -> None:
    with device(tmp_path, "pos-1") as pos:
        pos.append("a1", [Opened(owner="ann")], aggregate_type="Account", expected_version=0)
        assert deposit(pos, "a1", 5) == 2
        assert pos.version("a1") == 2
        assert pos.load(Account, "a1").balance == 5
        assert [r.version for r in pos.read("a1")] == [1, 2]
        assert pos.query(READ_MODEL) == [("a1", "ann", 5)]
        # the log as history (read_all, head, subscriptions) holds only what a hub placed
        assert list(pos.read_all()) == [] and pos.head() == (0, "")
        assert [type(r.data) for r in pos.pending()] == [Opened, Deposited]
        with pytest.raises(minies.ConcurrencyError):
            pos.append("a1", [Deposited(amount=1)], aggregate_type="Account", expected_version=1)
        assert pos.snapshot_stats() == []  # never a snapshot of what the hub may reject


def test_a_device_keeps_its_id_and_a_plain_store_is_not_one(tmp_path: Path) -> None:
    device(tmp_path, "pos-1").close()
    with minies.EventStore(tmp_path / "pos-1.db") as again:
        assert again._device is not None and again._device.id == "pos-1"
    with pytest.raises(minies.SyncError, match="is device 'pos-1', not 'pos-2'"):
        minies.EventStore(tmp_path / "pos-1.db", device="pos-2")
    with minies.EventStore(tmp_path / "plain.db") as plain, pytest.raises(minies.SyncError, match="not a device"):
        plain.sync(tmp_path / "pos-1.db")
    with pytest.raises(ValueError, match="a device id"):
        minies.EventStore(tmp_path / "x.db", device="")


# ---------------------------------------------------------------------------- one order
def test_after_a_sync_each_device_holds_the_hub_s_log_byte_for_byte(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    a.append("a1", [Opened(owner="ann")], aggregate_type="Account", expected_version=0)
    b.append("b1", [Opened(owner="bob")], aggregate_type="Account", expected_version=0)
    deposit(b, "b1", 3)
    report = a.sync(hub)
    assert (report.pushed, report.placed, report.rejected, report.pulled, report.pending) == (1, 1, 0, 1, 0)
    b.sync(hub)
    a.sync(hub)
    head = hub.head()
    assert a.head() == b.head() == head == (3, head[1])
    for d in (a, b):
        assert d.verify(expect_head=f"{head[0]} {head[1]}").ok
        assert d.pending() == []
        assert d.query(READ_MODEL) == hub.query(READ_MODEL) == [("a1", "ann", 0), ("b1", "bob", 3)]
    a.close(), b.close()
    if not hub.path.startswith("postgres"):  # the stock sqlite3 module reads the same rows
        columns = "position, event_id, aggregate_id, version, data, metadata, created_at, hash"
        rows = [
            sqlite3.connect(p).execute(f"SELECT {columns} FROM events").fetchall()
            for p in (hub.path, tmp_path / "a.db", tmp_path / "b.db")
        ]
        assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 3
    placed = [r for r in hub.read_all() if r.aggregate_id == "b1"]
    assert [r.metadata["minies.origin"]["device"] for r in placed] == ["b", "b"]
    assert [r.metadata["minies.origin"]["seq"] for r in placed] == [1, 2]


def test_a_sync_with_nothing_new_is_one_round_trip(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a:
        a.append("a1", [Opened(owner="ann")], aggregate_type="Account")
        a.sync(hub)
        report = a.sync(hub)
        assert (report.round_trips, report.pushed, report.pulled) == (1, 0, 0)


def test_a_long_log_comes_down_in_several_round_trips(tmp_path: Path, hub: minies.EventStore) -> None:
    for k in range(25):
        hub.append(f"h{k}", [Opened(owner="hub")], aggregate_type="Account")
    with device(tmp_path, "a") as a, pytest.MonkeyPatch.context() as patch:
        push = minies._device.Device.push
        patch.setattr(minies._device.Device, "push", lambda self, accepting: push(self, accepting, limit=10))
        report = a.sync(hub)
        assert (report.round_trips, report.pulled) == (3, 25)
        assert a.head() == hub.head()


# ---------------------------------------------------------------------------- conflicts
def test_a_conflict_is_rejected_recorded_and_the_device_told(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    a.append("acc", [Opened(owner="ann")], aggregate_type="Account", expected_version=0)
    a.sync(hub), b.sync(hub)
    deposit(a, "acc", 5)
    deposit(b, "acc", 7)  # b has not seen a's deposit
    a.append("acc", [Renamed(owner="ann2")], aggregate_type="Account", expected_version=2)
    assert b.query(READ_MODEL) == [("acc", "ann", 7)]  # optimistic
    a.sync(hub)
    told: list[minies.Recorded] = []
    report = b.sync(hub, rejected=told.append)
    assert (report.placed, report.rejected) == (0, 1)
    (rejection,) = told
    assert rejection.data.device == "b" and rejection.data.seq == 1 and rejection.data.rejected_type == "sync.Deposited"
    assert "at version 3 on the hub; the device expected 1" in rejection.data.reason
    assert msgspec.json.decode(rejection.data.data) == {"amount": 7}  # nothing dropped silently
    assert b.rejections() == told and hub.rejections() == told and a.sync(hub) and a.rejections() == []
    # b's read model is the hub's again: its optimistic deposit undone, a's applied
    assert b.query(READ_MODEL) == hub.query(READ_MODEL) == [("acc", "ann2", 5)] == rebuilt(b, tmp_path, "b")
    assert b.query(LEDGER) == (hub.query(LEDGER)) == [(1, 5)]
    assert b.load(Account, "acc").balance == 5 and b.version("acc") == 3
    assert hub.verify(origins=True).devices == 2
    a.close(), b.close()


def test_an_event_built_on_a_rejected_one_is_rejected_too(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    a.append("acc", [Opened(owner="ann")], aggregate_type="Account", expected_version=0)
    a.sync(hub), b.sync(hub)
    deposit(a, "acc", 5)
    deposit(b, "acc", 7)  # v2 on b: conflicts with a's v2
    deposit(b, "acc", 1)  # v3 on b, built on its v2: expects 2, and the hub's v2 is a's (unseen by b)
    a.sync(hub)
    report = b.sync(hub)
    assert (report.placed, report.rejected) == (0, 2)
    assert b.query(READ_MODEL) == [("acc", "ann", 5)]
    a.close(), b.close()


def test_accept_places_commuting_events_after_the_others(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = conflicting(tmp_path, hub)
    report = b.sync(hub, conflicts={"Account": "accept"})
    assert (report.placed, report.rejected) == (1, 0)
    assert b.query(READ_MODEL) == hub.query(READ_MODEL) == [("acc", "ann", 12)]
    assert [r.version for r in hub.read("acc")] == [1, 2, 3]
    a.close(), b.close()


def test_retry_redoes_the_command_on_the_new_state_in_the_same_sync(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = conflicting(tmp_path, hub)
    seen: list[int] = []

    def again(store: minies.EventStore, rejection: minies.Recorded) -> None:
        amount = msgspec.json.decode(rejection.data.data)["amount"]
        seen.append(store.load(Account, rejection.data.aggregate_id).balance)  # the new state
        deposit(store, rejection.data.aggregate_id, amount)

    report = b.sync(hub, conflicts={"Account": again})
    assert (report.rejected, report.retried, report.pending, report.round_trips) == (1, 1, 0, 2)
    assert seen == [5]
    assert b.query(READ_MODEL) == hub.query(READ_MODEL) == [("acc", "ann", 12)]
    assert len(hub.rejections()) == 1  # the first try stays on record
    assert hub.verify(origins=True).ok
    a.close(), b.close()


def test_a_policy_is_reject_accept_or_a_function(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a, pytest.raises(ValueError, match="must be 'reject', 'accept' or a function"):
        a.sync(hub, conflicts={"Account": "merge"})


# ---------------------------------------------------------------------------- bundles
def test_bundles_go_out_and_come_back_and_twice_changes_nothing(tmp_path: Path) -> None:
    hub_path = tmp_path / "hub.db"
    minies.EventStore(hub_path).close()
    with device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        _sync.export_push(a, tmp_path / "push")
        with minies.EventStore(hub_path) as hub:
            first = _sync.answer_bundle(hub, tmp_path / "push", tmp_path / "reply")
            again = _sync.answer_bundle(hub, tmp_path / "push", tmp_path / "reply2")  # a replayed bundle
            assert (first.placed, again.placed, hub.head()[0]) == (1, 0, 1)
        deposit(a, "acc", 5)  # written after the push went out: stays pending on top
        _sync.import_reply(a, tmp_path / "reply")
        _sync.import_reply(a, tmp_path / "reply2")
        assert a.head()[0] == 1 and [type(r.data) for r in a.pending()] == [Deposited]
        assert a.query(READ_MODEL) == [("acc", "ann", 5)] and a.version("acc") == 2
        assert a.verify(origins=True).ok
        with minies.EventStore(hub_path) as hub:
            a.sync(hub)
            assert a.head() == hub.head() and hub.query("SELECT 1") == [(1,)]


def test_a_tampered_push_is_refused_whole_and_nothing_is_written(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a:
        for k in range(3):
            a.append(f"acc{k}", [Opened(owner=f"o{k}")], aggregate_type="Account")
        push = a._device.push()  # type: ignore[union-attr]
    p = push.pending
    altered = msgspec.structs.replace(p[1], data='{"owner":"mallory"}')
    forged = [
        (msgspec.structs.replace(push, pending=[p[0], altered, p[2]]), "not the one it wrote"),
        (msgspec.structs.replace(push, pending=[p[0], p[2]]), "out of sequence: 3 after 1"),
        (msgspec.structs.replace(push, pending=[p[1], p[0], p[2]]), "out of sequence: 2 after 0"),
        (msgspec.structs.replace(push, device="b"), "not the one it wrote"),  # another device's origin
    ]
    for bad, message in forged:
        with pytest.raises(minies.SyncError, match=message):
            minies._hub.exchange(hub, bad)
        assert hub.head() == (0, "")
    minies._hub.exchange(hub, push)
    replayed = msgspec.structs.replace(push, pending=[p[0], altered])
    with pytest.raises(minies.SyncError, match="differs from the one the hub settled"):
        minies._hub.exchange(hub, replayed)
    assert hub.head()[0] == 3


def test_a_damaged_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        _sync.export_push(a, tmp_path / "push")
    raw = (tmp_path / "push").read_bytes()
    (tmp_path / "cut").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "other").write_bytes(b"hello")
    with minies.EventStore(tmp_path / "hub.db") as hub:
        with pytest.raises(minies.MiniesError, match="damaged or cut short"):
            _sync.answer_bundle(hub, tmp_path / "cut", tmp_path / "reply")
        with pytest.raises(minies.MiniesError, match="not a minies sync bundle"):
            _sync.answer_bundle(hub, tmp_path / "other", tmp_path / "reply")
        assert hub.head() == (0, "")


def test_a_device_that_diverged_is_refused(tmp_path: Path) -> None:
    with minies.EventStore(tmp_path / "hub1.db") as one, minies.EventStore(tmp_path / "hub2.db") as two:
        one.append("x", [Opened(owner="1")], aggregate_type="Account")
        two.append("y", [Opened(owner="2")], aggregate_type="Account")
        with device(tmp_path, "a") as a:
            a.sync(one)
            with pytest.raises(minies.SyncError, match="diverged"):
                a.sync(two)


# ---------------------------------------------------------------------------- provenance
def test_verify_origins_catches_what_a_rechained_forgery_hides(tmp_path: Path) -> None:
    hub_path = tmp_path / "hub.db"
    with minies.EventStore(hub_path) as hub, device(tmp_path, "a") as a:
        for k in range(3):
            a.append(f"acc{k}", [Opened(owner=f"o{k}")], aggregate_type="Account")
        a.sync(hub)
        assert hub.verify(origins=True).ok
    forger = sqlite3.connect(hub_path)
    forger.execute("DROP TRIGGER events_no_update")
    forger.execute('UPDATE events SET data = \'{"owner":"mallory"}\' WHERE position = 2')
    _rechain(forger)
    forger.execute(sqlite_sql.NO_UPDATE)  # every guard back in place
    forger.commit()
    forger.close()
    with minies.EventStore(hub_path, readonly=True) as hub:
        assert hub.verify().ok  # the main chain was recomputed: it cannot tell
        report = hub.verify(origins=True)
        assert not report.ok and report.first_bad_position == 2
        assert "device 'a': event 2 differs from what it wrote" in report.reason


def _rechain(conn: sqlite3.Connection) -> None:
    from minies import _audit

    previous = _audit.GENESIS
    rows = conn.execute(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at,"
        " schema_version FROM events ORDER BY position"
    ).fetchall()
    for position, i, a, at, t, v, d, m, c, s in rows:
        (previous,) = _audit.chain_batch(previous, position, [i], a, at, [t], v, [d], m, c, [s])
        conn.execute("UPDATE events SET hash = ? WHERE position = ?", (previous, position))


def test_verify_origins_on_a_device_checks_its_pending_tail(tmp_path: Path) -> None:
    with device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        deposit(a, "acc", 1)
        assert a.verify(origins=True).ok
    with sqlite3.connect(tmp_path / "a.db") as conn:  # a pending event edited
        conn.execute("UPDATE minies_pending SET data = '{\"amount\":500}' WHERE seq = 2")
    with minies.EventStore(tmp_path / "a.db") as a:
        assert "pending event 2 differs from what it wrote" in a.verify(origins=True).reason
        with minies.EventStore(tmp_path / "hub0.db") as hub, pytest.raises(minies.SyncError, match="not the one"):
            a.sync(hub)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM minies_pending WHERE seq = 1")  # a pending event lost
    with minies.EventStore(tmp_path / "a.db") as a:
        report = a.verify(origins=True)
        assert not report.ok and "pending event 2 does not follow 0" in report.reason
        with minies.EventStore(tmp_path / "hub.db") as hub, pytest.raises(minies.SyncError, match="out of sequence"):
            a.sync(hub)


# ---------------------------------------------------------------------------- the rest keeps working
def test_an_erasure_travels_both_ways(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    a.append("p1", [Signed(person="ann", email="ann@example.com")], aggregate_type="Person")
    b.append("p2", [Signed(person="bob", email="bob@example.com")], aggregate_type="Person")
    a.sync(hub), b.sync(hub), a.sync(hub)
    assert [r.data.email for r in a.read("p2")] == ["bob@example.com"]  # b's key travelled
    hub.forget("ann")  # on the hub: reaches every device on its next pull
    b.forget("bob")  # on a device: reaches the hub
    assert [r.data.email for r in b.read("p2")] == [""]  # at once, on the device that forgot
    b.sync(hub), a.sync(hub)
    for store in (hub, a, b):
        assert [r.data.email for r in store.read("p1")] == [""]
        assert [r.data.email for r in store.read("p2")] == [""]
    assert a.head() == b.head() == hub.head() and hub.verify(origins=True).ok
    a.close(), b.close()
    for name in ("a", "b"):  # the bytes left the device files too
        raw = b"".join(
            Path(f"{tmp_path}/{name}.db{s}").read_bytes()
            for s in ("", "-wal")
            if os.path.exists(f"{tmp_path}/{name}.db{s}")
        )
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            assert conn.execute("SELECT count(*) FROM minies_keys WHERE key IS NOT NULL").fetchone() == (0,)
        assert raw.count(b"bob@example.com") == 0


def test_a_device_with_older_code_stores_newer_events_and_refuses_to_read_them(
    tmp_path: Path, hub: minies.EventStore
) -> None:
    run_python(
        "import sys, minies\n"
        "class Closed(minies.Event):\n    reason: str\n"
        "with minies.EventStore(sys.argv[1]) as hub:\n"
        "    hub.append('acc', [Closed(reason='moved')], aggregate_type='Account')\n",
        hub.path,
    )
    with device(tmp_path, "old") as old:
        assert old.sync(hub).pulled == 1
        assert [r.data for r in old.read("acc")] == [{"reason": "moved"}]
        with pytest.raises(minies.SchemaError, match="Closed"):
            old.load(Account, "acc")


def test_subscriptions_on_a_device_see_confirmed_events_only_once(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a:
        seen: list[str] = []
        subscription = a.subscription("mail")
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        subscription.poll(lambda r: seen.append(r.event_id))
        assert seen == []  # pending: the hub may reject it
        a.sync(hub)
        subscription.poll(lambda r: seen.append(r.event_id))
        subscription.poll(lambda r: seen.append(r.event_id))
        assert seen == [r.event_id for r in hub.read_all()]


def test_a_device_is_not_a_copy_target_and_does_not_seal(tmp_path: Path) -> None:
    with minies.EventStore(tmp_path / "src.db") as src:
        src.append("acc", [Opened(owner="ann")], aggregate_type="Account")
    device(tmp_path, "a").close()
    with pytest.raises(minies.SyncError, match="is a device"):
        minies.copy(tmp_path / "src.db", tmp_path / "a.db")
    with device(tmp_path, "a") as a, pytest.raises(minies.SyncError, match="does not seal"):
        a.seal(b"")


class Noted(minies.Event):
    event_type: ClassVar[str] = "sync.Noted"
    text: str


class Notes(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE notes (text TEXT)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        if isinstance(event.data, Noted):
            db.execute("INSERT INTO notes VALUES (?)", (event.data.text,))


def test_newer_events_from_the_hub_are_stored_and_refused_at_once_not_read_wrong(tmp_path: Path) -> None:
    hub_path = str(tmp_path / "hub.db")
    run_python(
        "import sys, minies\nfrom typing import ClassVar\n"
        "class Noted(minies.Event):\n"
        "    event_type: ClassVar[str] = 'sync.Noted'\n    schema_version: ClassVar[int] = 2\n"
        "    text: str\n    tag: str = ''\n"
        "with minies.EventStore(sys.argv[1]) as hub:\n"
        "    hub.append('n1', [Noted(text='hi', tag='x')], aggregate_type='Note')\n",
        hub_path,
    )
    with minies.EventStore(tmp_path / "a.db", device="a", projections=[Notes()]) as a:
        a.append("n0", [Noted(text="mine")], aggregate_type="Note")
        report = a.sync(hub_path)  # the sync lands: the events are stored
        assert report.pulled == 2 and a.head()[0] == 2
        with pytest.raises(minies.SchemaError, match="newer"):
            list(a.read("n1"))  # in this session too: never read with a field dropped
        assert "Notes" in a.failed_projections  # a read model that cannot read them stops before them
        assert a.query("SELECT text FROM notes") == []  # (the hub placed the newer one first)
        a.append("n2", [Noted(text="later")], aggregate_type="Note")  # the device goes on writing


def test_a_device_is_not_a_hub(tmp_path: Path) -> None:
    device(tmp_path, "laptop").close()
    with device(tmp_path, "phone") as phone:
        phone.append("b", [Opened(owner="p")], aggregate_type="Account")
        with pytest.raises(minies.SyncError, match="is a device, not a hub"):
            phone.sync(tmp_path / "laptop.db")
        assert len(phone.pending()) == 1  # nothing lost


def test_devices_syncing_at_once_through_one_hub_take_turns(tmp_path: Path, hub_at: str) -> None:
    minies.EventStore(hub_at).close()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with minies.EventStore(tmp_path / f"{name}.db", device=name) as d:
                for k in range(15):
                    d.append(f"{name}-{k}", [Opened(owner=name)], aggregate_type="Account")
                    d.sync(hub_at)
        except BaseException as e:  # (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"d{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with minies.EventStore(hub_at) as hub:
        assert hub.head()[0] == 60 and hub.verify(origins=True).devices == 4


def test_a_read_model_rebuilt_on_a_device_is_right_again_after_the_sync(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        a.sync(hub)
        deposit(a, "acc", 5)
        deposit(a, "acc", 6)
        a.rebuild("balances")  # from the confirmed log: the pending deposits' changes no longer apply
        a.sync(hub)
        assert a.query(READ_MODEL) == hub.query(READ_MODEL) == [("acc", "ann", 11)] == rebuilt(a, tmp_path, "a")
        assert a.query(LEDGER) == [(2, 11)]


def test_a_retry_that_fails_is_handed_over_again_and_redone_exactly_once(
    tmp_path: Path, hub: minies.EventStore
) -> None:
    a, b = conflicting(tmp_path, hub)
    calls: list[int] = []

    def flaky(store: minies.EventStore, rejection: minies.Recorded) -> None:
        calls.append(rejection.position)
        deposit(store, "acc", msgspec.json.decode(rejection.data.data)["amount"])
        if len(calls) == 1:
            raise RuntimeError("the app died in its retry")

    with pytest.raises(RuntimeError, match="died"):
        b.sync(hub, conflicts={"Account": flaky})
    assert b.pending() == []  # the failed retry's save went with it
    b.close()
    with device(tmp_path, "b") as b:  # (a restart)
        report = b.sync(hub, conflicts={"Account": flaky})
        assert report.retried == 1 and calls[0] == calls[1]
        assert b.sync(hub, conflicts={"Account": flaky}).retried == 0 and len(calls) == 2
        assert b.query(READ_MODEL) == hub.query(READ_MODEL) == [("acc", "ann", 12)]
    a.close()


def test_an_app_role_settles_syncs_on_a_hub_whose_owner_registered_devices(
    tmp_path: Path, pg_url: str, pg_app_role: str
) -> None:
    from minies import _serve

    with minies.EventStore(pg_url) as owner:
        _serve.add_device(owner, "a")  # the owner creates the hub's tables, then grants
    minies.grant(pg_url, pg_app_role, "app")
    app_url = pg_url.replace("postgres@", f"{pg_app_role}@", 1)
    with minies.EventStore(app_url) as app:
        assert _serve.add_device(app, "b")  # and the app may register devices too
    with device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        assert a.sync(app_url).placed == 1
        assert a.verify(origins=True).ok


def test_a_pending_event_stays_in_sight_until_its_placement_arrives(tmp_path: Path, hub: minies.EventStore) -> None:
    for k in range(25):
        hub.append(f"h{k}", [Opened(owner="hub")], aggregate_type="Account")
    with device(tmp_path, "a") as a:
        a.append("mine", [Opened(owner="ann")], aggregate_type="Account")
        reply = minies._hub.exchange(hub, a._device.push(frozenset(), limit=10))  # type: ignore[union-attr]
        assert reply.acknowledged == 1 and len(reply.rows) == 10  # placed at 26: not in this page
        a._device.receive(reply)  # type: ignore[union-attr]
        assert a.head()[0] == 10 and a.version("mine") == 1 and len(a.pending()) == 1
        assert a.query("SELECT id FROM balances WHERE id = 'mine'") == [("mine",)]
        assert a.sync(hub).pushed == 0  # (settled already: not placed twice)
        assert a.pending() == [] and a.head() == hub.head() and a.verify(origins=True).ok


def test_a_hub_copied_elsewhere_goes_on_serving_its_devices_and_keeps_its_seals(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    with minies.EventStore(tmp_path / "hub.db") as hub, device(tmp_path, "a") as a:
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        a.sync(hub)
        hub.seal(key)
        a.sync(hub)
        assert a.verify(trust=[key.public_key()]).sealed_position == 1  # the hub's seal reached the device
    minies.copy(tmp_path / "hub.db", tmp_path / "moved.db")  # e.g. to a team's PostgreSQL
    with minies.EventStore(tmp_path / "moved.db") as moved, device(tmp_path, "a") as a:
        assert moved.verify(origins=True).devices == 1
        deposit(a, "acc", 5)
        assert a.sync(moved).placed == 1 and moved.verify(origins=True).ok


def test_one_subject_sealed_on_the_hub_and_on_two_devices_offline_reads_everywhere_and_is_forgotten_everywhere(
    tmp_path: Path, hub: minies.EventStore
) -> None:
    a, b = device(tmp_path, "a"), device(tmp_path, "b")
    hub.append("p0", [Signed(person="ann", email="hub@example.com")], aggregate_type="Person")
    a.append("p1", [Signed(person="ann", email="a@example.com")], aggregate_type="Person")  # a key of a's own
    b.append("p2", [Signed(person="ann", email="b@example.com")], aggregate_type="Person")  # and of b's
    a.sync(hub), b.sync(hub), a.sync(hub)
    for store in (hub, a, b):
        assert [r.data.email for r in store.read_all()] == ["hub@example.com", "a@example.com", "b@example.com"]
    a.forget("ann")  # every key of ann's, whichever store made it, on every store
    a.sync(hub), b.sync(hub)
    for store in (hub, a, b):
        assert [r.data.email for r in store.read_all() if isinstance(r.data, Signed)] == ["", "", ""]
        assert store.query("SELECT 1") == [(1,)]
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert conn.execute("SELECT count(*) FROM minies_keys WHERE key IS NOT NULL").fetchone() == (0,)
    a.close(), b.close()


class Receipted(minies.Event):
    event_type: ClassVar[str] = "sync.Receipted"
    of: str


def test_a_processor_on_a_device_processes_confirmed_events_once_and_its_outputs_travel(
    tmp_path: Path, hub: minies.EventStore
) -> None:
    def receipt(record: minies.Recorded, store: minies.EventStore) -> None:
        store.append(f"receipt-{record.event_id}", [Receipted(of=record.event_id)], aggregate_type="Receipt")

    with device(tmp_path, "a") as a:
        processor = a.processor("receipts", receipt, event_types=[Deposited])
        a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        deposit(a, "acc", 5)
        assert processor.run() == 0  # pending: the hub may still reject it
        a.sync(hub)
        assert processor.run() == 1 and processor.run() == 0
        assert [type(r.data) for r in a.pending()] == [Receipted]  # its output, pending in turn
        a.sync(hub)
        receipts = [r for r in hub.read_all() if isinstance(r.data, Receipted)]
        assert len(receipts) == 1 and receipts[0].metadata["minies.origin"]["device"] == "a"
        assert receipts[0].metadata["causation_id"] == next(r.event_id for r in hub.read("acc", after=1))


def test_a_sync_inside_a_transaction_is_refused(tmp_path: Path, hub: minies.EventStore) -> None:
    with device(tmp_path, "a") as a:
        with pytest.raises(minies.SyncError, match="inside store.transaction"), a.transaction():
            a.append("acc", [Opened(owner="ann")], aggregate_type="Account")
            a.sync(hub)
        assert a.pending() == []  # (the block rolled back)
    assert hub.head() == (0, "")


def test_a_sync_with_nothing_new_reads_the_same_few_rows_however_long_the_log(tmp_path: Path) -> None:
    """O(1) in the log's size, counted in rows SQLite hands back on both sides (no clock)."""

    def rows_read(events: int) -> int:
        with minies.EventStore(tmp_path / f"hub{events}.db") as hub, device(tmp_path, f"d{events}") as d:
            with hub.transaction():
                for k in range(events):
                    hub.append(f"x{k}", [Opened(owner="o")], aggregate_type="Account")
            d.append("mine", [Opened(owner="m")], aggregate_type="Account")
            d.sync(hub)
            read = [0]

            def count(cursor: Any, row: Any) -> Any:
                read[0] += 1
                return row

            d._conn.row_trace = hub._conn.row_trace = count  # type: ignore[attr-defined]
            assert d.sync(hub).round_trips == 1
            return read[0]

    assert rows_read(10) == rows_read(3000)


def test_info_names_the_device_and_its_pending_events(tmp_path: Path) -> None:
    with device(tmp_path, "till-1") as d:
        d.append("acc", [Opened(owner="ann")], aggregate_type="Account")
        info = d.info()
        assert (info.device, info.pending, info.events) == ("till-1", 1, 0)
    with minies.EventStore(tmp_path / "plain.db") as plain:
        assert (plain.info().device, plain.info().pending) == (None, 0)
    shown = run_python("import sys, minies._cli; minies._cli.main(['info', sys.argv[1]])", str(tmp_path / "till-1.db"))
    assert "device          till-1: 1 event pending its hub" in shown.stdout


def test_a_tampered_or_misaddressed_reply_is_refused_and_nothing_is_taken_in(tmp_path: Path) -> None:
    with minies.EventStore(tmp_path / "hub.db") as hub:
        hub.append("h", [Opened(owner="hub")], aggregate_type="Account")
        hub.append("h", [Renamed(owner="hub2")], aggregate_type="Account")
        with device(tmp_path, "a") as a:
            _sync.export_push(a, tmp_path / "push")
            reply = _sync.answer_bundle(hub, tmp_path / "push", tmp_path / "reply")
            rows = [list(row) for row in reply.rows]
            rows[1][6] = '{"owner":"mallory"}'  # the payload changed on the way: its hash no longer fits
            for bad, message in (
                (msgspec.structs.replace(reply, rows=[tuple(r) for r in rows]), "does not extend this device's log"),
                (msgspec.structs.replace(reply, rows=reply.rows[1:]), "does not extend this device's log"),
                (msgspec.structs.replace(reply, device="b"), "is for device 'b'"),
            ):
                with pytest.raises(minies.SyncError, match=message):
                    a._device.receive(bad)  # type: ignore[union-attr]
                assert a.head() == (0, "")
            a._device.receive(reply)  # type: ignore[union-attr]
            assert a.head() == hub.head()


def test_a_batch_for_a_stream_of_another_type_is_rejected_whatever_the_policy(
    tmp_path: Path, hub: minies.EventStore
) -> None:
    hub.append("x", [Opened(owner="hub")], aggregate_type="Account")
    with device(tmp_path, "a") as a:
        a.append("x", [Opened(owner="me")], aggregate_type="Ledger")  # offline, "x" is free here
        report = a.sync(hub, conflicts={"Ledger": "accept"})
        assert (report.placed, report.rejected) == (0, 1)
        assert "'x' holds Account events on the hub, not Ledger ones" in a.rejections()[0].data.reason


def test_a_reply_bundle_hands_its_rejections_over_as_sync_does(tmp_path: Path, hub: minies.EventStore) -> None:
    a, b = conflicting(tmp_path, hub)
    _sync.export_push(b, tmp_path / "push")
    _sync.answer_bundle(hub, tmp_path / "push", tmp_path / "reply")
    redone: list[int] = []

    def again(store: minies.EventStore, rejection: minies.Recorded) -> None:
        redone.append(rejection.data.seq)
        deposit(store, "acc", 7)

    for _ in range(2):  # (twice: handed over once)
        _sync.import_reply(b, tmp_path / "reply", conflicts={"Account": again})
    assert redone == [1] and [type(r.data) for r in b.pending()] == [Deposited]
    a.close(), b.close()
