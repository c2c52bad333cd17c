from __future__ import annotations

import json
import os
import warnings
from typing import ClassVar

import pytest
from conftest import run_python
from domain import Account, AccountOpened, AccountRenamed, MoneyDeposited, MoneyWithdrawn
from hypothesis import given, settings
from hypothesis import strategies as st

import minies
from minies import _snapshots


class Snappy(Account):
    snapshot_every: ClassVar[int | None] = 3


def snapshot_versions(store: minies.EventStore, aggregate_id: str) -> list[int]:
    return [
        v
        for (v,) in store._conn.execute(
            "SELECT version FROM minies_snapshots WHERE aggregate_id = ? ORDER BY version", (aggregate_id,)
        )
    ]


def test_snapshot_written_when_a_save_crosses_a_multiple(store: minies.EventStore) -> None:
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    store.save(account)  # v1
    assert snapshot_versions(store, "s") == []
    account.deposit(1)
    account.deposit(1)
    store.save(account)  # v3: crosses 3
    assert snapshot_versions(store, "s") == [3]
    for _ in range(4):
        account.deposit(1)
    store.save(account)  # v7: crosses 6 -> snapshot of the state at 7
    assert snapshot_versions(store, "s") == [3, 7]


def test_old_snapshots_are_pruned(store: minies.EventStore) -> None:
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    for _ in range(30):
        account.deposit(1)
        store.save(account)
    assert snapshot_versions(store, "s") == [24, 27, 30]


def doctor(store: minies.EventStore, at_version: int | None, /, **fields: object) -> None:
    """Change fields of stored snapshot states (at ``version``, or all of them)."""
    for at, state in store._conn.execute("SELECT version, state FROM minies_snapshots").fetchall():
        if at_version in (None, at):
            changed = {**json.loads(state), **fields}
            store._conn.execute("UPDATE minies_snapshots SET state = ? WHERE version = ?", (json.dumps(changed), at))


def test_load_uses_the_snapshot(store: minies.EventStore) -> None:
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    for _ in range(5):
        account.deposit(1)
    store.save(account)  # snapshot at 6
    # Doctor the snapshot: if load uses it, the doctored balance shows.
    doctor(store, 6, balance=100)
    assert store.load(Snappy, "s").balance == 100
    assert store.load(Snappy, "s", upto=5).balance == 4  # below the snapshot: replay
    store.append("s", [MoneyDeposited(amount=1)], aggregate_type="Snappy")
    loaded = store.load(Snappy, "s")
    assert (loaded.balance, loaded.version) == (101, 7)


def test_store_level_override(location: str) -> None:
    with minies.EventStore(location, snapshot_every={Account: 2}) as store:
        account = Account(id="a")
        account.record(AccountOpened(owner="o", balance=0))
        account.deposit(1)
        store.save(account)
        assert snapshot_versions(store, "a") == [2]
        assert store.snapshot_stats() == [("Account", 1, pytest.approx(60, abs=40))]
        assert store.drop_snapshots(Account) == 1
        assert store.snapshot_stats() == []


def test_a_snapshot_that_fails_to_decode_is_ignored(store: minies.EventStore) -> None:
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=7))
    account.deposit(1)
    account.deposit(1)
    store.save(account)
    store._conn.execute('UPDATE minies_snapshots SET state = \'{"balance": "lots"}\'')
    assert store.load(Snappy, "s").balance == 9


def shape(snapshot_version: int, every: int) -> type[Account]:
    """An Account snapshotting every ``every`` events: the same name, module, fields and types
    each time, so only ``snapshot_version`` tells two of them apart."""

    class Snap(Account):
        aggregate_type: ClassVar[str] = "Account"
        snapshot_every: ClassVar[int | None] = every

    Snap.snapshot_version = snapshot_version
    return Snap


def test_snapshot_version_alone_invalidates(store: minies.EventStore) -> None:
    v1, v2 = shape(1, every=1), shape(2, every=1)
    account = v1(id="s")
    account.record(AccountOpened(owner="o", balance=5))
    store.save(account)
    doctor(store, None, balance=100)
    assert store.load(v1, "s").balance == 100  # same snapshot_version: the snapshot is used
    assert store.load(shape(1, every=1), "s").balance == 100  # (a re-run of the same definition too)
    assert store.load(v2, "s").balance == 5  # bumped: ignored, replayed


CHANGING_CLASS = """
import sys, minies
from typing import ClassVar
from domain import AccountOpened, MoneyDeposited
shape = sys.argv[2]
if shape == "old":
    class Ledger(minies.Aggregate):
        snapshot_every: ClassVar[int] = 2
        total: int = 0
        def apply(self, e):
            self.total += getattr(e, "amount", 0) or getattr(e, "balance", 0)
else:  # the field was renamed and one added: old snapshots must not be decoded into it
    class Ledger(minies.Aggregate):
        snapshot_every: ClassVar[int] = 2
        sum: int = 0
        deposits: int = 0
        def apply(self, e):
            self.sum += getattr(e, "amount", 0) or getattr(e, "balance", 0)
            self.deposits += isinstance(e, MoneyDeposited)
with minies.EventStore(sys.argv[1]) as store:
    if shape == "old":
        ledger = Ledger(id="L")
        ledger.record(AccountOpened(owner="x", balance=10))
        for i in range(5):
            ledger.record(MoneyDeposited(amount=1))
        store.save(ledger)
        print(store.load(Ledger, "L").total)
    else:
        ledger = store.load(Ledger, "L")
        print(ledger.sum, ledger.deposits, ledger.version)
        ledger.record(MoneyDeposited(amount=1))
        ledger.record(MoneyDeposited(amount=1))
        store.save(ledger)  # crosses 8: a snapshot of the new shape beside the old ones
        print(store._conn.execute("SELECT count(DISTINCT fingerprint) FROM minies_snapshots").get)
"""


def test_stale_snapshots_are_ignored_after_the_class_changes(location: str) -> None:
    assert run_python(CHANGING_CLASS, location, "old").stdout.split() == ["15"]
    assert run_python(CHANGING_CLASS, location, "new").stdout.split() == ["15", "5", "6", "2"]


events_strategy = st.lists(
    st.one_of(
        st.builds(MoneyDeposited, amount=st.integers(-(10**6), 10**6)),
        st.builds(MoneyWithdrawn, amount=st.integers(0, 10**6)),
        st.builds(AccountRenamed, name=st.text(max_size=8)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, every=st.integers(1, 7), batch=st.integers(1, 5))
def test_snapshot_load_equals_full_replay_at_every_version(events: list[minies.Event], every: int, batch: int) -> None:
    with (
        minies.EventStore(":memory:", snapshot_every={Account: every}) as snapped,
        minies.EventStore(":memory:") as plain,
    ):
        for store in (snapped, plain):
            account = Account(id="a")
            account.record(AccountOpened(owner="o", balance=0))
            for i, event in enumerate(events, 1):
                account.record(event)
                if i % batch == 0:
                    store.save(account)
            store.save(account)
        assert snapshot_versions(snapped, "a") or len(events) + 1 < every
        for upto in range(1, len(events) + 2):
            assert snapped.load(Account, "a", upto=upto) == plain.load(Account, "a", upto=upto)
        assert snapped.load(Account, "a") == plain.load(Account, "a")


# ---------------------------------------------------------------------------- states that must not be snapshotted
class Keyed(minies.Event):
    key: int
    value: float


class Tally(minies.Aggregate):
    """Fields that read back exactly (typed) beside ones that may not (untyped, tuples)."""

    snapshot_every: ClassVar[int | None] = 2
    typed: dict[int, float] = {}
    untyped: dict = {}  # type: ignore[type-arg]
    pairs: list = []  # type: ignore[type-arg]
    total: float = 0.0

    def apply(self, event: minies.Event) -> None:
        if isinstance(event, Keyed):
            self.typed = {**self.typed, event.key: event.value}
            if event.key % 3 == 0:
                self.untyped = {**self.untyped, event.key: event.value}  # int keys: JSON makes them str
            if event.key % 5 == 0:
                self.pairs = [*self.pairs, (event.key, event.value)]  # a tuple reads back as a list
            self.total += event.value


def test_a_state_that_would_not_read_back_is_not_snapshotted_and_says_which_field(location: str) -> None:
    _snapshots._unsnapshottable.discard(Tally)
    with minies.EventStore(location) as store:
        tally = Tally(id="t")
        tally.record(Keyed(key=1, value=1.0))
        tally.record(Keyed(key=2, value=2.0))
        store.save(tally)  # reads back as itself: snapshotted
        assert snapshot_versions(store, "t") == [2]
        tally.record(Keyed(key=3, value=0.5))
        tally.record(Keyed(key=4, value=0.5))
        with pytest.warns(
            minies.SnapshotWarning,
            match=r"Tally is not snapshotted: its field 'untyped' = \{3: 0.5\} would not read back as itself \(give it a precise type, e.g. dict\[int, int\]\); loads replay instead",
        ):
            store.save(tally)
        assert snapshot_versions(store, "t") == [2]  # nothing that would change state on load
        tally.record(Keyed(key=5, value=1.0))
        tally.record(Keyed(key=6, value=1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once per class, not at every save
            store.save(tally)
        assert snapshot_versions(store, "t") == [2]
        loaded = store.load(Tally, "t")
        assert loaded == tally and loaded.untyped == {3: 0.5, 6: 1.0}


tally_events = st.lists(
    st.builds(Keyed, key=st.integers(0, 20), value=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(events=tally_events, every=st.integers(1, 6), batch=st.integers(1, 4))
def test_snapshot_load_equals_full_replay_for_any_state(events: list[Keyed], every: int, batch: int) -> None:
    _snapshots._unsnapshottable.discard(Tally)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", minies.SnapshotWarning)
        with minies.EventStore(":memory:", snapshot_every={Tally: every}) as store:
            tally = Tally(id="t")
            for i, event in enumerate(events, 1):
                tally.record(event)
                if i % batch == 0:
                    store.save(tally)
            store.save(tally)
            for upto in range(1, len(events) + 1):
                replayed, _ = store.fold(
                    "t", lambda state, event: (state.apply(event), state)[1], Tally(id="t"), upto=upto
                )
                replayed.version = upto
                assert store.load(Tally, "t", upto=upto) == replayed


def test_the_fingerprint_is_stable_across_versions_of_minies() -> None:
    """Snapshots written by an earlier minies stay usable: the fingerprint of an unchanged
    class must not change (its recipe is part of the file format)."""
    assert _snapshots.shape_hash(Account, [[], []]) == "19a51ee362c7ca05b9fc2dbd85b7bab2"


class Miscounted(minies.Aggregate):
    snapshot_every: ClassVar[int | None] = 1
    count: int = 0

    def apply(self, event: minies.Event) -> None:
        self.count = "many"  # type: ignore[assignment]  # a state that contradicts its own class


def test_a_state_that_does_not_even_decode_is_not_snapshotted_and_the_warning_points_at_the_save(
    store: minies.EventStore,
) -> None:
    _snapshots._unsnapshottable.discard(Miscounted)
    aggregate = Miscounted(id="m")
    aggregate.record(MoneyDeposited(amount=1))
    with pytest.warns(
        minies.SnapshotWarning, match="Miscounted is not snapshotted: its field 'count' = 'many'"
    ) as caught:
        store.save(aggregate)
    if "MUTANT_UNDER_TEST" not in os.environ:  # (mutmut adds a frame of its own)
        assert caught[0].filename == __file__  # the user's own line, not minies' insides
    assert snapshot_versions(store, "m") == []


def test_the_newest_usable_snapshot_is_used_skipping_other_shapes_and_broken_ones(store: minies.EventStore) -> None:
    old, new = shape(1, every=2), shape(2, every=2)
    account = old(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    account.deposit(1)
    store.save(account)  # a snapshot at 2, old shape
    account = new(id="s", version=account.version, balance=account.balance)
    for _ in range(2):
        account.deposit(1)
        account.deposit(1)
        store.save(account)  # snapshots at 4 and 6, new shape
    assert snapshot_versions(store, "s") == [2, 4, 6]
    doctor(store, 2, balance=100)
    doctor(store, 4, balance=200)
    store._conn.execute("UPDATE minies_snapshots SET state = 'not json' WHERE version = 6")
    assert store.load(old, "s").balance == 104  # 6 and 4 are another shape: the one at 2, then 4 events
    assert store.load(new, "s").balance == 202  # 6 does not decode: the one at 4, then 2 events


@pytest.mark.parametrize("field", ["id", "version"])
def test_a_snapshot_whose_state_names_another_aggregate_or_version_is_ignored(
    store: minies.EventStore, field: str
) -> None:
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    account.deposit(1)
    account.deposit(1)
    store.save(account)  # a snapshot at 3
    doctor(store, None, **{field: "other" if field == "id" else 2, "balance": 100})
    loaded = store.load(Snappy, "s")
    assert (loaded.id, loaded.version, loaded.balance) == ("s", 3, 2)  # replayed, not the doctored state


def test_a_snapshot_ahead_of_the_log_is_ignored(store: minies.EventStore) -> None:
    """Snapshots are outside the chain: one whose version the log does not hold (a side table
    edited, or brought from another file) must not stand in for events, or every later save
    would be refused as a conflict."""
    account = Snappy(id="s")
    account.record(AccountOpened(owner="o", balance=0))
    account.deposit(1)
    account.deposit(1)
    store.save(account)  # a snapshot at 3
    store._conn.execute("UPDATE minies_snapshots SET version = 9")
    doctor(store, 9, version=9, balance=100)
    loaded = store.load(Snappy, "s")
    assert (loaded.version, loaded.balance) == (3, 2)
    loaded.deposit(1)
    assert store.save(loaded) == 4
