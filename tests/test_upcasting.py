from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import shop_today
from conftest import run_python, tamper
from domain import AccountOpened, MoneyDeposited
from hypothesis import given
from hypothesis import strategies as st
from shop_today import CityChanged, Customer, CustomerRegistered, Ordered, StreetChanged, todays_upcasters

import minies
from minies import _events, _upcasters

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def upcasting() -> Iterator[None]:
    with todays_upcasters():
        yield


@pytest.fixture
def shop(tmp_path: Path) -> str:
    copy = tmp_path / "shop_v1.db"
    shutil.copy(FIXTURES / "shop_v1.db", copy)
    return str(copy)


def test_old_file_reads_as_todays_events(upcasting: None, shop: str) -> None:
    with minies.EventStore(shop) as store:
        records = [(r.position, r.event_type, r.data) for r in store.read_all()]
        assert records == [
            (1, "CustomerRegistered", CustomerRegistered(name="Ann")),  # renamed
            (2, "StreetChanged", StreetChanged(street="1 Main St")),  # split ...
            (2, "CityChanged", CityChanged(city="Oslo")),  # ... in two
            (3, "Ordered", Ordered(customer_id="cust-1", total=129.99, currency="EUR")),  # v1 -> v2 -> v3
            # position 4 (Ping) is dropped
            (5, "Ordered", Ordered(customer_id="cust-1", total=5.5, currency="EUR")),
        ]
        customer = store.load(Customer, "cust-1")
        assert (customer.name, customer.street, customer.city, customer.version) == ("Ann", "1 Main St", "Oslo", 3)
        assert [r.data for r in store.read("cust-1")] == [  # one aggregate's events: today's classes too
            CustomerRegistered(name="Ann"),
            StreetChanged(street="1 Main St"),
            CityChanged(city="Oslo"),
        ]
        assert [r.data for r in store.read("cust-1", after=1, upto=2)] == [
            StreetChanged(street="1 Main St"),
            CityChanged(city="Oslo"),
        ]
        assert store.check_events() == []
        old = [(r.event_type, r.data) for r in store.read_all(raw=True, event_types=["Ordered"])]
        assert old[0] == ("Ordered", {"customer_id": "cust-1", "amount": 129.99})  # history exactly as written
        assert store.verify().ok  # upcasting never touches the stored history
        store.append("order-3", [Ordered(customer_id="c", total=1.0, currency="NOK")], aggregate_type="Order")
        assert store.event_types() == [
            ("AddressChanged", 1, 1),
            ("CustomerSignedUp", 1, 1),
            ("Ordered", 1, 2),
            ("Ordered", 3, 1),
            ("Ping", 1, 1),
        ]
        assert [r.data.currency for r in store.read_all(event_types=["Ordered"])] == ["EUR", "EUR", "NOK"]
        assert store.verify().ok  # v3 events chain their schema version too


def test_projections_catch_up_through_upcasters(upcasting: None, shop: str) -> None:
    class Totals(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE totals (order_id TEXT, total REAL, currency TEXT)")

        def on_Ordered(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute(
                "INSERT INTO totals VALUES (?, ?, ?)", (event.aggregate_id, event.data.total, event.data.currency)
            )

    class Cities(minies.Projection):  # sees a type that exists only as half of a split
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE cities (customer_id TEXT, city TEXT)")

        def on_CityChanged(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute("INSERT INTO cities VALUES (?, ?)", (event.aggregate_id, event.data.city))

    with minies.EventStore(shop, projections=[Totals(), Cities()]) as store:
        assert store.query("SELECT * FROM totals ORDER BY order_id") == [
            ("order-1", 129.99, "EUR"),
            ("order-2", 5.5, "EUR"),
        ]
        assert store.query("SELECT * FROM cities") == [("cust-1", "Oslo")]
        assert [r.position for r in store.read_all(event_types=[CustomerRegistered])] == [
            1
        ]  # stored under its old name


def test_without_upcasters_old_events_fail_clearly(shop: str) -> None:
    with minies.EventStore(shop) as store:
        problems = store.check_events()
    assert [(p, t) for p, t, _ in problems] == [(3, "Ordered"), (5, "Ordered")]
    assert "no upcaster turns Ordered v1 into v2" in problems[0][2]


def test_cli_checks_a_file_against_a_deploy(shop: str) -> None:
    tests = str(Path(__file__).parent)
    script = "import shop_today; shop_today.install()"
    (Path(shop).parent / "deploy.py").write_text(f"import sys; sys.path.insert(0, {tests!r})\n{script}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "minies", "check", shop, "--import", "deploy"],
        capture_output=True,
        text=True,
        cwd=Path(shop).parent,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5 of 5 events read" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "minies", "check", shop, "--import", "shop_today"],
        capture_output=True,
        text=True,
        cwd=tests,
    )
    assert bad.returncode == 1 and "position 3 (Ordered)" in bad.stdout
    types = subprocess.run([sys.executable, "-m", "minies", "types", shop], capture_output=True, text=True)
    assert "CustomerSignedUp" in types.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "minies", "check", shop, "--import", "no_such_module"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "cannot import 'no_such_module'" in missing.stderr


def test_an_event_newer_than_the_code_is_an_error(upcasting: None, tmp_path: Path) -> None:
    path = str(tmp_path / "future.db")
    code = (
        "import sys, minies\nfrom typing import ClassVar\n"
        "class Ordered(minies.Event):\n    schema_version: ClassVar[int] = 4\n    customer_id: str\n"
        "    total: float\n    currency: str\n    channel: str\n"
        "with minies.EventStore(sys.argv[1]) as s:\n"
        "    s.append('o', [Ordered(customer_id='c', total=1, currency='EUR', channel='web')], aggregate_type='Order')\n"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True)
    with minies.EventStore(path) as store:
        with pytest.raises(minies.SchemaError, match="schema version 4, but this code knows up to v3"):
            list(store.read_all())
        (raw,) = store.read_all(raw=True)  # unless you ask for the payload as stored
        assert raw.data == {"customer_id": "c", "total": 1.0, "currency": "EUR", "channel": "web"}
        assert [r.data for r in store.read("o", raw=True)] == [raw.data]


def test_chain_validation(upcasting: None) -> None:
    class Gappy(minies.Event):
        schema_version: ClassVar[int] = 4
        x: int

    minies.upcaster(Gappy, 1)(lambda d: d)
    minies.upcaster(Gappy, 3)(lambda d: d)
    with pytest.raises(minies.SchemaError, match="Gappy's upcasters have a gap: nothing turns v2 into v3"):
        minies.EventStore(":memory:")
    minies.upcaster(Gappy, 2)(lambda d: d)
    minies.EventStore(":memory:").close()
    minies.upcaster(Gappy, 4)(lambda d: d)
    with pytest.raises(minies.SchemaError, match="Gappy has an upcaster from v4, but its class is at v4"):
        minies.EventStore(":memory:")
    del _upcasters.upcasters[("Gappy", 4)]
    minies.rename("A1", "B1")
    minies.rename("B1", "A1")
    with pytest.raises(minies.SchemaError, match="renames form a cycle: A1 -> B1 -> A1"):
        minies.EventStore(":memory:")
    with pytest.raises(ValueError, match="from_version"):
        minies.upcaster(Gappy, 0)


def test_a_misbehaving_upcaster_is_named(upcasting: None, shop: str) -> None:
    del _upcasters.upcasters[("Ping", 1)]
    minies.upcaster("Ping", 1)(lambda d: "oops")  # type: ignore[arg-type,return-value]
    with (
        minies.EventStore(shop) as store,
        pytest.raises(minies.SchemaError, match="position 4 .Ping v1.* returned str"),
    ):
        list(store.read_all())


def test_snapshots_written_before_a_version_bump_are_ignored(upcasting: None) -> None:
    from minies import _snapshots

    class Ledger(minies.Aggregate):
        snapshot_every: ClassVar[int] = 1
        total: int = 0

    before = _snapshots.fingerprint(Ledger)  # computed, and cached ...
    minies.rename("LedgerOpenedOld", "LedgerOpened")
    assert _snapshots.fingerprint(Ledger) != before  # ... until the event schema changes


def test_the_first_file_format_migrates(tmp_path: Path) -> None:
    copy = tmp_path / "schema_v1.db"
    shutil.copy(FIXTURES / "schema_v1.db", copy)
    with minies.EventStore(str(copy)) as store:
        assert store._conn.pragma("user_version") == 4
        assert store.verify().ok
        assert [r.event_type for r in store.read_all()] == ["AccountOpened", "MoneyDeposited", "OrderPlaced"]
        store.append("acc-1", [shop_today.CityChanged(city="Bergen")], aggregate_type="Account")
        assert store.verify().ok


payloads = st.fixed_dictionaries(
    {"customer_id": st.text(max_size=20), "amount": st.floats(allow_nan=False, allow_infinity=False)}
)


@given(payload=payloads)
def test_upcast_then_reencode_is_stable(payload: dict[str, Any]) -> None:
    with todays_upcasters():
        [(event_type, upcast)] = _upcasters.upcast("Ordered", 1, dict(payload))
        event = msgspec.convert(upcast, Ordered)
        again = msgspec.json.decode(msgspec.json.encode(event))
        assert _upcasters.upcast(event_type, 3, again) == [("Ordered", upcast)]  # today's shape: untouched
        assert event == Ordered(customer_id=payload["customer_id"], total=payload["amount"], currency="EUR")


# ---------------------------------------------------------------------------- newer than the code
OLD_TAGGED = """
import sys, minies
class Tagged(minies.Event):  # this process's code predates Tagged v2 (which added a field b)
    a: int
with minies.EventStore(sys.argv[1], readonly=sys.argv[2] == "ro") as store:
    try:
        print(list(store.read_all()))
    except minies.SchemaError as e:
        print("read_all:", e.position, e)
    try:
        print(list(store.read("t-1")))
    except minies.SchemaError as e:
        print("read:", e.position, e)
    print("check:", [(p, t) for p, t, _ in store.check_events()])
    print("first:", [r.data for r in store.read_all(limit=1)])
"""


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_old_code_refuses_events_newer_than_its_class_instead_of_dropping_fields(tmp_path: Path, mode: str) -> None:
    copy = tmp_path / "schema_v2.db"
    shutil.copy(FIXTURES / "schema_v2.db", copy)
    out = run_python(OLD_TAGGED, str(copy), mode).stdout
    assert "read_all: 2 event at position 2 (Tagged v2) cannot be upcast" in out
    assert "written by newer code" in out
    assert "read: 2 event at position 2" in out
    assert "check: [(2, 'Tagged')]" in out
    assert "first: [Tagged(a=1)]" in out


NEWER_WRITER = """
import sys, minies
from typing import ClassVar
class Late(minies.Event):  # the newer deploy: Late v2 added a field b
    schema_version: ClassVar[int] = 2
    a: int
    b: int = 0
@minies.upcaster("Late", 1)
def add_b(data):
    return {**data, "b": 0}
with minies.EventStore(sys.argv[1]) as store:
    store.append("l-1", [Late(a=2, b=5)], aggregate_type="L")
"""


def test_old_code_notices_newer_events_that_another_process_writes_while_it_is_open(
    tmp_path: Path, no_upcasting: None
) -> None:
    class Late(minies.Event):  # this process predates Late v2
        a: int

    path = str(tmp_path / "late.db")
    with minies.EventStore(path) as store:
        store.append("l-1", [Late(a=1)], aggregate_type="L")
        for _ in range(2):  # (twice: the second read is answered from the store's cache)
            assert [r.data for r in store.read_all(event_types=[Late])] == [Late(a=1)]
        run_python(NEWER_WRITER, path)
        with pytest.raises(minies.SchemaError, match="written by newer code"):
            list(store.read_all(event_types=[Late]))
        with pytest.raises(minies.SchemaError, match="written by newer code"):
            list(store.read("l-1"))


def test_the_event_types_table_keeps_one_schema_per_version(tmp_path: Path) -> None:
    copy = tmp_path / "schema_v2.db"
    shutil.copy(FIXTURES / "schema_v2.db", copy)
    minies.EventStore(str(copy)).close()  # migrates 2 -> 3
    con = sqlite3.connect(copy)
    rows = con.execute("SELECT event_type, schema_version, json_schema FROM minies_event_types").fetchall()
    assert [(t, v) for t, v, _ in rows] == [("Tagged", 1), ("Tagged", 2)]
    assert '"a"' in rows[0][2] and rows[1][2] == "{}"  # the v1 row kept its schema; v2 was never described

    class Versioned(minies.Event):
        schema_version: ClassVar[int] = 1
        a: int

    with minies.EventStore(str(copy)) as store:
        store.append("v", [Versioned(a=1)], aggregate_type="V")

    class Versioned(minies.Event):  # type: ignore[no-redef]  # the same class, a field later
        schema_version: ClassVar[int] = 2
        a: int
        b: str

    with minies.EventStore(str(copy)) as store:
        store.append("v", [Versioned(a=1, b="x")], aggregate_type="V")
    rows = con.execute(
        "SELECT schema_version, json_schema FROM minies_event_types WHERE event_type = 'Versioned'"
    ).fetchall()
    assert [v for v, _ in rows] == [1, 2]
    assert '"b"' not in rows[0][1] and '"b"' in rows[1][1]
    con.close()


# ---------------------------------------------------------------------------- registering and misbehaving upcasters
@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_an_upcaster_needs_a_whole_from_version(version: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"from_version must be an int >= 1, got {version!r}")):
        minies.upcaster("Anything", version)  # type: ignore[arg-type]


@pytest.mark.parametrize("old", ["", 5, None])
def test_a_rename_needs_an_old_name(old: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"old must be an event type name, got {old!r}")):
        minies.rename(old, "New")  # type: ignore[arg-type]


def test_registering_refreshes_every_cache_and_a_second_function_for_one_step_is_refused() -> None:
    with todays_upcasters():
        before = _events.generation

        def first(data: dict[str, Any]) -> dict[str, Any]:
            return data

        minies.upcaster("Registered", 1)(first)
        assert _events.generation == before + 1  # caches keyed by generation never see an old value again
        minies.upcaster("Registered", 1)(first)  # the same function again (a re-run module): fine
        minies.rename("RegisteredOld", "Registered")
        assert _events.generation == before + 3
        assert _upcasters.upcasters[("Registered", 1)] is first

        def second(data: dict[str, Any]) -> dict[str, Any]:
            return data

        with pytest.raises(
            minies.SchemaError, match="^Registered v1 already has an upcaster: test_registering_.*first$"
        ):
            minies.upcaster("Registered", 1)(second)
        assert _upcasters.upcasters[("Registered", 1)] is first


def test_a_stored_event_newer_than_its_class_says_so() -> None:
    with pytest.raises(minies.SchemaError) as caught:
        _upcasters.upcast("Ordered", 9, {})
    assert str(caught.value) == (
        "a stored Ordered event is at schema version 9, but this code knows up to v3: "
        "it was written by newer code; upgrade, or read raw dicts"
    )


def test_an_upcaster_that_never_finishes_is_stopped_after_exactly_a_thousand_steps() -> None:
    calls = []

    def forever(data: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
        calls.append(1)
        return [("Looping", 1, data)]

    with todays_upcasters():
        minies.upcaster("Looping", 1)(forever)
        with pytest.raises(minies.SchemaError, match=r"^upcasting Looping v1 did not finish after 1000 steps$"):
            _upcasters.upcast("Looping", 1, {})
    assert len(calls) == 1000


@pytest.mark.parametrize(
    "item",
    [("A", 1), ["A", 1, {}], ("A", "1", {}), ("A", 1, []), (1, 1, {}), ("A", 1, {}, 4)],
)
def test_an_upcaster_returning_a_bad_split_says_which_item(item: object) -> None:
    with todays_upcasters():
        minies.upcaster("Splitting", 2)(lambda data: [item])
        with pytest.raises(minies.SchemaError) as caught:
            _upcasters.upcast("Splitting", 2, {})
    assert str(caught.value) == (
        f"the upcaster for Splitting v2 returned {item!r:.80} in its list; "
        "each item must be (event_type, schema_version, payload)"
    )


def test_the_snapshot_signature_lists_versioned_types_and_renames() -> None:
    with todays_upcasters():
        versions, renames = _upcasters.signature()
        assert ("Ordered", 3) in versions and all(v != 1 for _, v in versions)  # type: ignore[misc]
        assert renames == sorted(_upcasters.renames.items())
        assert ("CustomerSignedUp", "CustomerRegistered") in renames  # type: ignore[operator]


def test_a_missing_last_step_or_a_step_beyond_the_class_is_refused_on_open() -> None:
    class Stepped(minies.Event):
        schema_version: ClassVar[int] = 3
        a: int

    with todays_upcasters():
        minies.upcaster(Stepped, 1)(lambda data: data)  # v1 -> v2, but nothing turns v2 into v3
        with pytest.raises(minies.SchemaError, match=r"^Stepped's upcasters have a gap: nothing turns v2 into v3$"):
            minies.EventStore(":memory:")
        minies.upcaster(Stepped, 2)(lambda data: data)
        minies.EventStore(":memory:").close()  # complete: fine
        minies.upcaster(Stepped, 3)(lambda data: data)
        with pytest.raises(minies.SchemaError) as caught:
            minies.EventStore(":memory:")
        assert str(caught.value) == (
            "Stepped has an upcaster from v3, but its class is at v3: an upcaster turns v3 into v4; "
            "bump Stepped.schema_version"
        )


def test_a_payload_that_no_longer_decodes_is_named_by_its_position(location: str) -> None:
    """A class changed in place (no new schema_version, no upcaster): reads name the first
    event that does not decode, and check_events lists every one."""

    class Priced(minies.Event):
        amount: int

    with minies.EventStore(location) as store:
        store.append("p", [Priced(amount=1)], aggregate_type="Item")
        store.append("q", [Priced(amount=2), Priced(amount=3)], aggregate_type="Item")
        tamper(store, "UPDATE events SET data = ? WHERE position IN (2, 3)", ('{"amount": "two"}',))
        with pytest.raises(
            minies.SchemaError,
            match=r"event at position 2 \(Priced\) does not decode .*; add an upcaster or change the class back$",
        ) as caught:
            list(store.read_all())
        assert caught.value.position == 2
        assert [(p, t) for p, t, _ in store.check_events()] == [(2, "Priced"), (3, "Priced")]
        [(_, _, message), _] = store.check_events()
        assert message.startswith("event at position 2 (Priced) does not decode with the current class: ")


def test_a_limited_read_decodes_only_the_events_it_returns(location: str) -> None:
    """``limit`` bounds what is fetched, not only what is returned: a payload that no longer
    decodes just past the limit is never touched, even beyond the first page."""

    class Metered(minies.Event):
        event_type: ClassVar[str] = f"Metered{uuid.uuid4().hex}"
        amount: int

    with minies.EventStore(location) as store:
        store.append("m", [Metered(amount=i) for i in range(1, 2_004)], aggregate_type="Meter")
        tamper(store, "UPDATE events SET data = ? WHERE position = 2003", ("[1]",))  # not even a dict
        assert [r.data.amount for r in store.read_all(limit=2_002)] == list(range(1, 2_003))
        assert [r.data["amount"] for r in store.read_all(limit=2_002, raw=True)] == list(range(1, 2_003))
        for raw in (False, True):
            with pytest.raises(minies.SchemaError, match=r"^event at position 2003 \(Metered\w+\) does not decode"):
                list(store.read_all(limit=2_003, raw=raw))


def test_check_events_reports_progress_and_every_failure_of_a_long_log(store: minies.EventStore) -> None:
    class Counted(minies.Event):
        n: int

    store.append("c", [Counted(n=i) for i in range(20_005)], aggregate_type="Counter")
    seen: list[tuple[int, int]] = []
    assert store.check_events(progress=lambda done, total: seen.append((done, total))) == []
    assert seen == [(10_000, 20_005), (20_000, 20_005)]
    with store.transaction():
        tamper(store, "UPDATE events SET data = ? WHERE position IN (1, 15000, 20005)", ('{"n": "x"}',))
    problems = store.check_events()
    assert [(p, t) for p, t, _ in problems] == [(1, "Counted"), (15_000, "Counted"), (20_005, "Counted")]


def test_raw_reads_page_through_long_logs(store: minies.EventStore) -> None:
    store.append("long", [MoneyDeposited(amount=i) for i in range(4_500)], aggregate_type="Account")
    assert [r.data["amount"] for r in store.read_all(raw=True)] == list(range(4_500))
    assert sum(1 for _ in store.read("long", raw=True)) == 4_500


def test_filtered_and_limited_reads_while_upcasting_page_through_long_logs(
    store: minies.EventStore, upcasting: None
) -> None:
    """With upcasters registered, a type filter applies after upcasting, page by page."""
    assert _upcasters.active()
    store.append("long", [MoneyDeposited(amount=i) for i in range(4_500)], aggregate_type="Account")
    store.append("other", [AccountOpened(owner="o", balance=0)], aggregate_type="Account")
    assert [r.data.amount for r in store.read_all(event_types=[MoneyDeposited])] == list(range(4_500))
    assert [r.position for r in store.read_all(event_types=[AccountOpened])] == [4_501]
    assert [r.position for r in store.read_all(event_types=[MoneyDeposited], after=4_000, limit=3)] == [
        4_001,
        4_002,
        4_003,
    ]


class MeterReading(minies.Event):
    value: int


class Metered(minies.Event):
    value: int


def test_a_step_or_rename_registered_after_a_read_applies_to_the_next_read(tmp_path: Path) -> None:
    with todays_upcasters(), minies.EventStore(str(tmp_path / "r.db")) as store:
        store.append("meter", [MeterReading(value=1)], aggregate_type="Meter")
        try:
            MeterReading.schema_version = 2
            minies.upcaster(MeterReading, 1)(lambda data: {"value": data["value"] * 10})
            assert [r.data for r in store.read_all()] == [MeterReading(value=10)]
            MeterReading.schema_version = 3
            minies.upcaster(MeterReading, 2)(lambda data: {"value": data["value"] + 1})
            assert [r.data for r in store.read_all()] == [MeterReading(value=11)]
            minies.rename("MeterReading", Metered)  # stored v1 now reads as Metered v1
            assert [(r.event_type, r.data) for r in store.read_all()] == [("Metered", Metered(value=1))]
        finally:
            MeterReading.schema_version = 1


def test_a_stored_payload_that_is_not_an_object_is_named_in_raw_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with minies.EventStore(path) as store:
        store.append("a", [MoneyDeposited(amount=1), MoneyDeposited(amount=2)], aggregate_type="Account")
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER events_no_update")
    con.execute("UPDATE events SET data = '[1, 2]' WHERE position = 2")
    con.commit()
    con.close()
    with minies.EventStore(path) as store, pytest.raises(minies.SchemaError) as caught:
        list(store.read_all(raw=True))
    assert str(caught.value) == (
        "event at position 2 (MoneyDeposited) does not decode with the current class: "
        "a payload must be a JSON object, got '[1, 2]'; add an upcaster or change the class back"
    )


def test_splits_within_splits_and_drops_come_out_in_order() -> None:
    with todays_upcasters():
        minies.upcaster("Tree", 1)(lambda d: [("Leaf", 1, {"n": 1}), ("Tree", 2, {}), ("Leaf", 1, {"n": 4})])
        minies.upcaster("Tree", 2)(lambda d: [("Leaf", 1, {"n": 2}), ("Gone", 1, {}), ("Leaf", 1, {"n": 3})])
        minies.upcaster("Gone", 1)(lambda d: None)
        minies.upcaster("Leaf", 1)(lambda d: {"n": d["n"] * 10})
        minies.upcaster("Seed", 1)(lambda d: {**d, "grown": True})
        minies.upcaster("Seed", 2)(lambda d: [("Leaf", 1, {"n": 5}), ("Leaf", 2, d)])
        assert _upcasters.upcast("Tree", 1, {}) == [("Leaf", {"n": n}) for n in (10, 20, 30, 40)]
        assert _upcasters.upcast("Seed", 1, {"a": 1}) == [("Leaf", {"n": 50}), ("Leaf", {"a": 1, "grown": True})]
        assert _upcasters.upcast("Gone", 1, {}) == []
        assert _upcasters.upcast("Leaf", 2, {"n": 7}) == [("Leaf", {"n": 7})]


def test_an_upcast_event_keeps_its_envelope_and_a_type_with_no_class_reads_as_a_dict(tmp_path: Path) -> None:
    name = f"Legacy{uuid.uuid4().hex}"

    class Legacy(minies.Event):
        event_type: ClassVar[str] = name
        amount: int

    path = str(tmp_path / "legacy.db")
    with minies.EventStore(path) as store:
        store.append("acc-1", [Legacy(amount=5)], aggregate_type="Account", metadata={"by": "ann"})
        store.append("acc-1", [Legacy(amount=6)], aggregate_type="Account", expected_version=1)
        minies.rename(name, f"{name}.Renamed")  # a type no class here claims
        try:
            records = list(store.read_all())
        finally:
            del _upcasters.renames[name]
            _events.generation += 1
    assert [(r.event_type, r.data) for r in records] == [
        (f"{name}.Renamed", {"amount": 5}),
        (f"{name}.Renamed", {"amount": 6}),
    ]
    con = sqlite3.connect(path)
    stored = con.execute(
        "SELECT position, event_id, aggregate_id, aggregate_type, version, created_at, metadata FROM events"
    ).fetchall()
    con.close()
    assert [
        (r.position, r.event_id, r.aggregate_id, r.aggregate_type, r.version, r.timestamp, r.metadata) for r in records
    ] == [(p, i, a, at, v, datetime.fromisoformat(c), json.loads(m)) for p, i, a, at, v, c, m in stored]
    assert records[0].metadata == {"by": "ann"}
