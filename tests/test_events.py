from __future__ import annotations

import sys
import types
import uuid
from typing import ClassVar

import msgspec
import pytest
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
    with pytest.raises(AttributeError):
        event.amount = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
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


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 201, 'quote"'])
def test_invalid_event_type_names(bad: str) -> None:
    with pytest.raises(minies.SchemaError, match="not a valid event type"):

        class Bad(minies.Event):
            event_type: ClassVar[str] = bad


def test_event_ids_are_time_ordered_uuid7() -> None:
    ids = _codec.new_event_ids(1000)
    assert len(set(ids)) == 1000
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
    later = _codec.new_event_ids(1)[0]
    assert all(value[:13] <= later[:13] for value in ids)


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
