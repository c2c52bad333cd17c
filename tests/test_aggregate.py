from __future__ import annotations

from typing import ClassVar

import pytest
from conftest import run_python, tamper
from domain import Account, AccountOpened, AccountRenamed, MoneyDeposited, MoneyWithdrawn, OrderPlaced

import minies
from minies import _audit


@pytest.fixture(params=["upcasting path", "plain path"], autouse=True)
def replay_path(request: pytest.FixtureRequest) -> None:
    """Every test here twice: loads through the records (while upcasting is possible, as in the
    rest of the session) and through SQLite's chunked JSON arrays (nothing to upcast)."""
    if request.param == "plain path":
        request.getfixturevalue("no_upcasting")


def opened(store: minies.EventStore, account_id: str = "acc-1", balance: int = 1000) -> Account:
    account = Account(id=account_id)
    account.record(AccountOpened(owner="ann", balance=balance))
    store.save(account)
    return account


def test_record_applies_and_queues(store: minies.EventStore) -> None:
    account = Account(id="acc-1")
    assert account.version == 0 and account.pending == ()
    account.record(AccountOpened(owner="ann", balance=1000))
    account.deposit(500)
    assert (account.balance, account.version, len(account.pending)) == (1500, 2, 2)
    assert store.save(account) == 2
    assert account.pending == ()
    assert store.save(account) == 2  # nothing pending: a no-op
    assert store.version("acc-1") == 2
    assert {r.aggregate_type for r in store.read("acc-1")} == {"Account"}


def test_load_rebuilds_state_and_history(store: minies.EventStore) -> None:
    account = opened(store)
    for amount in (500, 250):
        account.deposit(amount)
    account.record(MoneyWithdrawn(amount=100))
    account.record(AccountRenamed(name="savings"))
    store.save(account)
    loaded = store.load(Account, "acc-1")
    assert isinstance(loaded, Account)
    assert (loaded.balance, loaded.version, loaded.name, loaded.pending) == (1650, 5, "savings", ())
    assert store.load(Account, "acc-1", upto=1).balance == 1000
    assert store.load(Account, "acc-1", upto=3).balance == 1750
    assert store.load(Account, "acc-1", upto=99).version == 5


def test_not_found(store: minies.EventStore) -> None:
    with pytest.raises(minies.NotFound, match="'nobody' has no events"):
        store.load(Account, "nobody")
    assert isinstance(minies.NotFound("x"), LookupError)
    opened(store)
    with pytest.raises(minies.NotFound, match="at or below version 0"):
        store.load(Account, "acc-1", upto=0)


def test_save_detects_conflicts(store: minies.EventStore) -> None:
    opened(store)
    first = store.load(Account, "acc-1")
    second = store.load(Account, "acc-1")
    first.deposit(1)
    store.save(first)
    second.deposit(2)
    with pytest.raises(minies.ConcurrencyError, match="aggregate 'acc-1' is at version 2, expected 1") as info:
        store.save(second)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert store.load(Account, "acc-1").balance == 1001


def test_saving_several_aggregates_in_one_transaction(store: minies.EventStore) -> None:
    a, b = opened(store, "a"), opened(store, "b")
    with pytest.raises(ValueError, match="amount must be positive"), store.transaction():
        a.deposit(5)
        store.save(a)
        b.deposit(-1)  # a rule breaks half-way: a's save is rolled back too
    assert store.version("a") == 1 and store.load(Account, "a").balance == 1000


def test_wrong_class_is_a_clear_error(store: minies.EventStore) -> None:
    store.append("o-1", [OrderPlaced(customer_id="c", total=1.0)], aggregate_type="Order")
    with pytest.raises(
        minies.SchemaError,
        match=r"^aggregate '[^']+' holds Order events, not Account; load it with the matching class$",
    ):
        store.load(Account, "o-1")


def test_apply_that_raises_names_the_aggregate_and_version(store: minies.EventStore) -> None:
    class Fragile(minies.Aggregate):
        def apply(self, event: minies.Event) -> None:
            if isinstance(event, MoneyDeposited) and event.amount == 13:
                raise ArithmeticError("unlucky")

    for amount in (1, 2, 13):
        store.append("f", [MoneyDeposited(amount=amount)], aggregate_type="Fragile")
    with pytest.raises(ArithmeticError, match="event 3 of aggregate 'f'"):
        store.load(Fragile, "f")
    assert store.version("f") == 3


def test_record_refuses_non_events() -> None:
    with pytest.raises(TypeError, match=r"^record\(\) takes a minies.Event, got dict: \{'amount': 1\}$"):
        Account(id="a").record({"amount": 1})  # type: ignore[arg-type]


def test_an_aggregate_without_apply_says_so_and_its_type_is_its_class_name(store: minies.EventStore) -> None:
    class Forgetful(minies.Aggregate):
        pass

    assert Forgetful.aggregate_type == "Forgetful"
    with pytest.raises(NotImplementedError, match=r"^Forgetful.apply is not defined$"):
        Forgetful(id="f").record(MoneyDeposited(amount=1))
    store.append("f", [MoneyDeposited(amount=1)], aggregate_type="Forgetful")
    with pytest.raises(NotImplementedError, match=r"^Forgetful.apply is not defined\nwhile applying event 1 of"):
        store.load(Forgetful, "f")


def test_saving_an_aggregate_with_nothing_recorded_writes_nothing(store: minies.EventStore) -> None:
    account = Account(id="quiet")
    store.save(account)
    assert store.version("quiet") == 0 and account.pending == ()
    account.record(MoneyDeposited(amount=1))
    store.save(account)
    store.save(account)  # saved already: nothing pending
    assert store.version("quiet") == 1 and account.pending == ()


def test_custom_aggregate_type(store: minies.EventStore) -> None:
    class Wallet(minies.Aggregate):
        aggregate_type: ClassVar[str] = "wallet.v1"
        total: int = 0

        def apply(self, event: minies.Event) -> None:
            if isinstance(event, MoneyDeposited):
                self.total += event.amount

    wallet = Wallet(id="w")
    wallet.record(MoneyDeposited(amount=3))
    store.save(wallet)
    assert [r.aggregate_type for r in store.read("w")] == ["wallet.v1"]
    assert store.load(Wallet, "w").total == 3


def test_functional_fold_shares_the_load_path(store: minies.EventStore) -> None:
    opened(store)
    store.append("acc-1", [MoneyDeposited(amount=5), MoneyWithdrawn(amount=2)], aggregate_type="Account")

    def evolve(balance: int, event: minies.Event) -> int:
        match event:
            case AccountOpened(balance=b):
                return b
            case MoneyDeposited(amount=a):
                return balance + a
            case MoneyWithdrawn(amount=a):
                return balance - a
        return balance

    assert store.fold("acc-1", evolve, 0) == (1003, 3)
    assert store.fold("acc-1", evolve, 0, upto=2) == (1005, 2)
    with pytest.raises(minies.SchemaError, match="aggregate 'acc-1' holds Account events, not Order"):
        store.fold("acc-1", evolve, 0, aggregate_type="Order")
    with pytest.raises(minies.NotFound, match="aggregate 'nobody' has no events"):
        store.fold("nobody", evolve, 0)


def test_two_stores_load_modify_save_the_same_aggregate(location: str) -> None:
    with minies.EventStore(location) as one, minies.EventStore(location) as two:
        opened(one)
        conflicts = 0
        for i in range(50):
            store, rival = (one, two) if i % 2 else (two, one)
            account = store.load(Account, "acc-1")
            interloper = rival.load(Account, "acc-1")
            account.deposit(1)
            interloper.deposit(10)
            rival.save(interloper)  # the rival wins the race
            for _ in range(3):  # in one thread the retry cannot lose again; a bound keeps a bug from hanging
                try:
                    store.save(account)
                    break
                except minies.ConcurrencyError:
                    conflicts += 1
                    account = store.load(Account, "acc-1")
                    account.deposit(1)
        final = two.load(Account, "acc-1")
        assert conflicts == 50
        assert final.version == 101
        assert final.balance == 1000 + 50 * 11
        assert [r.version for r in one.read("acc-1")] == list(range(1, 102))


def test_load_and_fold_refuse_events_with_no_class_instead_of_feeding_dicts_to_apply(location: str) -> None:
    run_python(
        "import sys, minies\n"
        "class Mystery(minies.Event):\n    clue: int\n"
        "with minies.EventStore(sys.argv[1]) as s:\n"
        "    s.append('acc-1', [Mystery(clue=1)], aggregate_type='Account')\n",
        location,
    )
    with minies.EventStore(location) as store:  # this process has no Mystery class
        opened(store, "acc-2")
        store.append("acc-1", [MoneyDeposited(amount=5)], aggregate_type="Account")
        with pytest.raises(
            minies.SchemaError,
            match=r"^aggregate 'acc-1' holds events of types with no class in this process \(Mystery\); import the "
            r"module that defines them \(read\(\) returns such events as dicts\)$",
        ):
            store.load(Account, "acc-1")
        with pytest.raises(minies.SchemaError, match=r"no class in this process \(Mystery\)"):
            store.fold("acc-1", lambda state, event: state, None)
        assert [r.data for r in store.read("acc-1")] == [{"clue": 1}, MoneyDeposited(amount=5)]  # read: dicts
        assert store.load(Account, "acc-2").balance == 1000


@pytest.mark.parametrize("order", ["Account first", "Other first"])
def test_load_refuses_a_stream_holding_two_aggregate_types_in_either_order(location: str, order: str) -> None:
    """append() refuses to mix types; a file written by other means may still hold a mix."""
    with minies.EventStore(location) as store:
        first, second = ("Account", "Other") if order == "Account first" else ("Other", "Account")
        store.append("acc-1", [AccountOpened(owner="ann", balance=1)], aggregate_type=first)
        event_id, data, at = "00000000-0000-7000-8000-000000000000", '{"amount":1}', "2026-01-01T00:00:00.000000Z"
        (digest,) = _audit.chain_batch(  # correctly chained (PostgreSQL's trigger checks it)
            bytes.fromhex(store.head()[1]), 2, [event_id], "acc-1", second, ["MoneyDeposited"], 2, [data], "{}", at, [1]
        )
        store._conn.execute(  # what another tool might write
            "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version, data,"
            " metadata, created_at, hash) VALUES (2, ?, 'acc-1', ?, 'MoneyDeposited', 2, ?, '{}', ?, ?)",
            (event_id, second, data, at, digest),
        )
    with minies.EventStore(location) as store:
        with pytest.raises(
            minies.SchemaError,
            match=r"^aggregate 'acc-1' holds (Account|Other) events, not Account; load it with the matching class$",
        ):
            store.load(Account, "acc-1")
        with pytest.raises(minies.SchemaError, match="not Account"):
            store.fold("acc-1", lambda state, event: state, None, aggregate_type="Account")


def test_fold_checks_its_arguments(store: minies.EventStore) -> None:
    opened(store)
    with pytest.raises(TypeError, match=r"^aggregate_id must be a str, got int: 1$"):
        store.fold(1, lambda n, e: n, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^upto must be an int >= 0 or None, got -1$"):
        store.fold("acc-1", lambda n, e: n, 0, upto=-1)
    with pytest.raises(minies.NotFound, match=r"^aggregate 'acc-1' has no events at or below version 0$"):
        store.fold("acc-1", lambda n, e: n + 1, 0, upto=0)
    with pytest.raises(minies.NotFound, match=r"^aggregate 'nobody' has no events$"):
        store.fold("nobody", lambda n, e: n + 1, 0)


def test_load_and_save_check_their_arguments(store: minies.EventStore) -> None:
    opened(store)
    with pytest.raises(TypeError, match=r"^load\(\) takes an Aggregate subclass, got 'Account'$"):
        store.load("Account", "acc-1")  # type: ignore[type-var]
    with pytest.raises(
        TypeError, match=r"^load\(\) takes an Aggregate subclass, got <class 'minies._demo.MoneyDeposited'>$"
    ):
        store.load(MoneyDeposited, "acc-1")  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"^aggregate_id must be a str, got int: 1$"):
        store.load(Account, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^upto must be an int >= 0 or None, got -1$"):
        store.load(Account, "acc-1", upto=-1)
    with pytest.raises(TypeError, match=r"^save\(\) takes a minies.Aggregate, got MoneyDeposited$"):
        store.save(MoneyDeposited(amount=1))  # type: ignore[arg-type]
    assert store.load(Account, "acc-1", upto=1).version == 1


def test_save_stores_its_metadata_with_every_event(store: minies.EventStore) -> None:
    account = Account(id="acc-m")
    account.record(AccountOpened(owner="ann", balance=1))
    account.deposit(2)
    assert store.save(account, metadata={"user": "ann", "request": 7}) == 2
    assert [r.metadata for r in store.read("acc-m")] == [{"user": "ann", "request": 7}] * 2


def test_a_payload_that_no_longer_decodes_is_named_by_its_version(store: minies.EventStore) -> None:
    opened(store, "acc-9")
    store.append("acc-9", [MoneyDeposited(amount=5)], aggregate_type="Account")
    with store.transaction():
        tamper(store, "UPDATE events SET data = ? WHERE position = 2", ('{"amount": "five"}',))
    with pytest.raises(
        minies.SchemaError, match=r"(event 2 of aggregate 'acc-9'|event at position 2 .*) does not decode"
    ):
        store.load(Account, "acc-9")


def test_a_save_rolled_back_with_its_transaction_leaves_the_aggregate_as_it_was(store: minies.EventStore) -> None:
    """Never an acknowledgement without the rows: saving the same object again writes them."""
    account = Account(id="acc-1")
    account.record(AccountOpened(owner="ann", balance=10))
    with pytest.raises(RuntimeError, match="changed my mind"), store.transaction():
        assert store.save(account) == 1
        raise RuntimeError("changed my mind")
    assert store.version("acc-1") == 0
    assert (account.version, len(account.pending)) == (1, 1)  # as before the save
    assert store.save(account) == 1
    assert [r.version for r in store.read("acc-1")] == [1] and account.pending == ()


def test_a_save_rolled_back_with_an_inner_block_only_is_pending_again_and_the_outer_commits(
    store: minies.EventStore,
) -> None:
    kept, undone = Account(id="kept"), Account(id="undone")
    kept.record(AccountOpened(owner="ann", balance=1))
    undone.record(AccountOpened(owner="bob", balance=2))
    with store.transaction():
        store.save(kept)
        with pytest.raises(RuntimeError), store.transaction():
            store.save(undone)
            undone.record(MoneyDeposited(amount=5))  # recorded after the save, before the rollback
            raise RuntimeError
    assert (kept.pending, [type(e) for e in undone.pending]) == ((), [AccountOpened, MoneyDeposited])
    assert store.version("kept") == 1 and store.version("undone") == 0
    assert store.save(undone) == 2
    assert store.load(Account, "undone").balance == 7


def test_saves_kept_by_an_inner_block_are_undone_when_the_outer_one_rolls_back(store: minies.EventStore) -> None:
    account = Account(id="acc-1")
    account.record(AccountOpened(owner="ann", balance=10))
    with pytest.raises(RuntimeError), store.transaction():
        with store.transaction():
            store.save(account)
        raise RuntimeError
    assert len(account.pending) == 1 and store.save(account) == 1


def test_a_save_retried_after_an_unknown_outcome_writes_its_events_once(
    store: minies.EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit succeeded but the caller was told it failed (a lost connection): the same
    object saved again finds its events by their ids and returns the version."""
    account = Account(id="acc-1")
    account.record(AccountOpened(owner="ann", balance=10))
    account.record(MoneyDeposited(amount=5))
    from minies._transactions import Transactions

    grouped = Transactions.grouped

    def committed_but_lost(self: Transactions, work: object) -> object:
        grouped(self, work)  # type: ignore[arg-type]
        raise minies.StorageError("the connection was lost during the commit; its outcome is unknown")

    monkeypatch.setattr(Transactions, "grouped", committed_but_lost)
    with pytest.raises(minies.StorageError):
        store.save(account)
    monkeypatch.undo()
    assert store.version("acc-1") == 2 and len(account.pending) == 2
    assert store.save(account) == 2  # a retry: nothing written twice
    assert [r.version for r in store.read("acc-1")] == [1, 2] and account.pending == ()
    account.record(MoneyDeposited(amount=1))
    assert store.save(account) == 3  # and the next events get ids of their own


def test_a_save_that_failed_for_sure_is_retried_as_a_new_write(store: minies.EventStore) -> None:
    account = Account(id="acc-1")
    account.record(AccountOpened(owner="ann", balance=10))
    store.append("acc-1", [AccountOpened(owner="bob", balance=1)], aggregate_type="Account")
    with pytest.raises(minies.ConcurrencyError):
        store.save(account)
    fresh = store.load(Account, "acc-1")
    fresh.record(MoneyDeposited(amount=1))
    assert store.save(fresh) == 2
