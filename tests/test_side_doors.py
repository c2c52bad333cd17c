"""No side door (issue 29): nothing an application runs through minies, nor a trigger or rule
added beside it, can weaken, empty or silently bypass the log."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from domain import MoneyDeposited

import minies
from minies._backends import swallowed
from minies._backends.postgres import split_schema


def deposits(n: int) -> list[minies.Event]:
    return [MoneyDeposited(amount=i + 1) for i in range(n)]


def pg_run(url: str, *statements: str) -> None:
    """Run SQL on the store's schema as the test's superuser, outside minies."""
    dsn, schema = split_schema(url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if schema:
            conn.execute(f"SET search_path TO {schema}")
        for statement in statements:
            conn.execute(statement)


# ---------------------------------------------------------------------------- no acknowledgement without the rows
@pytest.mark.parametrize("n", [1, 3])
def test_an_append_that_a_temp_trigger_swallows_raises_and_stores_nothing(db_path: str, n: int) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(2), aggregate_type="Account")
        # On the store's own connection: the side door a projection's db handle once opened.
        store._conn.execute("CREATE TEMP TRIGGER swallow BEFORE INSERT ON main.events BEGIN SELECT RAISE(IGNORE); END")
        for _ in range(2):  # and again: nothing cached from the failed append makes the next one pass
            with pytest.raises(minies.StorageError) as caught:
                store.append("a", deposits(n), aggregate_type="Account")
            assert str(caught.value) == swallowed(0, n)
        assert store.version("a") == 2 and store.head()[0] == 2
        store._conn.execute("DROP TRIGGER temp.swallow")
        assert store.append("a", deposits(n), aggregate_type="Account") == 2 + n
        assert store.verify().ok


def test_a_trigger_another_process_adds_after_open_cannot_swallow_appends(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        con = sqlite3.connect(db_path)
        con.execute(
            "CREATE TRIGGER swallow BEFORE INSERT ON events WHEN NEW.version > 1 BEGIN SELECT RAISE(IGNORE); END"
        )
        con.commit()
        con.close()
        for events in (deposits(1), deposits(5)):
            with pytest.raises(minies.StorageError, match="^the append stored 0 of"):
                store.append("a", events, aggregate_type="Account")
        with pytest.raises(minies.StorageError, match="^the append stored 0 of 1"), store.transaction():
            store.append("b", deposits(1), aggregate_type="Account")  # version 1: stored
            store.append("b", deposits(1), aggregate_type="Account")  # version 2: swallowed
        assert store.head()[0] == 1  # the whole transaction rolled back
    assert [(r[0], r[1]) for r in sqlite3.connect(db_path).execute("SELECT position, version FROM events")] == [(1, 1)]


def test_an_append_that_a_postgres_rule_swallows_raises_and_stores_nothing(pg_url: str) -> None:
    with minies.EventStore(pg_url) as store:
        store.append("a", deposits(2), aggregate_type="Account")
        pg_run(pg_url, "CREATE RULE swallow AS ON INSERT TO events DO INSTEAD NOTHING")
        for _ in range(2):
            with pytest.raises(minies.StorageError) as caught:
                store.append("a", deposits(1), aggregate_type="Account")
            assert str(caught.value) == swallowed(0, 1)
        assert store.version("a") == 2 and store.head()[0] == 2
        # A batch goes by COPY, which no rule rewrites: its rows are stored, and counted.
        assert store.append("a", deposits(3), aggregate_type="Account") == 5
        assert [r.version for r in store.read("a")] == [1, 2, 3, 4, 5]
        pg_run(pg_url, "DROP RULE swallow ON events")
        assert store.append("a", deposits(1), aggregate_type="Account") == 6
        assert store.verify().ok
