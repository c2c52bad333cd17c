"""Testing and benchmarking kit for code built on minies (a pytest plugin).

Installed with minies and active in every pytest run (entry point ``pytest11``). Fixtures:

- ``minies_store``: a fresh in-memory ``EventStore``;
- ``minies_file_store``: a fresh ``EventStore`` on a file in ``tmp_path``.

Given/when/then for aggregates::

    def test_deposit():
        (scenario(Account, "acc-1")
            .given(AccountOpened(owner="ann", balance=10))
            .when(lambda account: account.deposit(5))
            .then(MoneyDeposited(amount=5)))

and for projections::

    def test_summary():
        (projection_scenario(OrderSummaries())
            .given("o1", OrderPlaced(customer_id="c", total=5.0), aggregate_type="Order")
            .then("SELECT status FROM order_summaries", [("placed",)]))

Scenarios run in memory; ``on="postgresql://..."`` runs one in a fresh schema of that
database instead (dropped afterwards), to check that a projection's SQL runs there too.

Replay benchmarks of your own aggregates (with pytest-benchmark)::

    def test_replay_speed(benchmark, minies_file_store):
        ids = fill(minies_file_store, lambda i: MoneyDeposited(amount=i), events=10_000, aggregates=1,
                   aggregate_type="Account", first=lambda i: AccountOpened(owner="x", balance=0))
        benchmark(replay(minies_file_store, Account, ids[0]))
"""

from __future__ import annotations

import contextlib
import itertools
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from minies._aggregate import Aggregate
from minies._backends import is_url
from minies._events import Event
from minies._projections import Projection
from minies._store import EventStore

__all__ = ["fill", "projection_scenario", "replay", "scenario", "throwaway_store"]

A = TypeVar("A", bound=Aggregate)


@pytest.fixture
def minies_store() -> Iterator[EventStore]:
    """A fresh in-memory event store."""
    with EventStore(":memory:") as store:
        yield store


@pytest.fixture
def minies_file_store(tmp_path: Path) -> Iterator[EventStore]:
    """A fresh event store on a file (``tmp_path / "minies.db"``), durability "normal"."""
    with EventStore(str(tmp_path / "minies.db"), durability="normal") as store:
        yield store


def _side_by_side(title: str, expected: Sequence[Any], actual: Sequence[Any]) -> str:
    left = ["expected"] + [repr(x) for x in expected]
    right = ["actual"] + [repr(x) for x in actual]
    width = max(len(x) for x in left)
    lines = [title]
    for e, a in itertools.zip_longest(left, right, fillvalue=""):
        mark = " " if e == a else "≠"
        lines.append(f"  {e:<{width}} {mark} {a}")
    return "\n".join(lines)


@contextlib.contextmanager
def throwaway_store(on: str = ":memory:", **options: Any) -> Iterator[EventStore]:
    """A fresh, empty store: in memory, or in a new schema of the PostgreSQL database the URL
    ``on`` names, dropped afterwards. ``options`` go to ``EventStore``."""
    if not is_url(on):
        with EventStore(on, **options) as store:
            yield store
        return
    import psycopg  # the postgres extra

    from minies._backends.postgres import split_schema

    schema = f"minies_test_{uuid.uuid4().hex[:12]}"
    dsn, _ = split_schema(on)
    try:
        with EventStore(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}", **options) as store:
            yield store
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Scenario(Generic[A]):
    """Given past events, when a command runs, then these new events (or this error)."""

    def __init__(self, cls: type[A], aggregate_id: str = "aggregate-1", on: str = ":memory:") -> None:
        self._cls = cls
        self._id = aggregate_id
        self._on = on
        self._history: list[Event] = []
        self._command: Callable[[A], object] | None = None

    def given(self, *events: Event) -> Scenario[A]:
        """Events that already happened to the aggregate."""
        self._history.extend(events)
        return self

    def when(self, command: Callable[[A], object]) -> Scenario[A]:
        """The command under test, called with the aggregate rebuilt from the history."""
        self._command = command
        return self

    def _run(self) -> A:
        if self._command is None:
            raise RuntimeError("scenario has no when(command)")
        with throwaway_store(self._on) as store:
            if self._history:
                store.append(self._id, self._history, aggregate_type=self._cls.aggregate_type)
                aggregate = store.load(self._cls, self._id)
            else:
                aggregate = self._cls(id=self._id)
            self._command(aggregate)
            return aggregate

    def then(self, *expected: Event) -> A:
        """Assert the command recorded exactly these events; return the aggregate."""
        aggregate = self._run()
        actual = list(aggregate.pending)
        if actual != list(expected):
            raise AssertionError(_side_by_side("the command recorded other events:", expected, actual))
        return aggregate

    def then_raises(self, error: type[BaseException], match: str | None = None) -> BaseException:
        """Assert the command raised ``error`` (its message matching ``match``) and recorded nothing."""
        try:
            aggregate = self._run()
        except error as e:
            if match is not None and not re.search(match, str(e)):
                raise AssertionError(f"{type(e).__name__} was raised, but {str(e)!r} does not match {match!r}") from e
            return e
        raise AssertionError(
            _side_by_side(
                f"expected {error.__name__}, but the command succeeded:", [error.__name__], list(aggregate.pending)
            )
        )


def scenario(cls: type[A], aggregate_id: str = "aggregate-1", *, on: str = ":memory:") -> Scenario[A]:
    """Start a given/when/then test of an aggregate class (``on``: see the module's doc)."""
    return Scenario(cls, aggregate_id, on)


class ProjectionScenario:
    """Given events in the log, then these rows in the projection's tables."""

    def __init__(self, projection: Projection, on: str = ":memory:") -> None:
        self._projection = projection
        self._on = on
        self._batches: list[tuple[str, list[Event], str]] = []

    def given(self, aggregate_id: str, *events: Event, aggregate_type: str = "Aggregate") -> ProjectionScenario:
        """Events appended (in this order) to one aggregate."""
        self._batches.append((aggregate_id, list(events), aggregate_type))
        return self

    def then(self, sql: str, expected: Sequence[tuple[Any, ...]], params: Sequence[Any] = ()) -> None:
        """Assert ``sql`` returns ``expected``, both inline and after a rebuild from the log."""
        with throwaway_store(self._on, projections=[self._projection]) as store:
            for aggregate_id, events, aggregate_type in self._batches:
                store.append(aggregate_id, events, aggregate_type=aggregate_type)
            for when in ("inline", "after a rebuild"):
                actual = store.query(sql, params)
                if actual != list(expected):
                    raise AssertionError(_side_by_side(f"{sql} returned other rows ({when}):", expected, actual))
                store.rebuild(self._projection.name)


def projection_scenario(projection: Projection, *, on: str = ":memory:") -> ProjectionScenario:
    """Start a given/then test of a projection (``on``: see the module's doc)."""
    return ProjectionScenario(projection, on)


def fill(
    store: EventStore,
    make: Callable[[int], Event],
    *,
    events: int,
    aggregates: int = 1,
    aggregate_type: str = "Aggregate",
    first: Callable[[int], Event] | None = None,
    batch: int = 1_000,
) -> list[str]:
    """Fill ``store`` fast: ``events`` events per aggregate, in big batches, one transaction.

    Args:
        make: event number (0-based, per aggregate) → event.
        first: if given, each aggregate's first event (e.g. its creation).

    Returns:
        The aggregate ids (``"{aggregate_type}-{n}"``).
    """
    ids = [f"{aggregate_type}-{n}" for n in range(aggregates)]
    with store.transaction():
        for aggregate_id in ids:
            numbered = range(events)
            stream = ([first(0)] if first else []) + [make(i) for i in numbered[1 if first else 0 :]]
            for start in range(0, len(stream), batch):
                store.append(aggregate_id, stream[start : start + batch], aggregate_type=aggregate_type)
    return ids


def replay(store: EventStore, cls: type[A], aggregate_id: str) -> Callable[[], A]:
    """A zero-argument callable that loads the aggregate: hand it to ``benchmark(...)``."""

    def load() -> A:
        return store.load(cls, aggregate_id)

    return load
