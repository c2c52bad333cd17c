"""Hostile input through the public API and the CLI: a clear error or an exact round trip."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minies


class Anything(minies.Event):
    value: Any


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**200), 2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=40,
)

tried = {"inputs": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aggregate_id=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=60),
    value=json_values,
    metadata=st.dictionaries(st.text(), json_values, max_size=3),
)
def test_anything_json_can_carry_round_trips_exactly(aggregate_id: str, value: Any, metadata: dict[str, Any]) -> None:
    tried["inputs"] += 1
    with minies.EventStore(":memory:") as store:
        store.append(aggregate_id, [Anything(value=value)], aggregate_type="Anything", metadata=metadata)
        (record,) = store.read(aggregate_id)
        assert record.aggregate_id == aggregate_id
        assert record.data == Anything(value=value)
        assert record.metadata == metadata
        assert store.verify().ok


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (float("nan"), ValueError, "would not read back as itself"),
        ([1, float("inf")], ValueError, "would not read back as itself"),
        ({1: "int keys"}, ValueError, "would not read back as itself"),
        (b"\xff bytes", ValueError, "would not read back as itself"),  # base64 text, in an untyped field
        (object(), TypeError, "cannot be stored as JSON"),
        ("x" * 5_000_000, None, None),  # a 5 MB payload
    ],
)
def test_values_json_cannot_carry_are_refused(value: Any, error: type[Exception] | None, message: str | None) -> None:
    with minies.EventStore(":memory:") as store:
        if error is None:
            store.append("a", [Anything(value=value)], aggregate_type="Anything")
            (record,) = store.read("a")
            assert record.data.value == value
            return
        with pytest.raises(error, match=message):
            store.append("a", [Anything(value=value)], aggregate_type="Anything")
        assert store.version("a") == 0


def test_deep_nesting_is_a_clear_error_or_round_trips() -> None:
    deep: Any = "bottom"
    for _ in range(5_000):
        deep = [deep]
    with minies.EventStore(":memory:") as store:
        try:
            store.append("a", [Anything(value=deep)], aggregate_type="Anything")
        except (TypeError, ValueError) as e:
            assert "nested too deeply" in str(e)
            assert store.version("a") == 0
            return
        try:
            (record,) = store.read("a")
        except minies.MiniesError as e:  # written but too deep to read back: said clearly
            assert "position 1" in str(e)
            return
        assert record.data.value == deep


def test_every_depth_across_the_recursion_limit_is_written_whole_or_refused_with_one_message() -> None:
    """Encoding and the read-back check give up at slightly different depths: each side's
    refusal is the same clear ValueError, and a refused append writes nothing."""
    deep: Any = "bottom"
    accepted = refused = 0
    with minies.EventStore(":memory:") as store:
        for depth in range(1, 1_200):
            deep = [deep]
            if depth < 600:
                continue
            try:
                store.append("a", [Anything(value=deep)], aggregate_type="Anything")
                accepted += 1
            except ValueError as e:
                assert str(e) == "Anything is nested too deeply to be stored as JSON"
                refused += 1
            assert store.version("a") == accepted
    assert accepted and refused


@settings(max_examples=60, deadline=None)
@given(args=st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12), max_size=4))
def test_the_cli_never_shows_a_traceback(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "minies", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1, 2)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("a\x00b", "contains a NUL character; ids must be plain text"),
        ("\ud800", "is not valid Unicode text (a lone surrogate?)"),
        ("x\udfff", "is not valid Unicode text (a lone surrogate?)"),
        ("é\x00", "contains a NUL character; ids must be plain text"),  # not ASCII, and a NUL
    ],
)
def test_ids_that_are_not_plain_text_are_refused(bad: str, why: str) -> None:
    with minies.EventStore(":memory:") as store:
        for name, call in (
            ("aggregate_id", lambda: store.append(bad, [Anything(value=1)], aggregate_type="Anything")),
            ("aggregate_type", lambda: store.append("a", [Anything(value=1)], aggregate_type=bad)),
        ):
            with pytest.raises(ValueError, match=f"^{re.escape(f'{name} {bad!r} {why}')}$"):
                call()
        store.append("é", [Anything(value=1)], aggregate_type="Anything")  # not ASCII, but plain text
        assert [r.aggregate_id for r in store.read_all()] == ["é"]
