"""Reads that return more than one fact take them from one view of the log, and the
consumers' exactly-once holds with several of them at once (one actor at a time cannot show
either: each test here puts a second writer inside the first one's operation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

import minies
from domain import MoneyDeposited


class Counted(minies.Aggregate):
    """Every event adds one, and the first applied makes another store append (a writer that
    commits while this load is reading)."""

    aggregate_type: ClassVar[str] = "Counted"
    snapshot_every: ClassVar[int | None] = None
    balance: int = 0
    intruder: ClassVar[minies.EventStore | None] = None

    def apply(self, event: minies.Event) -> None:
        self.balance += 1
        if Counted.intruder is not None:
            other, Counted.intruder = Counted.intruder, None
            other.append(self.id, [MoneyDeposited(amount=1)], aggregate_type="Counted")


@pytest.fixture(params=["per-record", "chunked"])
def read_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The two ways a load reads: through the records (upcasters or personal fields exist)
    and through SQLite-assembled chunks."""
    request.getfixturevalue("upcasting_on" if request.param == "per-record" else "no_upcasting")
    yield request.param


def test_a_load_reports_the_version_it_applied_while_another_writer_appends(location: str, read_path: str) -> None:
    with minies.EventStore(location) as store, minies.EventStore(location) as other:
        store.append("c", [MoneyDeposited(amount=1)] * 3, aggregate_type="Counted")
        Counted.intruder = other
        loaded = store.load(Counted, "c")
        assert Counted.intruder is None  # the other writer did append, during the load
        assert store.version("c") == 4
        assert (loaded.version, loaded.balance) == (3, 3)
        # and a save built on that load is refused: it did not see event 4
        loaded.record(MoneyDeposited(amount=1))
        with pytest.raises(minies.ConcurrencyError):
            store.save(loaded)
        assert store.load(Counted, "c").balance == 4


def test_a_fold_reports_the_version_it_applied_while_another_writer_appends(location: str, read_path: str) -> None:
    with minies.EventStore(location) as store, minies.EventStore(location) as other:
        store.append("c", [MoneyDeposited(amount=1)] * 2, aggregate_type="Counted")
        intruded = []

        def evolve(total: int, event: minies.Event) -> int:
            if not intruded:
                intruded.append(other.append("c", [MoneyDeposited(amount=1)], aggregate_type="Counted"))
            return total + 1

        assert store.fold("c", evolve, 0) == (2, 2)
        assert intruded == [3]
