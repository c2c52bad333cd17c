from __future__ import annotations

import enum
import re
import sys
import time
import types
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import msgspec
import pytest
from conftest import run_python
from domain import AccountRenamed, MoneyDeposited
from hypothesis import given
from hypothesis import strategies as st

import minies
from minies import _codec, _events


def test_event_type_defaults_to_class_name_or_the_classvar() -> None:
    assert MoneyDeposited.event_type == "MoneyDeposited"
    assert AccountRenamed.event_type == "Renamed"
    assert _events.registry["Renamed"] is AccountRenamed


def test_events_are_frozen_keyword_only_structs() -> None:
    event = MoneyDeposited(amount=1)
    with pytest.raises(AttributeError, match="immutable type: 'MoneyDeposited'"):
        event.amount = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="Extra positional arguments provided"):
        MoneyDeposited(1)  # type: ignore[misc]
    assert msgspec.json.encode(event) == b'{"amount":1}'


def test_two_classes_claiming_one_event_type_is_an_error() -> None:
    with pytest.raises(
        minies.SchemaError, match="'MoneyDeposited' is already registered by minies._demo.MoneyDeposited"
    ):

        class MoneyDeposited(minies.Event):
            amount: int


CELL = """
from typing import ClassVar
import minies
class Notebook(minies.Event):
    event_type: ClassVar[str] = "NotebookCell"
    value: {field_type}
"""


def run_cell(field_type: str) -> type[minies.Event]:
    module = types.ModuleType("notebook")  # a re-run cell: same module, same class name
    sys.modules["notebook"] = module
    exec(CELL.format(field_type=field_type), module.__dict__)
    return module.Notebook  # type: ignore[no-any-return]


def test_redefining_the_same_class_replaces_it(store: minies.EventStore) -> None:
    first = run_cell("int")
    store.append("n", [first(value=1)], aggregate_type="N")
    second = run_cell("str")
    assert _events.registry["NotebookCell"] is second
    store.append("n", [second(value="x")], aggregate_type="N")
    with pytest.raises(minies.SchemaError, match="position 1 .NotebookCell. does not decode"):
        list(store.read("n"))
    assert [r.data for r in store.read("n", after=1)] == [second(value="x")]


def test_a_class_defined_after_its_events_were_read_decodes_them_from_then_on(db_path: str, no_upcasting: None) -> None:
    """Two plugins' events written by another process; here the plugins load one after the
    other, between reads. Each type reads as dicts until its class is defined, and as
    instances from then on (the decoders' cache notices every new class)."""
    names = [f"Plugin{n}_{uuid.uuid4().hex}" for n in (1, 2)]  # types no earlier test (or run) registered
    cell = "import sys, minies, typing\nclass Loaded(minies.Event):\n    event_type: typing.ClassVar[str] = {!r}\n    name: str\n"
    run_python(
        "import sys, minies, typing\nevents = []\n"
        + "".join(
            cell.format(name).replace("import sys, minies, typing\n", "") + "events.append(Loaded(name='x'))\n"
            for name in names
        )
        + "with minies.EventStore(sys.argv[1]) as store:\n"
        "    store.append('p', events, aggregate_type='Plugins')\n",
        db_path,
    )

    def load_plugin(name: str) -> type[minies.Event]:
        module = types.ModuleType(name)
        sys.modules[name] = module
        exec(cell.format(name), module.__dict__)
        return module.Loaded  # type: ignore[no-any-return]

    with minies.EventStore(db_path) as store:
        first = load_plugin(names[0])
        assert [r.data for r in store.read("p")] == [first(name="x"), {"name": "x"}]
        second = load_plugin(names[1])
        assert [r.data for r in store.read("p")] == [first(name="x"), second(name="x")]


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0, None])
def test_schema_version_must_be_an_int_of_at_least_one(bad: object) -> None:
    with pytest.raises(
        minies.SchemaError,
        match=rf"\.<locals>\.Versioned\.schema_version must be an int >= 1, got {re.escape(repr(bad))}$",
    ):

        class Versioned(minies.Event):
            schema_version: ClassVar[int] = bad  # type: ignore[assignment]


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 201, 'quote"'])
def test_invalid_event_type_names(bad: str) -> None:
    with pytest.raises(
        minies.SchemaError,
        match=rf"\.<locals>\.Bad\.event_type = {re.escape(repr(bad))} is not a valid event type; use letters, digits and "
        r"_ . : - \(at most 200 characters, not starting with a digit\)$",
    ):

        class Bad(minies.Event):
            event_type: ClassVar[str] = bad


def test_event_ids_are_time_ordered_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    ids = _codec.new_event_ids(1000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: Unix time in milliseconds
    assert {value[19] for value in ids} == set("89ab")  # the variant's neighbour bits are random too
    later = _codec.new_event_ids(1)[0]
    assert all(value[:13] <= later[:13] for value in ids)


def test_created_at_is_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codec, "_second", -1)  # the text of the current second is cached
    monkeypatch.setenv("TZ", "Etc/GMT-9")  # nine hours east of Greenwich
    time.tzset()
    try:
        with minies.EventStore(":memory:") as store:
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
            (record,) = store.read("a")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert abs(record.timestamp - datetime.now(UTC)).total_seconds() < 60
    assert record.timestamp.tzinfo == UTC


class Payload(minies.Event):
    text: str
    number: int
    ratio: float
    items: list[dict[str, int]]
    flag: bool | None = None


payloads = st.builds(
    Payload,
    text=st.text(),
    number=st.integers(-(2**100), 2**100),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    items=st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3), max_size=3),
    flag=st.none() | st.booleans(),
)


@given(payload=payloads, metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers(-9, 9)))
def test_codec_round_trips(payload: Payload, metadata: dict[str, object]) -> None:
    with minies.EventStore(":memory:") as store:
        store.append("p", [payload], aggregate_type="P", metadata=metadata)
        (record,) = store.read("p")
    assert record.data == payload
    assert record.metadata == metadata
    assert _codec.decoders()["Payload"](_codec.encode_event(payload)) == payload


def test_the_decoder_table_is_kept_between_reads_and_refreshed_when_a_class_is_defined() -> None:
    first = _codec.decoders()["Payload"]
    assert _codec.decoders()["Payload"] is first  # built once, not once per read
    type(f"Fresh{uuid.uuid4().hex}", (minies.Event,), {"__annotations__": {"n": int}})
    again = _codec.decoders()["Payload"]
    stored = b'{"text": "t", "number": 1, "ratio": 0.5, "items": []}'
    assert again is not first and again(stored) == first(stored) == Payload(text="t", number=1, ratio=0.5, items=[])


# ---------------------------------------------------------------------------- types are checked on append
class Currency(enum.Enum):
    EUR = "EUR"
    NOK = "NOK"


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class EntryAdded(minies.Event):
    amount_cents: int
    memo: str = ""
    tags: list[str] = []
    line: Line | None = None
    currency: Currency = Currency.EUR
    booked: datetime | None = None
    rate: float = 1.0
    parts: tuple[int, ...] = ()


_WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "error", "field", "phrase"),
    [
        ({"amount_cents": "lots"}, TypeError, "amount_cents = 'lots'", "Expected `int`, got `str`"),
        ({"amount_cents": 1.5}, TypeError, "amount_cents = 1.5", "Expected `int`, got `float`"),
        ({"amount_cents": 1, "memo": 7}, TypeError, "memo = 7", "Expected `str`, got `int`"),
        ({"amount_cents": 1, "tags": ["a", 2]}, TypeError, "tags = ['a', 2]", "at `$.tags[1]`"),
        (
            {"amount_cents": 1, "line": {"sku": "x", "quantity": 1}},
            TypeError,
            "line = {",
            "a dict where the class declares Line",
        ),
        ({"amount_cents": 1, "line": Line(sku="x", quantity="2")}, TypeError, "line = Line(", "at `$.line.quantity`"),
        (
            {"amount_cents": 1, "currency": "EUR"},
            TypeError,
            "currency = 'EUR'",
            "a str where the class declares Currency",
        ),
        ({"amount_cents": 1, "booked": "yesterday"}, ValueError, "booked = 'yesterday'", "Invalid RFC3339"),
        (
            {"amount_cents": 1, "booked": "2026-01-02T03:04:05Z"},
            TypeError,
            "booked = '2026",
            "a str where the class declares datetime",
        ),
        ({"amount_cents": 1, "rate": float("nan")}, ValueError, "rate = nan", "would not read back as itself"),
        ({"amount_cents": 1, "parts": [1, 2]}, TypeError, "parts = [1, 2]", "a list where the class declares tuple"),
        ({"amount_cents": True}, TypeError, "amount_cents = True", "Expected `int`, got `bool`"),
        ({"amount_cents": msgspec.UNSET}, ValueError, "amount_cents = UNSET", "missing required field `amount_cents`"),
    ],
)
def test_a_payload_that_contradicts_its_class_is_refused_and_nothing_is_written(
    store: minies.EventStore, fields: dict[str, Any], error: type[Exception], field: str, phrase: str
) -> None:
    store.append("led-1", [EntryAdded(amount_cents=1)], aggregate_type="Ledger")
    with pytest.raises(error, match=re.escape(f"EntryAdded.{field}")) as caught:
        store.append("led-1", [EntryAdded(amount_cents=2), EntryAdded(**fields)], aggregate_type="Ledger")
    assert phrase in str(caught.value) and "nothing was written" in str(caught.value)
    assert [r.data for r in store.read("led-1")] == [EntryAdded(amount_cents=1)]


def test_a_payload_that_matches_its_class_in_every_kind_of_field_is_written(store: minies.EventStore) -> None:
    event = EntryAdded(
        amount_cents=5,
        memo="m",
        tags=["a"],
        line=Line(sku="x", quantity=2),
        currency=Currency.NOK,
        booked=_WHEN,
        rate=2,  # an int is a fine float, and reads back equal
        parts=(1, 2),
    )
    store.append("led-1", [event], aggregate_type="Ledger")
    assert [r.data for r in store.read("led-1")] == [event]


class Bounded(minies.Event):
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)]


def test_constraints_declared_with_msgspec_meta_are_enforced(store: minies.EventStore) -> None:
    with pytest.raises(
        ValueError, match=re.escape("Bounded.percent = 101 does not match the class: Expected `int` <= 100")
    ):
        store.append("b", [Bounded(percent=101)], aggregate_type="B")
    assert store.version("b") == 0


def test_the_event_base_class_itself_is_refused(store: minies.EventStore) -> None:
    with pytest.raises(TypeError, match="expected an instance of a minies.Event subclass, got Event"):
        store.append("x", [minies.Event()], aggregate_type="X")


class CamelEntry(minies.Event, rename="camel"):
    customer_id: int
    memo_text: str = ""


def test_a_renamed_field_that_contradicts_its_class_is_named_by_its_attribute(store: minies.EventStore) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "CamelEntry.customer_id = 'x' does not match the class: Expected `int`, got `str` - at `$.customerId`;"
            " nothing was written"
        ),
    ):
        store.append("c", [CamelEntry(customer_id="x")], aggregate_type="C")  # type: ignore[arg-type]
    store.append("c", [CamelEntry(customer_id=1, memo_text="m")], aggregate_type="C")
    assert [r.data for r in store.read("c")] == [CamelEntry(customer_id=1, memo_text="m")]
    assert [r.data for r in store.read_all(raw=True)] == [{"customerId": 1, "memoText": "m"}]  # as encoded


class KebabEntry(minies.Event, rename="kebab"):
    first_name: str
    first: int = 0
    tags: list[int] = []


@pytest.mark.parametrize(
    ("event", "named"),
    [
        (
            KebabEntry(first_name=1),
            "KebabEntry.first_name = 1 does not match the class: Expected `str`, got `int` - at `$.first-name`",
        ),  # type: ignore[arg-type]
        (
            KebabEntry(first_name="a", first="b"),
            "KebabEntry.first = 'b' does not match the class: Expected `int`, got `str` - at `$.first`",
        ),  # type: ignore[arg-type]
        (
            KebabEntry(first_name="a", tags=["x"]),
            "KebabEntry.tags = ['x'] does not match the class: Expected `int`, got `str` - at `$.tags[0]`",
        ),  # type: ignore[list-item]
    ],
)
def test_a_field_renamed_to_any_name_is_named_by_its_attribute(
    store: minies.EventStore, event: KebabEntry, named: str
) -> None:
    """An encoded name need not be an identifier (``first-name``), and may begin another
    (``first``): the error still names the attribute, as a TypeError."""
    with pytest.raises(TypeError, match=f"^{re.escape(named)}; nothing was written$"):
        store.append("k", [event], aggregate_type="K")
    assert store.version("k") == 0


def test_an_array_like_event_class_is_refused_when_defined() -> None:
    with pytest.raises(
        minies.SchemaError,
        match=re.escape(
            "Packed is array_like, but a payload is stored as a JSON object (so that json_extract finds its fields"
            " by name, and raw reads and upcasters get a dict): drop array_like=True"
        ),
    ):

        class Packed(minies.Event, array_like=True):
            n: int

    assert "Packed" not in _events.registry


class Note(msgspec.Struct, frozen=True):
    extra: Any


class Annotation(minies.Event):
    note: Note


def test_a_nested_struct_that_would_not_read_back_is_a_value_error_naming_the_field(
    store: minies.EventStore,
) -> None:
    with pytest.raises(ValueError) as caught:  # the tuple in an untyped field reads back as a list
        store.append("n", [Annotation(note=Note(extra=(1, 2)))], aggregate_type="N")
    assert str(caught.value) == (
        "Annotation.note = Note(extra=(1, 2)) would not read back as itself (JSON has no NaN or infinity, its"
        " object keys are strings, and an untyped field reads back as plain JSON); nothing was written"
    )
    assert store.version("n") == 0
