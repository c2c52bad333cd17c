"""The store against a simple in-memory model, step by step (Hypothesis stateful testing)."""

from __future__ import annotations

import os
import tempfile
import uuid

import hypothesis.strategies as st
from domain import MoneyDeposited
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import minies

AGGREGATES = ["a", "b", "ü-ñ", "x" * 300]


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.folder.name, "model.db")
        self.store = minies.EventStore(self.path, durability="normal")
        self.log: list[tuple[str, int, int]] = []  # (aggregate, version, amount) in position order
        self.batches: dict[str, tuple[str, list[int], int]] = {}  # first event id -> (aggregate, amounts, version)

    def version(self, aggregate: str) -> int:
        return sum(1 for a, _, _ in self.log if a == aggregate)

    def expect_append(self, aggregate: str, amounts: list[int]) -> int:
        start = self.version(aggregate)
        self.log += [(aggregate, start + k + 1, amount) for k, amount in enumerate(amounts)]
        return start + len(amounts)

    @rule(
        aggregate=st.sampled_from(AGGREGATES),
        amounts=st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=4),
        expected=st.none() | st.integers(0, 6),
        with_ids=st.booleans(),
    )
    def append(self, aggregate: str, amounts: list[int], expected: int | None, with_ids: bool) -> None:
        events = [MoneyDeposited(amount=a) for a in amounts]
        ids = [str(uuid.uuid4()) for _ in amounts] if with_ids else None
        current = self.version(aggregate)
        try:
            got = self.store.append(
                aggregate,
                events,
                aggregate_type="Account",
                expected_version=minies.ANY if expected is None else expected,
                event_ids=ids,
            )
        except minies.ConcurrencyError as e:
            assert expected is not None and expected != current
            assert (e.expected, e.actual) == (expected, current)
            return
        assert expected is None or expected == current
        assert got == self.expect_append(aggregate, amounts)
        if ids:
            self.batches[ids[0]] = (aggregate, amounts, got)

    @precondition(lambda self: bool(self.batches))
    @rule(data=st.data())
    def retry_a_batch(self, data: st.DataObject) -> None:
        first = data.draw(st.sampled_from(sorted(self.batches)))
        aggregate, amounts, version = self.batches[first]
        ids = [r.event_id for r in self.store.read(aggregate, after=version - len(amounts), upto=version)]
        assert ids[0] == first
        again = self.store.append(
            aggregate, [MoneyDeposited(amount=a) for a in amounts], aggregate_type="Account", event_ids=ids
        )
        assert again == version  # an idempotent no-op

    @rule(aggregate=st.sampled_from(AGGREGATES), amount=st.integers(0, 9))
    def transaction_that_rolls_back(self, aggregate: str, amount: int) -> None:
        try:
            with self.store.transaction():
                self.store.append(aggregate, [MoneyDeposited(amount=amount)], aggregate_type="Account")
                self.store.append("b", [MoneyDeposited(amount=amount)], aggregate_type="Account")
                raise LookupError("changed my mind")
        except LookupError:
            pass

    @rule(aggregate=st.sampled_from(AGGREGATES), amount=st.integers(0, 9))
    def transaction_that_commits(self, aggregate: str, amount: int) -> None:
        with self.store.transaction():
            self.store.append(aggregate, [MoneyDeposited(amount=amount)], aggregate_type="Account")
            self.store.append("b", [MoneyDeposited(amount=amount)], aggregate_type="Account")
        self.expect_append(aggregate, [amount])
        self.expect_append("b", [amount])

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = minies.EventStore(self.path, durability="normal")

    @invariant()
    def agrees_with_the_model(self) -> None:
        stored = [(r.aggregate_id, r.version, r.data.amount) for r in self.store.read_all()]
        assert stored == self.log
        for aggregate in AGGREGATES:
            assert self.store.version(aggregate) == self.version(aggregate)

    def teardown(self) -> None:
        assert self.store.verify().ok
        self.store.close()
        self.folder.cleanup()


StoreVersusModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_store_versus_model = StoreVersusModel.TestCase
