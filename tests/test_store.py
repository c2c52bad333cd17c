from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import msgspec
import psycopg
import pytest
from conftest import owner_url, run_python, tamper
from domain import AccountOpened, Balances, MoneyDeposited, MoneyWithdrawn, OrderPlaced, SnappedAccount
from hypothesis import given, settings
from hypothesis import strategies as st

import minies
from minies._backends import postgres_sql as _pg_schema
from minies._backends import sqlite_sql as _schema


def deposit(n: int = 1) -> list[minies.Event]:
    return [MoneyDeposited(amount=i + 1) for i in range(n)]


def all_rows(store: minies.EventStore) -> list[tuple[object, ...]]:
    return [(r.position, r.aggregate_id, r.version, r.event_type) for r in store.read_all()]


# ---------------------------------------------------------------------------- append and read
def test_append_returns_new_version_and_reads_back(store: minies.EventStore) -> None:
    assert store.append("acc-1", [AccountOpened(owner="ann", balance=10)], aggregate_type="Account") == 1
    assert store.append("acc-1", deposit(2), aggregate_type="Account", expected_version=1) == 3
    events = list(store.read("acc-1"))
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.position for e in events] == [1, 2, 3]
    assert events[0].data == AccountOpened(owner="ann", balance=10)
    assert events[1].data == MoneyDeposited(amount=1)
    assert {e.aggregate_type for e in events} == {"Account"}
    assert all(e.timestamp.tzinfo is not None and e.timestamp.utcoffset().total_seconds() == 0 for e in events)
    assert abs((datetime.now(UTC) - events[0].timestamp).total_seconds()) < 60
    assert all(uuid.UUID(e.event_id).version == 7 for e in events)
    assert store.version("acc-1") == 3
    assert store.version("nobody") == 0


def test_recorded_is_immutable(store: minies.EventStore) -> None:
    store.append("a", deposit(), aggregate_type="Account")
    (record,) = store.read("a")
    with pytest.raises(AttributeError, match="immutable type: 'Recorded'"):
        record.version = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable type: 'MoneyDeposited'"):
        record.data.amount = 5  # type: ignore[misc]


def test_read_ranges(store: minies.EventStore) -> None:
    store.append("a", deposit(10), aggregate_type="Account")
    assert [e.version for e in store.read("a", after=3, upto=6)] == [4, 5, 6]
    assert [e.version for e in store.read("a", upto=0)] == []
    assert list(store.read("missing")) == []


def test_events_may_come_as_a_tuple_or_any_iterable(store: minies.EventStore) -> None:
    assert store.append("t", tuple(deposit(2)), aggregate_type="Account") == 2
    assert store.append("t", (e for e in deposit(3)), aggregate_type="Account") == 5
    assert [r.data.amount for r in store.read("t")] == [1, 2, 1, 2, 3]


def test_read_all_order_filters_and_limit(store: minies.EventStore) -> None:
    store.append("a", deposit(2), aggregate_type="Account")
    store.append("o", [OrderPlaced(customer_id="c", total=1.5)], aggregate_type="Order")
    store.append("a", [MoneyWithdrawn(amount=1)], aggregate_type="Account")
    assert [r.position for r in store.read_all()] == [1, 2, 3, 4]
    assert [r.position for r in store.read_all(after=2)] == [3, 4]
    assert [r.position for r in store.read_all(limit=3)] == [1, 2, 3]
    assert list(store.read_all(limit=0)) == []
    for bad in (-1, "3", True, 2.0):
        with pytest.raises(ValueError, match=rf"^limit must be an int >= 0 or None, got {re.escape(repr(bad))}$"):
            store.read_all(limit=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=rf"^after must be an int >= 0, got {re.escape(repr(bad))}$"):
            store.read_all(after=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=rf"^after must be an int >= 0, got {re.escape(repr(bad))}$"):
            store.read("a", after=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=rf"^upto must be an int >= 0 or None, got {re.escape(repr(bad))}$"):
            store.read("a", upto=bad)  # type: ignore[arg-type]
    assert [r.event_type for r in store.read_all(event_types=[OrderPlaced, "MoneyWithdrawn"])] == [
        "OrderPlaced",
        "MoneyWithdrawn",
    ]


def test_read_all_pages_through_large_logs(store: minies.EventStore) -> None:
    for i in range(5):
        store.append(f"a{i}", deposit(1000), aggregate_type="Account")
    positions = [r.position for r in store.read_all()]
    assert positions == list(range(1, 5001))
    assert len(list(store.read_all(after=1500, limit=2500))) == 2500
    assert [r.version for r in store.read("a4", after=990)] == list(range(991, 1001))


def test_iterators_do_not_block_writers(file_store: minies.EventStore, db_path: str) -> None:
    file_store.append("a", deposit(5000), aggregate_type="Account")
    reader = file_store.read_all()
    next(reader)
    with minies.EventStore(db_path, timeout=1) as other:
        other.append("b", deposit(), aggregate_type="Account")
    file_store.append("a", deposit(), aggregate_type="Account")
    assert sum(1 for _ in reader) == 5001  # it even sees what was appended while it paused


def test_metadata_is_stored_and_scoped(store: minies.EventStore) -> None:
    with minies.metadata_scope(correlation_id="req-1", user_id="u1"):
        with minies.metadata_scope(causation_id="cmd-1"):
            store.append("a", deposit(), aggregate_type="Account", metadata={"user_id": "u2", "ip": "::1"})
        store.append("a", deposit(), aggregate_type="Account")
    store.append("a", deposit(), aggregate_type="Account")
    first, second, third = (r.metadata for r in store.read("a"))
    assert first == {"correlation_id": "req-1", "user_id": "u2", "causation_id": "cmd-1", "ip": "::1"}
    assert second == {"correlation_id": "req-1", "user_id": "u1"}
    assert third == {}


def test_unknown_event_types_read_as_dicts(location: str) -> None:
    run_python(
        "import minies, sys\n"
        "class Secret(minies.Event):\n    code: str\n    n: int\n"
        "with minies.EventStore(sys.argv[1]) as s:\n"
        "    s.append('x', [Secret(code='abc', n=1)], aggregate_type='Vault')\n",
        location,
    )
    with minies.EventStore(location) as store:
        (record,) = store.read("x")
    assert record.event_type == "Secret"
    assert record.data == {"code": "abc", "n": 1}


# ---------------------------------------------------------------------------- concurrency control
def test_expected_version_mismatch_raises_and_writes_nothing(store: minies.EventStore) -> None:
    store.append("a", deposit(3), aggregate_type="Account")
    with pytest.raises(minies.ConcurrencyError, match="is at version 3, expected 1; reload it and retry") as info:
        store.append("a", deposit(), aggregate_type="Account", expected_version=1)
    assert (info.value.aggregate_id, info.value.expected, info.value.actual) == ("a", 1, 3)
    with pytest.raises(minies.ConcurrencyError, match="aggregate 'b' is at version 0, expected 2"):
        store.append("b", deposit(), aggregate_type="Account", expected_version=2)
    with pytest.raises(minies.ConcurrencyError, match="aggregate 'a' is at version 3, expected 0"):
        store.append("a", deposit(), aggregate_type="Account", expected_version=0)
    assert store.version("a") == 3 and store.version("b") == 0
    assert len(all_rows(store)) == 3


def break_the_version_check(location: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the append's state query report two versions too few; return what repairs it."""
    if "?schema=" not in location:
        broken = _schema.APPEND_STATE.replace("(SELECT version FROM", "(SELECT version - 2 FROM", 1)
        assert broken != _schema.APPEND_STATE
        monkeypatch.setattr(_schema, "APPEND_STATE", broken)
        return monkeypatch.undo
    dsn, _, schema = owner_url(location).partition("?schema=")
    function = _pg_schema.APPEND_STATE_FUNCTION.format(schema=f'"{schema}"').replace("CREATE", "CREATE OR REPLACE", 1)
    broken = function.replace("(SELECT max(e.version)", "(SELECT max(e.version) - 2", 1)
    assert broken != function
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(broken)

    def repair() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(function)

    return repair


def test_unique_constraint_is_the_last_line_of_defence(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the version check on purpose (the append's state query reports two versions too
    few), so only the UNIQUE (aggregate_id, version) constraint stands between the append and
    a second version 2."""
    with minies.EventStore(location) as store:
        store.append("a", deposit(3), aggregate_type="Account")
    on_postgres = "?schema=" in location
    # Fresh stores (nothing cached), opened before the break: a writable open refuses a log whose
    # functions were altered.
    stores = [minies.EventStore(location) for _ in range(2)]
    repair = break_the_version_check(location, monkeypatch)
    # (PostgreSQL holds a one-event insert until the COMMIT: both sizes)
    for store, events in zip(stores, (deposit(), deposit(2)), strict=True):
        clash = r"^aggregate 'a' is at version \d, expected 1;"
        with store, pytest.raises(minies.ConcurrencyError, match=clash) as caught:
            store.append("a", events, aggregate_type="Account")
        # The version is read again after the failed insert, except where PostgreSQL's failed
        # statement ended what the transaction can read: there it says "at least one more".
        actual = 2 if on_postgres and len(events) == 2 else 3
        assert (caught.value.expected, caught.value.actual) == (1, actual)
    repair()
    with minies.EventStore(location) as store:
        assert [r.version for r in store.read("a")] == [1, 2, 3] and store.verify().ok


def test_a_reused_event_id_that_only_the_unique_constraint_catches_is_a_duplicate(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break the idempotency check on purpose (it finds no recorded id), so only the
    UNIQUE (event_id) constraint stands between the append and a second event with one id."""
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    with minies.EventStore(location) as store:
        store.append("a", deposit(2), aggregate_type="Account", event_ids=ids)
        sql = _pg_schema if "?schema=" in location else _schema
        monkeypatch.setattr(sql, "EVENT_BY_ID", sql.EVENT_BY_ID + " AND false")
        for events, reused in ((deposit(), ids[1:]), (deposit(2), ids)):  # one event, then a batch
            message = f"event id '{reused[0]}' is already used by another event; pick a new id"
            with pytest.raises(minies.DuplicateEventError, match=f"^{re.escape(message)}$") as caught:
                store.append("b", events, aggregate_type="Account", event_ids=reused)
            assert caught.value.event_id == reused[0]
        assert [r.aggregate_id for r in store.read_all()] == ["a", "a"] and store.verify().ok


def in_one_group_commit(store: minies.EventStore, calls: list[Callable[[], object]]) -> list[object]:
    """Each call in a thread of its own, all queued (in this order) behind a commit in flight,
    so that one group commit takes them: each call's result, or its MiniesError."""
    outcomes: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            outcomes[k] = calls[k]()
        except minies.MiniesError as e:
            outcomes[k] = e

    threads = []
    store._tx.lock.acquire()  # a commit in flight: every call queues
    try:
        for k in range(len(calls)):
            threads.append(threading.Thread(target=run, args=(k,)))
            threads[-1].start()
            deadline = time.monotonic() + 30
            while len(store._tx.queue) < k + 1:
                assert time.monotonic() < deadline
                time.sleep(0.0005)
    finally:
        store._tx.lock.release()
    for t in threads:
        t.join(30)
    return outcomes


def test_a_clash_inside_a_group_commit_fails_only_its_own_write(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence inside a shared transaction (on PostgreSQL the clash shows at
    the end of the write's savepoint): that write fails, the others commit."""
    with minies.EventStore(location) as store:
        store.append("a", deposit(3), aggregate_type="Account")
    with minies.EventStore(location) as store:
        break_the_version_check(location, monkeypatch)  # (after the open: it refuses an altered log)
        outcomes = in_one_group_commit(
            store,
            [
                lambda aggregate=aggregate: store.append(aggregate, deposit(), aggregate_type="Account")
                for aggregate in "bac"
            ],
        )
        assert outcomes[0] == 1 and outcomes[2] == 1
        assert isinstance(outcomes[1], minies.ConcurrencyError) and str(outcomes[1]).startswith(
            "aggregate 'a' is at version 3, expected 1;"
        )
        assert [(r.aggregate_id, r.version) for r in store.read_all()] == [
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 1),
            ("c", 1),
        ]


def test_idempotent_retry_with_event_ids(store: minies.EventStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    assert store.append("a", deposit(3), aggregate_type="Account", event_ids=ids, expected_version=0) == 3
    store.append("a", deposit(), aggregate_type="Account")
    # A retry after a timeout: same ids, same batch -> no-op, same version.
    assert store.append("a", deposit(3), aggregate_type="Account", event_ids=ids, expected_version=0) == 3
    assert store.append("a", deposit(3), aggregate_type="Account", event_ids=ids) == 3
    assert store.version("a") == 4
    assert [r.event_id for r in store.read("a", upto=3)] == ids
    same = [MoneyDeposited(amount=7)] * 3  # identical events: only the ids' order tells them apart
    same_ids = [str(uuid.uuid4()) for _ in range(3)]
    assert store.append("s", same, aggregate_type="Account", event_ids=same_ids) == 3
    with pytest.raises(
        minies.DuplicateEventError,
        match=f"^event id '{same_ids[0]}' is already used by an append with a different batch;",
    ) as caught:
        store.append("s", same, aggregate_type="Account", event_ids=[same_ids[1], same_ids[0], same_ids[2]])
    assert caught.value.event_id == same_ids[0]
    assert store.version("s") == 3


@pytest.mark.parametrize(
    ("aggregate", "events", "ids", "expected", "clash", "detail"),
    [  # same id, different event
        ("a", [MoneyDeposited(amount=99)], [0], minies.ANY, 0, "by a different event (MoneyDeposited at version 1)"),
        ("other", [MoneyDeposited(amount=1)], [0], minies.ANY, 0, "by an event of aggregate 'a'"),
        (  # partial overlap
            "a",
            [MoneyDeposited(amount=1), MoneyDeposited(amount=5)],
            [0, None],
            minies.ANY,
            0,
            "by an earlier append that held only part of this batch",
        ),
        (
            "a",
            [MoneyDeposited(amount=2)],
            [1],
            minies.ANY,
            1,
            "by an append with a different batch (this is only part of it)",
        ),
        ("a", [MoneyDeposited(amount=1)], [0], 3, 0, "by an append with a different batch (this is only part of it)"),
        ("b", deposit(2), [0, 1], minies.ANY, 0, "by an event of aggregate 'a'"),
        ("a", deposit(2), [0, 1], 3, 0, "by an append at version 1, not 4"),  # same events, claimed at another version
        (
            "a",
            [MoneyDeposited(amount=1), MoneyDeposited(amount=3)],
            [0, 1],
            minies.ANY,
            1,
            "by a different event (MoneyDeposited at version 2)",
        ),
    ],
)
def test_reused_event_id_for_something_else_is_an_error(
    store: minies.EventStore,
    aggregate: str,
    events: list[minies.Event],
    ids: list[int | None],
    expected: object,
    clash: int,
    detail: str,
) -> None:
    stored = [str(uuid.uuid4()), str(uuid.uuid4())]
    store.append("a", deposit(2), aggregate_type="Account", event_ids=stored)
    event_ids = [stored[i] if i is not None else str(uuid.uuid4()) for i in ids]
    message = f"event id '{stored[clash]}' is already used {detail}; pick a new id"
    with pytest.raises(minies.DuplicateEventError, match=f"^{re.escape(message)}$") as caught:
        store.append(aggregate, events, aggregate_type="Account", event_ids=event_ids, expected_version=expected)  # type: ignore[arg-type]
    assert caught.value.event_id == stored[clash]
    assert len(all_rows(store)) == 2


# ---------------------------------------------------------------------------- bad input
class NotAnEvent:
    amount = 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"aggregate_id": 42}, TypeError, "^aggregate_id must be a str, got int: 42$"),
        ({"aggregate_id": ""}, ValueError, "^aggregate_id must not be empty$"),
        ({"events": []}, ValueError, "^nothing to append to 'a': the batch of events is empty$"),
        ({"events": iter([])}, ValueError, "^nothing to append to 'a': the batch of events is empty$"),
        ({"events": [NotAnEvent()]}, TypeError, "expected an instance of a minies.Event subclass, got NotAnEvent"),
        ({"events": [MoneyDeposited(amount=1), {"amount": 2}]}, TypeError, "got dict"),
        (
            {"events": MoneyDeposited(amount=1)},
            TypeError,
            "^events must be a sequence of events; wrap a single event in a list$",
        ),
        ({"events": "MoneyDeposited"}, TypeError, "^events must be a list of minies.Event, got str$"),
        ({"events": b"x"}, TypeError, "^events must be a list of minies.Event, got bytes$"),
        ({"events": {"amount": 1}}, TypeError, "^events must be a list of minies.Event, got dict$"),
        ({"events": 7}, TypeError, "^events must be a list of minies.Event, got int$"),
        ({"events": [MoneyDeposited(amount=object())]}, TypeError, "cannot be stored as JSON"),  # type: ignore[arg-type]
        ({"aggregate_type": None}, TypeError, "^aggregate_type must be a non-empty str, got None$"),
        ({"aggregate_type": ""}, TypeError, "^aggregate_type must be a non-empty str, got ''$"),
        ({"expected_version": -1}, TypeError, "^expected_version must be an int >= 0 or minies.ANY, got -1$"),
        ({"expected_version": "1"}, TypeError, "^expected_version must be an int >= 0 or minies.ANY, got '1'$"),
        ({"expected_version": True}, TypeError, "^expected_version must be an int >= 0 or minies.ANY, got True$"),
        ({"metadata": {"x": object()}}, TypeError, "metadata cannot be stored as JSON"),
        ({"metadata": {1: "x"}}, TypeError, "^metadata keys must be str, got 1$"),
        ({"metadata": ["x"]}, TypeError, r"^metadata must be a dict, got list: \['x'\]$"),
        (
            {"metadata": {"x": functools.reduce(lambda inner, _: [inner], range(5_000), [])}},
            ValueError,
            "^metadata is nested too deeply to be stored as JSON$",
        ),
        ({"event_ids": ["not-a-uuid"]}, ValueError, "^event id 'not-a-uuid' is not a UUID string$"),
        ({"event_ids": [42]}, ValueError, "^event id 42 is not a UUID string$"),
        (
            {"event_ids": "0191e6a0-0000-7000-8000-000000000000"},
            TypeError,
            "^event_ids must be a list of UUID strings, one per event$",
        ),
        ({"event_ids": 7}, TypeError, "^event_ids must be a list of UUID strings, one per event$"),
        (
            {"event_ids": [str(uuid.uuid4())] * 2, "events": deposit(2)},
            ValueError,
            "^event_ids contains the same id twice$",
        ),
        ({"event_ids": [str(uuid.uuid4())] * 2}, ValueError, "^event_ids has 2 ids for 1 events; give one per event$"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    file_store: minies.EventStore, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    file_store.append("a", deposit(), aggregate_type="Account")
    call = {"aggregate_id": "a", "events": deposit(), "aggregate_type": "Account", **kwargs}
    aggregate_id = call.pop("aggregate_id")
    events = call.pop("events")
    with pytest.raises(error, match=message):
        file_store.append(aggregate_id, events, **call)  # type: ignore[arg-type]
    assert all_rows(file_store) == [(1, "a", 1, "MoneyDeposited")]


def test_integers_beyond_64_bits_round_trip(store: minies.EventStore) -> None:
    store.append("a", [MoneyDeposited(amount=2**70), MoneyDeposited(amount=-(2**65))], aggregate_type="Account")
    assert [r.data.amount for r in store.read("a")] == [2**70, -(2**65)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_never_a_corrupt_row(store: minies.EventStore, value: float) -> None:
    store.append("o", [OrderPlaced(customer_id="c", total=1.5)], aggregate_type="Order")
    with pytest.raises(ValueError, match="would not read back as itself .JSON has no NaN or infinity"):
        store.append("o", [OrderPlaced(customer_id="c", total=value)], aggregate_type="Order")
    assert [r.data.total for r in store.read("o")] == [1.5]


def test_closed_store_says_so(location: str) -> None:
    store = minies.EventStore(location)
    store.close()
    store.close()
    with pytest.raises(minies.MiniesError, match="closed"):
        store.append("a", deposit(), aggregate_type="Account")
    with pytest.raises(minies.MiniesError, match="closed"):
        store.version("a")


# ---------------------------------------------------------------------------- transactions
def test_transaction_commits_several_appends_atomically(store: minies.EventStore) -> None:
    with store.transaction():
        store.append("a", deposit(), aggregate_type="Account")
        store.append("b", deposit(), aggregate_type="Account")
    assert store.version("a") == store.version("b") == 1
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.append("a", deposit(), aggregate_type="Account")
        store.append("c", deposit(), aggregate_type="Account")
        raise RuntimeError("boom")
    assert store.version("a") == 1 and store.version("c") == 0
    assert len(all_rows(store)) == 2


def test_failed_append_inside_a_transaction_rolls_back_only_itself(store: minies.EventStore) -> None:
    with store.transaction():
        store.append("a", deposit(), aggregate_type="Account")
        with pytest.raises(minies.ConcurrencyError, match="aggregate 'a' is at version 1, expected 0"):
            store.append("a", deposit(), aggregate_type="Account", expected_version=0)
        store.append("a", deposit(), aggregate_type="Account", expected_version=1)
    assert [r.version for r in store.read("a")] == [1, 2]
    assert [r.position for r in store.read_all()] == [1, 2]


def test_a_failed_nested_block_rolls_back_to_its_savepoint_and_the_outer_block_commits(
    store: minies.EventStore,
) -> None:
    with store.transaction():
        store.append("a", deposit(), aggregate_type="Account")
        with pytest.raises(RuntimeError, match="inner"), store.transaction():
            store.append("b", deposit(2), aggregate_type="Account")  # written, then undone
            store.append("a", deposit(), aggregate_type="Account")
            raise RuntimeError("inner")
        store.append("c", deposit(), aggregate_type="Account")
    assert [(r.position, r.aggregate_id, r.version) for r in store.read_all()] == [(1, "a", 1), (2, "c", 1)]
    assert store.version("b") == 0 and store.verify().ok


HOLD_THE_WRITE_LOCK = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.read()
con.execute("ROLLBACK")
"""


def test_a_lock_held_past_the_timeout_is_a_storage_error(db_path: str) -> None:
    with minies.EventStore(db_path, timeout=0.2) as store:
        store.append("a", deposit(), aggregate_type="Account")
        holder = subprocess.Popen(  # another process's writer, holding on (locks are per process)
            [sys.executable, "-c", HOLD_THE_WRITE_LOCK, db_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        try:
            with pytest.raises(minies.StorageError, match="locked by another connection and stayed locked for 0.2s"):
                store.append("a", deposit(), aggregate_type="Account")
            with pytest.raises(minies.StorageError, match="stayed locked for 0.2s"), store.transaction():
                pass
        finally:
            holder.communicate("", timeout=60)  # closing its stdin lets it go
        assert store.append("a", deposit(), aggregate_type="Account") == 2


def test_close_checkpoints_the_wal_even_while_another_store_has_the_file_open(tmp_path: object, db_path: str) -> None:
    other = minies.EventStore(db_path)  # keeps the file open: SQLite alone would not checkpoint
    try:
        store = minies.EventStore(db_path)
        store._conn.pragma("wal_autocheckpoint", 0)
        for i in range(50):
            store.append(f"a{i % 5}", deposit(), aggregate_type="Account")
        head = store.head()
        with open(db_path, "rb") as f:
            before = f.read()
        store.close()
        copy = db_path + ".copy"
        with open(db_path, "rb") as f, open(copy, "wb") as g:
            shipped_bytes = f.read()
            g.write(shipped_bytes)  # the .db alone, as a user ships it
        assert before != shipped_bytes  # the close moved the log into the file
        with minies.EventStore(copy, readonly=True) as shipped:
            assert shipped.head() == head and shipped.verify().ok
    finally:
        other.close()


# ---------------------------------------------------------------------------- files
def test_file_is_wal_and_identifies_itself(db_path: str) -> None:
    minies.EventStore(db_path).close()
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("PRAGMA application_id").fetchone() == (0x6D696E69,)
    assert con.execute("PRAGMA user_version").fetchone() == (4,)
    columns = [row[1] for row in con.execute("PRAGMA table_info(events)")]
    assert columns[:9] == [
        "position",
        "event_id",
        "aggregate_id",
        "aggregate_type",
        "event_type",
        "version",
        "data",
        "metadata",
        "created_at",
    ]
    indexes = {
        tuple(col[2] for col in con.execute(f"PRAGMA index_info('{name}')"))
        for _, name, unique, *_ in con.execute("PRAGMA index_list(events)")
        if unique
    }
    assert ("aggregate_id", "version") in indexes and ("event_id",) in indexes
    con.close()


def test_durability_sets_synchronous_and_every_connection_is_set_up_alike(db_path: str) -> None:
    with minies.EventStore(db_path) as full, minies.EventStore(db_path, durability="normal") as normal:
        assert full._conn.pragma("synchronous") == 2
        assert normal._conn.pragma("synchronous") == 1
        for store in (full, normal):  # a forgotten key's bytes zeroed; a big commit's WAL trimmed after
            assert store._conn.pragma("secure_delete") == 1
            assert store._conn.pragma("journal_size_limit") == 64 * 1024 * 1024
    with pytest.raises(ValueError, match=r"^path is empty; give a file path, a postgresql:// URL, or ':memory:'$"):
        minies.EventStore("")
    with pytest.raises(ValueError, match="durability"):
        minies.EventStore(db_path, durability="fast")  # type: ignore[arg-type]


def test_events_survive_reopen_and_vacuum(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        for i in range(50):
            store.append(f"a{i % 7}", deposit(3), aggregate_type="Account")
        before = [(r.position, r.event_id) for r in store.read_all()]
    con = sqlite3.connect(db_path)
    con.execute("VACUUM")
    con.close()
    with minies.EventStore(db_path) as store:
        assert [(r.position, r.event_id) for r in store.read_all()] == before
        assert store.append("a0", deposit(), aggregate_type="Account") == 25
        assert store.verify().ok


def test_the_stock_sqlite3_module_cannot_change_history(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("o1", [OrderPlaced(customer_id="c1", total=129.99)], aggregate_type="Order")
    con = sqlite3.connect(db_path)
    assert con.execute("SELECT json_extract(data, '$.total') FROM events").fetchone() == (129.99,)
    for statement, refusal in (
        ("UPDATE events SET data = '{\"total\": 0}'", "events are immutable; UPDATE is refused"),
        ("DELETE FROM events", "events are immutable; DELETE is refused"),
        ("INSERT OR REPLACE INTO events SELECT * FROM events", "a new event must take the next position"),
        (
            "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version, data,"
            " metadata, created_at, hash) VALUES (7, 'x', 'o1', 'Order', 'OrderPlaced', 2, '{}', '{}', '', x'00')",
            "a new event must take the next position",
        ),
        # REPLACE deletes the row it collides with and fires no DELETE trigger: refused per key
        (
            "INSERT OR REPLACE INTO events SELECT 2, event_id, 'o2', aggregate_type, event_type, 1, data, metadata,"
            " created_at, hash, schema_version FROM events",
            "this event_id is already recorded",
        ),
        (
            "INSERT OR REPLACE INTO events SELECT 2, 'new-id', aggregate_id, aggregate_type, event_type, version,"
            " '{}', metadata, created_at, hash, schema_version FROM events",
            "this (aggregate_id, version) is already recorded",
        ),
    ):
        with pytest.raises(sqlite3.IntegrityError, match=re.escape(refusal)):
            con.execute(statement)
    con.close()
    with minies.EventStore(db_path) as store:
        assert [r.data for r in store.read("o1")] == [OrderPlaced(customer_id="c1", total=129.99)]


def bytes_of(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: object, db_path: str) -> None:
    with open(db_path, "wb") as f:
        f.write(b"hello, this is a text file, not a database" * 100)
    before = bytes_of(db_path)
    with pytest.raises(
        minies.SchemaError,
        match=rf"^cannot open {re.escape(repr(db_path))}: it is not a SQLite database \(nor a minies one\)$",
    ):
        minies.EventStore(db_path)
    assert bytes_of(db_path) == before
    assert not os.path.exists(db_path + "-wal")


def test_a_foreign_sqlite_file_is_refused_untouched(db_path: str) -> None:
    shown = re.escape(repr(db_path))
    not_minies = rf"^{shown} is a SQLite database but not a minies one \(it holds data and no minies application id\); "
    for change, message in [
        ("CREATE TABLE users (id INTEGER PRIMARY KEY)", not_minies + "open another path$"),
        ("DROP TABLE users; PRAGMA user_version = 3", not_minies),  # many applications number their schema so
        ("PRAGMA application_id = 12345", rf"^{shown} is a SQLite database of another application"),
    ]:
        con = sqlite3.connect(db_path)
        con.executescript(change)
        con.close()
        before = bytes_of(db_path)
        with pytest.raises(minies.SchemaError, match=message):
            minies.EventStore(db_path)
        assert bytes_of(db_path) == before


def test_a_newer_schema_is_refused_untouched(db_path: str) -> None:
    minies.EventStore(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    before = bytes_of(db_path)
    with pytest.raises(minies.SchemaError, match="newer minies .schema version 99"):
        minies.EventStore(db_path)
    assert bytes_of(db_path) == before


def test_missing_directory_and_read_only_files(tmp_path: object, db_path: str) -> None:
    with pytest.raises(minies.StorageError, match="does not exist"):
        minies.EventStore(os.path.join(db_path, "nope", "x.db"))
    with minies.EventStore(db_path) as store:
        store.append("a", deposit(), aggregate_type="Account")
    with minies.EventStore(db_path, readonly=True) as reader:
        assert reader.version("a") == 1
        with pytest.raises(minies.StorageError, match="opened with readonly=True"):
            reader.append("a", deposit(), aggregate_type="Account")
        assert reader.version("a") == 1
    with pytest.raises(minies.StorageError, match="no such file"):
        minies.EventStore(db_path + ".missing", readonly=True)
    missing_folder = os.path.join(db_path + ".nope", "x.db")  # reading creates nothing: no such file, not no folder
    with pytest.raises(minies.StorageError, match=rf"^cannot open {re.escape(repr(missing_folder))}: no such file$"):
        minies.EventStore(missing_folder, readonly=True)


def test_writing_through_a_read_only_store_says_how_it_was_opened(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposit(), aggregate_type="Account")
    with minies.EventStore(db_path, readonly=True) as reader:
        with pytest.raises(
            minies.StorageError,
            match=r"^cannot append to 'a': this store was opened with readonly=True; open it without to write$",
        ):
            reader.append("a", deposit(), aggregate_type="Account")
        assert reader.version("a") == 1


def test_a_directory_or_an_unopenable_file_is_one_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    for readonly in (False, True):
        with pytest.raises(
            minies.StorageError, match=rf"^cannot open {re.escape(repr(str(folder)))}: it is a directory, not a file$"
        ):
            minies.EventStore(str(folder), readonly=readonly)
    assert not list(folder.iterdir())
    unopenable = r"the file cannot be opened \(missing, a directory, or no permission\)$"
    path = str(tmp_path / "blocked.db")  # a writable file whose -wal cannot be created: not "read-only"
    with minies.EventStore(path) as store:
        store.append("a", deposit(), aggregate_type="Account")
    os.mkdir(path + "-wal")
    with pytest.raises(minies.StorageError, match=rf"^cannot open {re.escape(repr(path))}: {unopenable}"):
        minies.EventStore(path)
    os.rmdir(path + "-wal")
    with minies.EventStore(path) as store:
        assert store.version("a") == 1


def test_an_empty_or_old_file_opened_read_only_says_what_it_is(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(minies.SchemaError, match=rf"^{re.escape(repr(str(empty)))} is empty, not a minies database$"):
        minies.EventStore(str(empty), readonly=True)
    old = tmp_path / "v1.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "schema_v1.db", old)
    with pytest.raises(
        minies.SchemaError,
        match=rf"^{re.escape(repr(str(old)))} has schema version 1; open it writable once to migrate$",
    ):
        minies.EventStore(str(old), readonly=True)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposit(10), aggregate_type="Account")
        pages = store._conn.pragma("page_count")
        store._conn.pragma("max_page_count", pages + 2)
        big = [OrderPlaced(customer_id="x" * 2000, total=1.0) for _ in range(200)]
        full = (
            "cannot append to 'o': the disk is full (or the file reached its size limit); nothing from this call "
            "was written, free some space and retry"
        )
        with pytest.raises(minies.StorageError, match=f"^{re.escape(full)}$"):
            store.append("o", big, aggregate_type="Order")
        assert store.version("o") == 0
        assert store.version("a") == 10
        store._conn.pragma("max_page_count", 1 << 30)  # space freed: usable again
        assert store.append("o", big, aggregate_type="Order") == 200
        assert store.verify().ok


# ---------------------------------------------------------------------------- threads and processes
def test_one_store_shared_by_threads(location: str) -> None:
    errors: list[BaseException] = []
    with minies.EventStore(location, durability="normal") as store:

        def work(worker: int) -> None:
            try:
                for i in range(100):
                    store.append(f"t{worker}", deposit(), aggregate_type="Account", expected_version=i)
                    with store.transaction():
                        v = store.version("shared")
                        store.append("shared", deposit(), aggregate_type="Account", expected_version=v)
                    list(store.read(f"t{worker}"))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert [store.version(f"t{w}") for w in range(4)] == [100] * 4
        assert [r.version for r in store.read("shared")] == list(range(1, 401))
        assert [r.position for r in store.read_all()] == list(range(1, 801))


def test_threads_reading_every_way_while_others_append_share_the_store_safely(db_path: str) -> None:
    """Every read path takes the store's lock per page (a connection is not for two threads
    at once): filtered, limited and raw reads of a log longer than a page, while writers append."""
    errors: list[BaseException] = []
    stop = threading.Event()
    with minies.EventStore(db_path, durability="normal") as store:
        for i in range(3):
            store.append(f"seed-{i}", deposit(1_000), aggregate_type="Account")

        def write(worker: int) -> None:
            try:
                for i in range(60):
                    store.append(f"w{worker}", deposit(50), aggregate_type="Account", expected_version=50 * i)
            except BaseException as e:
                errors.append(e)

        def read(kind: int) -> None:
            try:
                while not stop.is_set():
                    if kind == 0:
                        positions = [r.position for r in store.read_all(event_types=[MoneyDeposited])]
                    elif kind == 1:
                        positions = [r.position for r in store.read_all(raw=True)]
                    else:
                        positions = [r.position for r in store.read_all(limit=2_500)]
                    assert positions == list(range(1, len(positions) + 1)) and len(positions) >= 2_500
            except BaseException as e:
                errors.append(e)

        writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
        readers = [threading.Thread(target=read, args=(k,)) for k in range(3)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join(120)
        stop.set()
        for t in readers:
            t.join(120)
        assert errors == []
        assert store.head()[0] == 3_000 + 2 * 60 * 50


WRITER = """
import sys, minies
from domain import MoneyDeposited
path, worker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
retries = 0
with minies.EventStore(path, durability="normal") as store:
    for i in range(rounds):
        store.append(f"own-{worker}", [MoneyDeposited(amount=i)], aggregate_type="Account", expected_version=i)
        for attempt in range(10_000):  # bounded: a livelock fails the test instead of hanging it
            assert attempt < 9_999, "10,000 conflicts in a row"
            v = store.version("shared")
            try:
                store.append("shared", [MoneyDeposited(amount=int(worker))], aggregate_type="Account",
                             expected_version=v)
                break
            except minies.ConcurrencyError:
                retries += 1
print(retries)
"""


def test_processes_appending_to_one_file(location: str) -> None:
    import subprocess
    import sys

    minies.EventStore(location).close()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    rounds = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, location, str(w), str(rounds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    with minies.EventStore(location) as store:
        for w in range(4):
            assert [r.data.amount for r in store.read(f"own-{w}")] == list(range(rounds))
        shared = list(store.read("shared"))
        assert [r.version for r in shared] == list(range(1, 4 * rounds + 1))
        assert sorted(r.data.amount for r in shared) == sorted(list(range(4)) * rounds)
        records = list(store.read_all())
        assert [r.position for r in records] == list(range(1, 8 * rounds + 1))
        assert len({r.event_id for r in records}) == len(records)
        assert store.verify().ok


def test_cached_tip_notices_other_writers_and_rollbacks(location: str) -> None:
    with minies.EventStore(location) as one, minies.EventStore(location) as two:
        for _ in range(3):
            one.append("x", deposit(), aggregate_type="Account")  # one now caches x's version and the head
        two.append("x", deposit(2), aggregate_type="Account")
        two.append("y", deposit(), aggregate_type="Account")
        assert one.append("x", deposit(), aggregate_type="Account") == 6
        with pytest.raises(RuntimeError, match="rolled back"), one.transaction():
            one.append("x", deposit(), aggregate_type="Account")
            raise RuntimeError("rolled back")
        assert one.append("x", deposit(), aggregate_type="Account", expected_version=6) == 7
        with one.transaction():
            one.append("x", deposit(), aggregate_type="Account")
            one.append("z", deposit(), aggregate_type="Account")
        assert one.append("x", deposit(), aggregate_type="Account") == 9
        assert [r.position for r in two.read_all()] == list(range(1, 12))
        assert one.verify().ok


def test_a_stream_keeps_one_aggregate_type(file_store: minies.EventStore) -> None:
    file_store.append("big", deposit(), aggregate_type="Ledger")
    for _ in range(2):  # once with the tip cached, once after another connection wrote
        with pytest.raises(
            ValueError, match="aggregate 'big' is a Ledger, not a Other: one stream keeps one aggregate_type"
        ):
            file_store.append("big", deposit(), aggregate_type="Other")
        with minies.EventStore(file_store.path) as other:
            other.append("elsewhere", deposit(), aggregate_type="Other")
    with pytest.raises(ValueError, match="is a Ledger, not a Other"), file_store.transaction():
        file_store.append("big", deposit(), aggregate_type="Other")
    assert [(r.aggregate_type, r.version) for r in file_store.read("big")] == [("Ledger", 1)]
    assert file_store.append("big", deposit(), aggregate_type="Ledger") == 2


# ---------------------------------------------------------------------------- group commit
def test_threads_share_commits_and_each_append_keeps_its_own_outcome(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Balances()]) as store:
        commits = []
        store._conn.set_commit_hook(lambda: bool(commits.append(1)))
        accepted: list[tuple[str, int]] = []
        conflicts = [0]
        lock = threading.Lock()

        def worker(n: int) -> None:
            for i in range(40):
                version = store.append(f"own-{n}", deposit(), aggregate_type="Account", expected_version=i)
                with lock:
                    accepted.append((f"own-{n}", version))
                while True:  # bounded below: a conflict means someone else won, so progress is made
                    seen = store.version("shared")
                    try:
                        store.append("shared", deposit(), aggregate_type="Account", expected_version=seen)
                        break
                    except minies.ConcurrencyError:
                        with lock:
                            conflicts[0] += 1
                        assert conflicts[0] < 100_000

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        events = list(store.read_all())
        assert [r.position for r in events] == list(range(1, 8 * 80 + 1))  # gap-free, nothing lost or doubled
        assert store.version("shared") == 8 * 40 and all(store.version(f"own-{n}") == 40 for n in range(8))
        assert sorted(accepted) == sorted((f"own-{n}", v) for n in range(8) for v in range(1, 41))
        assert len(commits) < len(events)  # appends shared commits
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        store.rebuild("Balances")
        assert store.query("SELECT * FROM balances ORDER BY account_id") == live
        assert store.verify().ok


def test_a_failed_group_commit_fails_every_append_in_it_with_the_same_error(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("before", deposit(), aggregate_type="Account")
        outcomes: dict[int, object] = {}

        def worker(n: int) -> None:
            try:
                outcomes[n] = store.append(f"a{n}", deposit(), aggregate_type="Account")
            except minies.MiniesError as e:
                outcomes[n] = e

        store._tx.lock.acquire()  # a commit in flight: the four appends queue behind it
        try:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(store._tx.queue) < 4:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            store._conn.set_commit_hook(lambda: True)  # the next commit fails
        finally:
            store._tx.lock.release()
        for t in threads:
            t.join(30)
        store._conn.set_commit_hook(None)
        messages = {str(e) for e in outcomes.values()}
        assert len(outcomes) == 4 and all(isinstance(e, minies.StorageError) for e in outcomes.values())
        assert len({id(e) for e in outcomes.values()}) == 4  # one exception each: threads raise their own
        assert len(messages) == 1 and "cannot commit" in messages.pop()
        assert [r.aggregate_id for r in store.read_all()] == ["before"]  # none of them was written
        assert store.append("a0", deposit(), aggregate_type="Account", expected_version=0) == 1


def test_a_transaction_never_takes_another_threads_queued_write_into_its_rollback(location: str) -> None:
    """Inside ``transaction()`` a write joins that transaction, never the group-commit queue:
    another thread's write waiting there is committed on its own, whatever the block does."""
    with minies.EventStore(location) as store:
        outcome: dict[str, object] = {}

        def other_thread() -> None:
            outcome["b"] = store.append("b", deposit(), aggregate_type="Account")

        thread = threading.Thread(target=other_thread)
        with pytest.raises(RuntimeError, match="^the block fails$"), store.transaction():
            store.append("a", deposit(), aggregate_type="Account")
            thread.start()  # its append queues behind this transaction
            deadline = time.monotonic() + 30
            while not store._tx.queue:
                assert time.monotonic() < deadline, "the other thread's append never queued"
                time.sleep(0.001)
            store.append("a2", deposit(), aggregate_type="Account")
            raise RuntimeError("the block fails")
        thread.join(30)
        assert outcome == {"b": 1}
        assert [r.aggregate_id for r in store.read_all()] == ["b"]  # "b" acknowledged and kept; "a", "a2" rolled back


def test_appends_after_a_failed_nested_block_take_the_positions_it_gave_back(location: str) -> None:
    """The nested block's event was inserted, then its savepoint rolled back: what the store
    had learnt of the log from it (the head, the stream's version) is forgotten too."""
    with minies.EventStore(location, projections=[Interrupting()]) as store:
        with store.transaction():
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
            with pytest.raises(ValueError, match="^refused$"), store.transaction():
                store.append("b", [MoneyDeposited(amount=2)], aggregate_type="Account")
                store.append("a", [MoneyDeposited(amount=3)], aggregate_type="Account")
                raise ValueError("refused")
            assert store.version("a") == 1 and store.version("b") == 0
            store.append("a", [MoneyDeposited(amount=4)], aggregate_type="Account", expected_version=1)
            store.append("c", [MoneyDeposited(amount=5)], aggregate_type="Account")
        assert [(r.position, r.aggregate_id, r.version) for r in store.read_all()] == [
            (1, "a", 1),
            (2, "a", 2),
            (3, "c", 1),
        ]
        assert store.query("SELECT amount FROM deposits") == [(1,), (4,), (5,)] and store.verify().ok


class Interrupting(minies.Projection):
    """Ctrl-C arrives while an append's projection runs (the 13th deposit's)."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE deposits (amount INTEGER)")

    def on_MoneyDeposited(self, db: minies.Database, event: minies.Recorded) -> None:
        if event.data.amount == 13:
            raise KeyboardInterrupt
        db.execute("INSERT INTO deposits VALUES (?)", (event.data.amount,))


def test_an_interrupted_append_is_interrupted_and_writes_nothing(location: str) -> None:
    with minies.EventStore(location, projections=[Interrupting()]) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        with pytest.raises(KeyboardInterrupt):
            store.append("a", [MoneyDeposited(amount=2), MoneyDeposited(amount=13)], aggregate_type="Account")
        assert store.version("a") == 1 and store.query("SELECT amount FROM deposits") == [(1,)]
        assert store.append("a", [MoneyDeposited(amount=3)], aggregate_type="Account") == 2


def test_metadata_that_is_not_an_object_reads_back_under_value(location: str) -> None:
    """Another tool may have stored a non-object metadata; reading never fails on it."""
    with minies.EventStore(location) as store:
        store.append("a", deposit(), aggregate_type="Account", metadata={"user_id": "u"})
        tamper(store, "UPDATE events SET metadata = '[1, 2]'")
        assert [r.metadata for r in store.read_all()] == [{"value": [1, 2]}]
        assert [r.metadata for r in store.read("a")] == [{"value": [1, 2]}]


appends_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.one_of(st.just(minies.ANY), st.integers(0, 3)),
        st.integers(1, 2),  # events in the append
        st.sampled_from([None, 0, 1]),  # event ids: fresh, or one of two fixed batches (retries, clashes)
    ),
    min_size=1,
    max_size=8,
)
FIXED_IDS = [[str(uuid.UUID(int=(k << 8) + i)) for i in range(2)] for k in range(2)]


def model_outcomes(requests: list[tuple[str, object, int, int | None]]) -> list[object]:
    """What appending the requests one after another must give: a version, or an error type."""
    versions: dict[str, int] = {}
    used: dict[str, tuple[str, int, int]] = {}  # event id -> (aggregate, first version, batch size)
    outcomes: list[object] = []
    for aggregate, expected, n, fixed in requests:
        ids = FIXED_IDS[fixed][:n] if fixed is not None else None
        current = versions.get(aggregate, 0)
        if ids is not None and ids[0] in used:
            stored_aggregate, first, size = used[ids[0]]
            same = stored_aggregate == aggregate and size == n and (expected is minies.ANY or expected + 1 == first)
            outcomes.append(first + n - 1 if same else minies.DuplicateEventError)
            continue
        if ids is not None and any(i in used for i in ids):
            outcomes.append(minies.DuplicateEventError)
            continue
        if expected is not minies.ANY and expected != current:
            outcomes.append(minies.ConcurrencyError)
            continue
        versions[aggregate] = current + n
        if ids is not None:
            for i in ids:
                used[i] = (aggregate, current + 1, n)
        outcomes.append(current + n)
    return outcomes


@settings(max_examples=40, deadline=None)
@given(requests=appends_strategy)
def test_a_group_commit_accepts_and_refuses_exactly_what_one_after_another_would(
    requests: list[tuple[str, object, int, int | None]],
) -> None:
    with minies.EventStore(":memory:") as store:

        def call(aggregate: str, expected: object, n: int, fixed: int | None) -> object:
            ids = FIXED_IDS[fixed][:n] if fixed is not None else None
            return store.append(
                aggregate, deposit(n), aggregate_type="Account", expected_version=expected, event_ids=ids
            )  # type: ignore[arg-type]

        outcomes = in_one_group_commit(store, [lambda request=request: call(*request) for request in requests])
        outcomes = [type(o) if isinstance(o, Exception) else o for o in outcomes]
        assert outcomes == model_outcomes(requests)
        assert store.verify().ok


def test_retrying_only_part_of_a_batch_is_a_duplicate_not_a_version(store: minies.EventStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    same = [MoneyDeposited(amount=7)] * 3
    assert store.append("p", same, aggregate_type="Account", event_ids=ids) == 3
    for part in (ids[:1], ids[:2], ids[1:], ids[2:]):
        with pytest.raises(
            minies.DuplicateEventError, match="by an append with a different batch .this is only part of it."
        ):
            store.append("p", same[: len(part)], aggregate_type="Account", event_ids=part)
    assert store.append("p", same, aggregate_type="Account", event_ids=ids) == 3  # the whole batch: a retry


def test_every_text_argument_is_checked_by_name(store: minies.EventStore) -> None:
    for call, name in (
        (store.read, "aggregate_id"),
        (store.version, "aggregate_id"),
        (store.subscription, "name"),
        (store.query, "sql"),
    ):
        with pytest.raises(TypeError, match=rf"^{name} must be a str, got int: 7$"):
            call(7)  # type: ignore[operator]


def test_snapshots_are_dropped_by_type_name_or_class(store: minies.EventStore) -> None:
    for drop in ("Account", SnappedAccount):
        account = SnappedAccount(id=f"s-{drop}")
        for _ in range(40):
            account.deposit(1)
        store.save(account)
        assert store.snapshot_stats()[0][:2] == ("Account", 1)
        assert store.drop_snapshots(drop) == 1 and store.snapshot_stats() == []


def test_repr_says_where_and_whether_closed(db_path: str) -> None:
    store = minies.EventStore(db_path, durability="normal")
    assert repr(store) == f"<minies.EventStore {db_path!r} (normal)>"
    store.close()
    assert repr(store) == f"<minies.EventStore {db_path!r} (closed)>"


def test_a_rolled_back_new_event_type_is_recorded_by_the_next_append(location: str) -> None:
    class Fresh(minies.Event):
        n: int

    with minies.EventStore(location) as store:
        with pytest.raises(RuntimeError, match="^undo$"), store.transaction():
            store.append("f", [Fresh(n=1)], aggregate_type="F")
            raise RuntimeError("undo")
        assert store.event_types() == []
        store.append("f", [Fresh(n=2)], aggregate_type="F")
        assert [(t, v) for t, v, _ in store.event_types()] == [("Fresh", 1)]
        assert store.query("SELECT event_type FROM minies_event_types") == [("Fresh",)]


def test_each_new_type_records_its_json_schema_or_an_empty_one_if_msgspec_cannot_describe_it(
    store: minies.EventStore,
) -> None:
    class Loose(minies.Event):
        anything: object = None  # stores fine; msgspec has no JSON schema for `object`

    store.append("l", [Loose(anything=[1, "a"]), MoneyDeposited(amount=1)], aggregate_type="Loose")
    schemas = dict(store.query("SELECT event_type, json_schema FROM minies_event_types"))
    assert schemas["Loose"] == "{}"
    assert json.loads(schemas["MoneyDeposited"])["$defs"]["MoneyDeposited"]["required"] == ["amount"]
    assert next(r.data for r in store.read("l")) == Loose(anything=[1, "a"])


def test_info_says_what_the_file_holds(location: str) -> None:
    with minies.EventStore(location, projections=[Balances()]) as store:
        store.append("a", deposit(2), aggregate_type="Account")
        store.append("b", deposit(), aggregate_type="Account")
        store.subscription("mailer").poll(lambda r: None, limit=2)
        info = store.info()
    assert info.schema_version == store._conn.sql.SCHEMA_VERSION  # 4 for a file, 5 on PostgreSQL
    assert (info.events, info.aggregates, info.forgotten_subjects) == (3, 2, 0)
    assert [(name, version, position) for name, version, position, _ in info.projections] == [("Balances", 1, 3)]
    assert [(name, position) for name, position, _ in info.subscriptions] == [("mailer", 2)]


def test_query_and_verify_inside_a_transaction_see_its_writes_and_cannot_write(location: str) -> None:
    with minies.EventStore(location) as store:
        with store.transaction():
            store.append("a", deposit(2), aggregate_type="Account")
            assert store.query("SELECT count(*) FROM events") == [(2,)]  # the block's own writes
            with pytest.raises(minies.QueryError, match="read-only"):
                store.query("DELETE FROM minies_subscriptions")
            assert store.verify().ok
            store.append("a", deposit(1), aggregate_type="Account")
        assert store.version("a") == 3 and store.query("SELECT count(*) FROM events") == [(3,)]


def test_unknown_durability_and_timeout_are_refused_before_opening(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be 'full' or 'normal', got 'fast'"):
        minies.EventStore(str(tmp_path / "x.db"), durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0, got -1"):
        minies.EventStore(str(tmp_path / "x.db"), timeout=-1)
    assert not (tmp_path / "x.db").exists()


class PlacedTotals(minies.Projection):
    event_types: ClassVar = [OrderPlaced]

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE placed_totals (position INTEGER PRIMARY KEY, total REAL NOT NULL)")

    def handle_batch(self, db: minies.Database, events: list[minies.Recorded]) -> None:
        db.executemany("INSERT INTO placed_totals VALUES (?, ?)", [(e.position, e.data.total) for e in events])


def test_reads_without_any_upcasting_take_the_plain_path_and_filter_alike(location: str, no_upcasting: None) -> None:
    with minies.EventStore(location, projections=[PlacedTotals()]) as store:
        for i in range(6):  # over two pages: 2,000 deposits, then an order, ...
            store.append(f"acc-{i}", deposit(700), aggregate_type="Account")
            store.append(f"o{i}", [OrderPlaced(customer_id="c", total=float(i))], aggregate_type="Order")
        assert not store._read_view()[0]
        everything = list(store.read_all())
        assert [r.position for r in everything] == list(range(1, 4_207))
        orders = [r for r in everything if r.event_type == "OrderPlaced"]
        assert [r.position for r in store.read_all(event_types=[OrderPlaced])] == [r.position for r in orders]
        assert list(store.read_all(event_types=["OrderPlaced"], after=orders[2].position)) == orders[3:]
        deposits = [r.position for r in everything if r.event_type == "MoneyDeposited"]  # over three pages
        assert [r.position for r in store.read_all(event_types=[MoneyDeposited])] == deposits
        assert [r.position for r in store.read_all(limit=2_100)] == list(range(1, 2_101))
        assert [r.data for r in store.read_all(raw=True, event_types=[OrderPlaced])] == [
            {"customer_id": "c", "total": float(i), "items": []} for i in range(6)
        ]
        assert store.rebuild("PlacedTotals").events == 6
        assert store.query("SELECT position, total FROM placed_totals") == [(r.position, r.data.total) for r in orders]
        seen: list[int] = []
        assert store.subscription("orders", event_types=[OrderPlaced]).poll(lambda r: seen.append(r.position)) == 6
        assert seen == [r.position for r in orders]
        assert [r.version for r in store.read("acc-5")] == list(range(1, 701))


@pytest.mark.parametrize("reads", ["upcasting_on", "no_upcasting"])
def test_every_read_returns_each_event_as_stored(db_path: str, reads: str, request: pytest.FixtureRequest) -> None:
    """Every field of the envelope, on both decoding paths, against the file read with sqlite3."""
    request.getfixturevalue(reads)
    with minies.EventStore(db_path) as store:
        store.append("acc-1", deposit(2), aggregate_type="Account", metadata={"by": "ann"})
        store.append("o1", [OrderPlaced(customer_id="c", total=2.5)], aggregate_type="Order")
        store.append("acc-1", deposit(1), aggregate_type="Account", expected_version=2)
        reads_of = {
            "read_all": list(store.read_all()),
            "limited": list(store.read_all(limit=4)),
            "filtered": list(store.read_all(event_types=[MoneyDeposited, OrderPlaced])),
            "one aggregate": list(store.read("acc-1")) + list(store.read("o1")),
        }
    con = sqlite3.connect(db_path)
    rows = con.execute(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, created_at, data, metadata"
        " FROM events ORDER BY aggregate_id DESC, version"
    ).fetchall()
    con.close()
    expected = sorted(
        (p, i, a, at, t, v, datetime.fromisoformat(c), json.loads(d), json.loads(m))
        for p, i, a, at, t, v, c, d, m in rows
    )
    for name, records in reads_of.items():
        got = sorted(
            (
                r.position,
                r.event_id,
                r.aggregate_id,
                r.aggregate_type,
                r.event_type,
                r.version,
                r.timestamp,
                msgspec.to_builtins(r.data),
                r.metadata,
            )
            for r in records
        )
        assert got == expected, name
