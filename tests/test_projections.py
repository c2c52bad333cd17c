from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import schema_objects
from domain import AccountOpened, Balances, MoneyDeposited, MoneyWithdrawn, OrderPlaced, OrderShipped, OrderSummaries
from hypothesis import given, settings
from hypothesis import strategies as st

import minies


def order(store: minies.EventStore, order_id: str, total: float = 10.0) -> None:
    store.append(order_id, [OrderPlaced(customer_id="c1", total=total)], aggregate_type="Order", expected_version=0)


def test_seed_order_summary_projection_placed_then_shipped(location: str) -> None:
    with minies.EventStore(location, projections=[OrderSummaries()]) as store:
        order(store, "o1", 129.99)
        assert store.query("SELECT status, total FROM order_summaries WHERE order_id = ?", ("o1",)) == [
            ("placed", 129.99)
        ]
        store.append("o1", [OrderShipped(carrier="DHL")], aggregate_type="Order", expected_version=1)
        assert store.query("SELECT status FROM order_summaries WHERE order_id = 'o1'") == [("shipped",)]
        (shipped_at,) = store.query("SELECT shipped_at FROM order_summaries")[0]
        assert shipped_at.startswith("20")


def test_a_failing_handler_rolls_back_the_append(store: minies.EventStore) -> None:
    class Picky(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE seen (position INTEGER)")

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute("INSERT INTO seen VALUES (?)", (event.position,))
            if getattr(event.data, "total", 0) < 0:
                raise ValueError("negative total")

    with minies.EventStore(":memory:", projections=[Picky()]) as store:
        order(store, "o1")
        with pytest.raises(ValueError, match="negative total") as info:
            order(store, "o2", -1)
        assert "Picky" in "".join(info.value.__notes__)
        assert store.version("o2") == 0
        assert store.query("SELECT position FROM seen") == [(1,)]
        order(store, "o3")
        assert store.query("SELECT position FROM seen") == [(1,), (2,)]


def test_per_type_handlers_only_see_their_types(store: minies.EventStore) -> None:
    seen: list[str] = []

    class Spy(Balances):
        def on_AccountOpened(self, db: minies.Database, event: minies.Recorded) -> None:
            seen.append(event.event_type)
            super().on_AccountOpened(db, event)

    assert Spy().wanted_types() == frozenset({"AccountOpened", "MoneyDeposited", "MoneyWithdrawn"})
    with minies.EventStore(":memory:", projections=[Spy()]) as store:
        store.append("a", [AccountOpened(owner="x", balance=5), MoneyDeposited(amount=3)], aggregate_type="Account")
        order(store, "o1")
        store.append("a", [MoneyWithdrawn(amount=1)], aggregate_type="Account")
        assert store.query("SELECT * FROM balances") == [("a", 7)]
    assert seen == ["AccountOpened"]


def test_projection_added_to_an_existing_log_catches_up(location: str) -> None:
    with minies.EventStore(location) as store:
        for i in range(10):
            order(store, f"o{i}", i)
    with minies.EventStore(location, projections=[OrderSummaries()]) as store:
        assert store.query("SELECT count(*), sum(total) FROM order_summaries") == [(10, 45.0)]
    # A writer without the projection moves the log on; the next open catches up.
    with minies.EventStore(location) as store:
        order(store, "late", 100)
    with minies.EventStore(location, projections=[OrderSummaries()]) as store:
        assert store.query("SELECT count(*) FROM order_summaries") == [(11,)]


def test_projection_catches_up_inline_after_another_writer(location: str) -> None:
    with minies.EventStore(location, projections=[OrderSummaries()]) as mine, minies.EventStore(location) as bare:
        order(mine, "o1")
        order(bare, "o2")  # a process that does not know the projection
        order(mine, "o3")
        assert mine.query("SELECT order_id FROM order_summaries ORDER BY order_id") == [("o1",), ("o2",), ("o3",)]


def test_two_stores_with_the_same_projection_never_double_apply(location: str) -> None:
    with (
        minies.EventStore(location, projections=[Balances()]) as one,
        minies.EventStore(location, projections=[Balances()]) as two,
    ):
        one.append("a", [AccountOpened(owner="x", balance=0)], aggregate_type="Account")
        for i in range(20):
            (one if i % 3 else two).append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert one.query("SELECT balance FROM balances") == [(20,)]


def test_version_bump_rebuilds_from_a_fresh_slate(location: str) -> None:
    with minies.EventStore(location, projections=[OrderSummaries()]) as store:
        order(store, "o1", 1)
        order(store, "o2", 2)

    class OrderSummariesV2(OrderSummaries):
        name = "order_summaries"
        version = 2

        def setup(self, db: minies.Database) -> None:
            super().setup(db)  # the same CREATE TABLE, with no IF NOT EXISTS: it was dropped first
            db.execute("CREATE INDEX order_totals ON order_summaries (total)")

    with minies.EventStore(location, projections=[OrderSummariesV2()]) as store:
        assert store.query("SELECT order_id FROM order_summaries ORDER BY 1") == [("o1",), ("o2",)]
        assert store.query("SELECT version FROM minies_projections") == [(2,)]
        report = store.rebuild("order_summaries")
        assert (report.name, report.events) == ("order_summaries", 2)
        assert report.events_per_second > 0
        assert "order_totals" in schema_objects(store)


def test_rebuild_reports_progress_and_is_atomic(store: minies.EventStore) -> None:
    class Breakable(OrderSummaries):
        broken = False

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            if self.broken and event.position == 15_000:
                raise RuntimeError("bad day")
            super().handle(db, event)

    projection = Breakable()
    with minies.EventStore(":memory:", projections=[projection]) as store:
        for i in range(25):
            store.append(
                f"o{i}", [OrderPlaced(customer_id="c", total=1.0)] + [OrderShipped()] * 999, aggregate_type="Order"
            )
        calls: list[tuple[int, int]] = []
        store.rebuild("order_summaries", progress=lambda done, total: calls.append((done, total)))
        assert calls[0] == (2_000, 25_000) and calls[-1] == (25_000, 25_000)
        projection.broken = True
        with pytest.raises(minies.ProjectionError, match="failed at position 15000: RuntimeError: bad day"):
            store.rebuild("order_summaries")
        assert store.query("SELECT count(*) FROM order_summaries WHERE status = 'shipped'") == [(25,)]
        with pytest.raises(minies.NotFound, match="no projection named 'nope'"):
            store.rebuild("nope")


def test_rebuild_progress_reaches_the_head_when_the_last_events_are_not_its_own() -> None:
    with minies.EventStore(":memory:", projections=[OrderSummaries()]) as store:
        store.append("o", [OrderPlaced(customer_id="c", total=1.0)] + [OrderShipped()] * 2_499, aggregate_type="Order")
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")  # a type it does not see
        calls: list[tuple[int, int]] = []
        store.rebuild("order_summaries", progress=lambda done, total: calls.append((done, total)))
        assert calls == [(2_000, 2_501), (2_500, 2_501), (2_501, 2_501)]


def test_setup_failure_names_the_projection(location: str) -> None:
    class Broken(minies.Projection):
        name = "broken"

        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE oops (")

    with minies.EventStore(location) as store:
        order(store, "o1")
    with pytest.raises(minies.ProjectionError, match="projection 'broken': setup failed"):
        minies.EventStore(location, projections=[Broken()])
    with minies.EventStore(location, projections=[Broken(), OrderSummaries()], skip_failed_projections=True) as store:
        assert list(store.failed_projections) == ["broken"]
        order(store, "o2")
        assert store.query("SELECT count(*) FROM order_summaries") == [(2,)]
    with minies.EventStore(location) as store:
        assert store.version("o1") == 1 and store.verify().ok


def test_duplicate_names_and_bad_projections() -> None:
    with pytest.raises(ValueError, match="two projections are named 'order_summaries'"):
        minies.EventStore(":memory:", projections=[OrderSummaries(), OrderSummaries()])
    with pytest.raises(TypeError, match="must be minies.Projection"):
        minies.EventStore(":memory:", projections=[object()])  # type: ignore[list-item]


TRANSACTION = "it would end the append's transaction, which is the append's own"


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("COMMIT", TRANSACTION),
        ("  commit; ", TRANSACTION),
        ("/* sneaky */ ROLLBACK", TRANSACTION),
        ("BEGIN", TRANSACTION),
        ("SAVEPOINT x", TRANSACTION),
        ("COMMIT /* minies */", TRANSACTION),  # minies' own text: not taken from the statement cache
        ("ATTACH ':memory:' AS other", "it would attach or detach a database file"),
        (
            "DELETE FROM minies_projections",
            "it would write minies_projections, which is the log or one of minies' own tables",
        ),
        ("UPDATE events SET version = 0", "it would write events, which is the log or one of minies' own tables"),
        (
            "INSERT INTO minies_snapshots VALUES (1,2,3,4,5,6)",
            "it would write minies_snapshots, which is the log or one of minies' own tables",
        ),
    ],
)
def test_projection_cannot_escape_its_transaction(sql: str, why: str) -> None:
    class Rogue(minies.Projection):
        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute(sql)

    with minies.EventStore(":memory:", projections=[Rogue()]) as store:
        with pytest.raises(
            minies.MiniesError, match=f"^a projection may not run {re.escape(repr(sql))}: {re.escape(why)}\n"
        ):
            order(store, "o1")
        assert store.version("o1") == 0
        order_free = store.query("SELECT count(*) FROM events")
        assert order_free == [(0,)]


def test_query_is_read_only_and_explains_bad_sql(store: minies.EventStore) -> None:
    order(store, "o1")
    with pytest.raises(minies.QueryError, match="read-only"):
        store.query("INSERT INTO minies_subscriptions VALUES ('x', 1, 'now')")
    with pytest.raises(minies.QueryError, match="read-only"):
        store.query("CREATE TABLE t (x INTEGER)")
    with pytest.raises(minies.QueryError, match="invalid SQL 'SELEC 1'"):
        store.query("SELEC 1")
    with pytest.raises(minies.QueryError, match="wrong parameters for 'SELECT \\?'"):
        store.query("SELECT ?", (1, 2))
    with pytest.raises(minies.QueryError, match="invalid SQL .SELECT \\* FROM nowhere.: .*nowhere"):
        store.query("SELECT * FROM nowhere")
    assert store.query("SELECT count(*) FROM minies_subscriptions") == [(0,)]
    assert store.query("SELECT count(*) FROM events WHERE aggregate_id = :id", {"id": "o1"}) == [(1,)]
    order(store, "o2")  # writes still work afterwards


log_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.lists(
            st.one_of(
                st.builds(MoneyDeposited, amount=st.integers(0, 100)),
                st.builds(MoneyWithdrawn, amount=st.integers(0, 100)),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(log=log_strategy)
def test_inline_projection_equals_its_rebuild(log: list[tuple[str, list[minies.Event]]]) -> None:
    with minies.EventStore(":memory:", projections=[Balances()]) as store:
        for account_id in ("a", "b", "c"):
            store.append(account_id, [AccountOpened(owner="o", balance=0)], aggregate_type="Account")
        for account_id, events in log:
            store.append(account_id, events, aggregate_type="Account")
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        store.rebuild("Balances")
        assert store.query("SELECT * FROM balances ORDER BY account_id") == live


REBUILDER = """
import sys, minies
from domain import OrderSummaries
class Slow(OrderSummaries):
    name = "order_summaries"
    version = int(sys.argv[2])
    def handle(self, db, event):
        if event.position == 100_000:
            print("half-way", flush=True)
        super().handle(db, event)
minies.EventStore(sys.argv[1], projections=[Slow()], durability="normal").close()
print("done", flush=True)
"""


def test_kill_during_a_rebuild_leaves_the_old_read_model(location: str) -> None:
    with minies.EventStore(location, projections=[OrderSummaries()], durability="normal") as store:
        for i in range(200):
            store.append(
                f"o{i}", [OrderPlaced(customer_id="c", total=1.0)] + [OrderShipped()] * 999, aggregate_type="Order"
            )
        before = store.query("SELECT * FROM order_summaries ORDER BY order_id")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.Popen(
        [sys.executable, "-c", REBUILDER, location, "2"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "half-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    con = minies.EventStore(location)  # no projections: look at what is on disk
    assert con.query("SELECT version FROM minies_projections") == [(1,)]
    assert con.query("SELECT * FROM order_summaries ORDER BY order_id") == before
    assert con.verify().ok
    con.close()
    with minies.EventStore(location, projections=[OrderSummaries()]) as store:
        assert store.query("SELECT * FROM order_summaries ORDER BY order_id") == before


class Strict(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE strict_orders (order_id TEXT PRIMARY KEY, total REAL NOT NULL)")

    def on_OrderPlaced(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO strict_orders VALUES (?, ?)", (event.data.customer_id, event.data.total))


def test_sql_errors_in_a_handler_are_a_projection_error_and_the_append_rolls_back(location: str) -> None:
    with minies.EventStore(location, projections=[Strict()]) as store:
        store.append("o1", [OrderPlaced(customer_id="c1", total=1.0)], aggregate_type="Order")
        with pytest.raises(
            minies.ProjectionError,
            match=r"projection 'Strict': SQL failed at position 2: (ConstraintError: UNIQUE constraint failed: strict_orders.order_id|UniqueViolation: duplicate key value violates unique constraint \"strict_orders_pkey\")",
        ) as caught:
            store.append("o2", [OrderPlaced(customer_id="c1", total=2.0)], aggregate_type="Order")
        assert caught.value.projection == "Strict" and caught.value.position == 2
        assert type(caught.value.__cause__).__name__ in ("ConstraintError", "UniqueViolation")  # the driver's own error
        assert store.version("o2") == 0 and store.query("SELECT count(*) FROM strict_orders") == [(1,)]
        with pytest.raises(
            minies.ProjectionError, match="SQL failed at position 3"
        ) as caught:  # second event of a batch
            store.append(
                "o3",
                [OrderPlaced(customer_id="c3", total=3.0), OrderPlaced(customer_id="c1", total=3.0)],
                aggregate_type="Order",
            )
        assert caught.value.position == 3
        assert store.append("o2", [OrderPlaced(customer_id="c2", total=2.0)], aggregate_type="Order") == 1


class Ledger(minies.Projection):
    """Records every event it is given, with no constraint that would refuse a second copy."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE ledger_seen (seq INTEGER NOT NULL, position INTEGER NOT NULL)")

    def __init__(self) -> None:
        self.handed: list[int] = []  # what this instance was given, whatever the table says

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO ledger_seen SELECT count(*) + 1, ? FROM ledger_seen", (event.position,))
        self.handed.append(event.position)


def test_catch_up_applies_each_event_exactly_once(location: str) -> None:
    with minies.EventStore(location, projections=[Ledger()]) as store:
        for i in range(5):
            order(store, f"o{i}", i)
    with minies.EventStore(location) as store:  # a writer without the projection
        for i in range(5, 12):
            order(store, f"o{i}", i)
    ledger = Ledger()
    with minies.EventStore(location, projections=[ledger]) as store:  # catches up on open
        assert store.query("SELECT position FROM ledger_seen ORDER BY seq") == [(p,) for p in range(1, 13)]
        assert ledger.handed == list(range(6, 13))  # caught up, not rebuilt
        order(store, "o12", 12)
        assert store.query("SELECT position FROM ledger_seen ORDER BY seq") == [(p,) for p in range(1, 14)]


class FailsLate(minies.Projection):
    """Sets up fine, then fails on one event during catch-up."""

    version = 2

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE late_seen (position INTEGER NOT NULL)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        if event.position == 7:
            raise ValueError("cannot handle position 7")
        db.execute("INSERT INTO late_seen VALUES (?)", (event.position,))


def test_a_catch_up_that_fails_on_open_leaves_the_file_unchanged(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        for i in range(10):
            order(store, f"o{i}", i)
    with open(db_path, "rb") as f:
        before = f.read()
    with pytest.raises(
        minies.ProjectionError,
        match=r"projection 'FailsLate': failed at position 7: ValueError: cannot handle position 7",
    ) as caught:
        minies.EventStore(db_path, projections=[FailsLate()])
    assert caught.value.projection == "FailsLate" and caught.value.position == 7
    with open(db_path, "rb") as f:
        assert f.read() == before
    with minies.EventStore(db_path) as store:
        assert store.query("SELECT count(*) FROM sqlite_master WHERE name IN ('late_seen', 'minies_projections')") == [
            (1,)
        ]
        assert store.query("SELECT count(*) FROM minies_projections") == [(0,)]


class BatchTotals(minies.Projection):
    """A projection that writes each batch with one executemany, and sees one type only."""

    name = "batch_totals"
    event_types: ClassVar = [OrderPlaced]

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE batch_totals (order_id TEXT PRIMARY KEY, total REAL)")

    def handle_batch(self, db: minies.Database, events: list[minies.Recorded]) -> None:
        db.executemany("INSERT INTO batch_totals VALUES (?, ?)", [(e.aggregate_id, e.data.total) for e in events])


def test_a_batch_projection_writes_with_executemany_and_sees_only_its_types(location: str) -> None:
    with minies.EventStore(location, projections=[BatchTotals()]) as store:
        store.append(
            "o1", [OrderPlaced(customer_id="c", total=5.0), OrderShipped(carrier="DHL")], aggregate_type="Order"
        )
        store.append("o2", [OrderPlaced(customer_id="c", total=7.0)], aggregate_type="Order")
        assert store.query("SELECT order_id, total FROM batch_totals ORDER BY order_id") == [("o1", 5.0), ("o2", 7.0)]
        placed_twice = [
            OrderShipped(carrier="DHL"),
            OrderPlaced(customer_id="c", total=1.0),
            OrderPlaced(customer_id="c", total=2.0),
        ]
        with pytest.raises(minies.ProjectionError, match="projection 'batch_totals'") as caught:
            store.append("o3", placed_twice, aggregate_type="Order")  # o3 twice: the batch's INSERT fails
        # the batch's first event of the projection's types (position 4 is the OrderShipped)
        assert (caught.value.projection, caught.value.position) == ("batch_totals", 5)
        assert store.head()[0] == 3 and store.rebuild("batch_totals").events == 2  # its two OrderPlaced


class Eraser(BatchTotals):
    name = "eraser"

    def handle_batch(self, db: minies.Database, events: list[minies.Recorded]) -> None:
        db.executemany("DELETE FROM events WHERE position = ?", [(e.position,) for e in events])


def test_executemany_is_screened_like_execute(location: str) -> None:
    with minies.EventStore(location, projections=[Eraser()]) as store:
        with pytest.raises(minies.MiniesError) as refused:
            store.append("o1", [OrderPlaced(customer_id="c", total=5.0)], aggregate_type="Order")
        why = (
            "it would write events, which is the log or one of minies' own tables"
            if location.endswith(".db")
            else "it writes or changes the log or minies' own tables (events)"
        )
        assert str(refused.value) == f"a projection may not run 'DELETE FROM events WHERE position = ?': {why}"
        assert store.head()[0] == 0


def test_an_explicit_name_is_inherited_and_the_class_name_default_is_not() -> None:
    class Named(minies.Projection):
        name = "order_totals"

    class NamedChild(Named):
        pass

    class Unnamed(minies.Projection):
        pass

    class UnnamedChild(Unnamed):
        pass

    assert (Named.name, NamedChild.name) == ("order_totals", "order_totals")
    assert (Unnamed.name, UnnamedChild.name) == ("Unnamed", "UnnamedChild")


class Dotted(minies.Event):
    event_type: ClassVar[str] = "shop.order-placed"
    total: float


class DottedTotals(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE dotted (position INTEGER PRIMARY KEY, total REAL NOT NULL)")

    def on_shop_order_placed(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO dotted VALUES (?, ?)", (event.position, event.data.total))


def test_a_handler_name_spells_each_character_of_the_type_that_is_not_a_letter_or_digit_as_underscore() -> None:
    with minies.EventStore(":memory:", projections=[DottedTotals()]) as store:
        store.append("o1", [Dotted(total=2.5)], aggregate_type="Order")
        assert store.query("SELECT position, total FROM dotted") == [(1, 2.5)]
        assert store.rebuild("DottedTotals").events == 1  # the read from the log filters alike
        assert store.query("SELECT position, total FROM dotted") == [(1, 2.5)]


def test_a_setup_that_raises_is_named_with_its_error_type() -> None:
    class Moody(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            raise ValueError("no tables today")

    with pytest.raises(minies.ProjectionError) as caught:
        minies.EventStore(":memory:", projections=[Moody()])
    assert str(caught.value) == "projection 'Moody': setup failed: ValueError: no tables today"


class WithView(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE viewed_orders (order_id TEXT PRIMARY KEY, total REAL NOT NULL)")
        db.execute("CREATE INDEX viewed_orders_total ON viewed_orders (total)")
        db.execute("CREATE VIEW big_orders AS SELECT order_id FROM viewed_orders WHERE total > 10")

    def on_OrderPlaced(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO viewed_orders VALUES (?, ?)", (event.aggregate_id, event.data.total))


def test_a_rebuild_drops_and_recreates_views_and_indexes_too(location: str) -> None:
    with minies.EventStore(location, projections=[WithView()]) as store:
        order(store, "o1", 5)
        order(store, "o2", 50)
        assert store.rebuild("WithView").events == 2
        assert store.query("SELECT order_id FROM big_orders") == [("o2",)]
        assert store.rebuild("WithView").events == 2
        assert store.query("SELECT count(*) FROM viewed_orders") == [(2,)]


def test_opening_a_store_whose_projections_are_up_to_date_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "quiet.db")
    with minies.EventStore(path, projections=[OrderSummaries()]) as store:
        order(store, "o1")
    watcher = sqlite3.connect(path)
    before = watcher.execute("PRAGMA data_version").fetchone()[0]
    with minies.EventStore(path, projections=[OrderSummaries()]) as store:
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before
        order(store, "o2")
        assert watcher.execute("PRAGMA data_version").fetchone()[0] != before  # the watcher does see commits
    watcher.close()


class PageCounter(minies.Projection):
    """Counts what each page hands it; fails on the page holding ``fail_at`` once it is set."""

    def __init__(self) -> None:
        self.fail_at: int | None = None

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE page_counts (n INTEGER NOT NULL)")

    def handle_batch(self, db: minies.Database, events: list[minies.Recorded]) -> None:
        if self.fail_at is not None and events[0].position <= self.fail_at <= events[-1].position:
            raise ValueError("this page is cursed")
        db.execute("INSERT INTO page_counts VALUES (?)", (len(events),))


def test_a_rebuild_over_several_pages_counts_every_event_and_its_own_time() -> None:
    with minies.EventStore(":memory:", projections=[PageCounter()]) as store:
        for i in range(4):
            store.append(f"o{i}", [OrderPlaced(customer_id="c", total=1.0)] * 1_000, aggregate_type="Order")
        store.append("o4", [OrderPlaced(customer_id="c", total=1.0)], aggregate_type="Order")
        started = time.perf_counter()
        report = store.rebuild("PageCounter")
        elapsed = time.perf_counter() - started
        assert (report.name, report.events) == ("PageCounter", 4_001)
        assert 0 < report.seconds <= elapsed  # its own duration, not a timestamp
        assert store.query("SELECT n FROM page_counts") == [(2_000,), (2_000,), (1,)]


def test_a_page_that_fails_without_a_position_is_named_by_its_range() -> None:
    counter = PageCounter()
    with minies.EventStore(":memory:", projections=[counter]) as store:
        for i in range(5):
            store.append(f"o{i}", [OrderPlaced(customer_id="c", total=1.0)] * 1_000, aggregate_type="Order")
        counter.fail_at = 3_000
        with pytest.raises(minies.ProjectionError) as caught:
            store.rebuild("PageCounter")
        assert str(caught.value) == (
            "projection 'PageCounter': failed at a position in 2001..4000: ValueError: this page is cursed"
        )
        assert caught.value.position is None


class WithTrigger(WithView):
    def setup(self, db: minies.Database) -> None:
        super().setup(db)
        db.execute(
            "CREATE TRIGGER viewed_orders_positive BEFORE INSERT ON viewed_orders WHEN NEW.total < 0"
            " BEGIN SELECT RAISE(ABORT, 'negative total'); END"
        )


def test_a_rebuild_drops_and_recreates_triggers_too() -> None:
    with minies.EventStore(":memory:", projections=[WithTrigger()]) as store:
        order(store, "o1", 50)
        assert store.rebuild("WithTrigger").events == 1
        assert store.rebuild("WithTrigger").events == 1
        assert store.query("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'viewed_orders'") == [
            ("viewed_orders_positive",)
        ]
        with pytest.raises(minies.ProjectionError, match="negative total"):
            order(store, "o2", -1)


class Envelopes(minies.Projection):
    """Keeps every field of each record it is handed (in memory: what it saw, not a table)."""

    def __init__(self) -> None:
        self.seen: list[minies.Recorded] = []

    def setup(self, db: minies.Database) -> None:
        self.seen.clear()

    def handle_batch(self, db: minies.Database, records: list[minies.Recorded]) -> None:
        self.seen.extend(records)


def test_inline_and_catch_up_projections_see_each_record_exactly_as_read_gives_it(location: str) -> None:
    inline = Envelopes()
    with minies.EventStore(location, projections=[inline]) as store:
        store.append("a", deposit_events(2), aggregate_type="Account", metadata={"user": "ann"})
        store.append("o", [OrderPlaced(customer_id="c", total=2.5)], aggregate_type="Order")
        with minies.metadata_scope(correlation_id="k"):
            store.append("a", deposit_events(1), aggregate_type="Account", expected_version=2)
        log = list(store.read_all())
    assert inline.seen == log and [r.metadata for r in log] == [{"user": "ann"}] * 2 + [{}, {"correlation_id": "k"}]
    later = LaterEnvelopes()
    with minies.EventStore(location, projections=[later]):  # a new projection catches up
        assert later.seen == log


class LaterEnvelopes(Envelopes):
    pass


def deposit_events(n: int) -> list[minies.Event]:
    return [MoneyDeposited(amount=k + 1) for k in range(n)]


def _named(name: object) -> minies.Projection:
    projection = Balances()
    projection.name = name  # type: ignore[assignment]
    return projection


@pytest.mark.parametrize(
    ("projections", "error", "message"),
    [
        ([object()], TypeError, "projections must be minies.Projection instances, got object"),
        ([_named("")], ValueError, "projection name must be a non-empty str, got ''"),
        ([_named(5)], ValueError, "projection name must be a non-empty str, got 5"),
        ([Balances(), Balances()], ValueError, "two projections are named 'Balances'; names must be unique"),
    ],
)
def test_projections_are_checked_before_the_file_is_touched(
    db_path: str, projections: list[minies.Projection], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        minies.EventStore(db_path, projections=projections)
    assert not os.path.exists(db_path)
