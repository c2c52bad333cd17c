"""No side door (issue 29): nothing an application runs through minies, nor a trigger or rule
added beside it, can weaken, empty or silently bypass the log."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar

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
        drop_guards(  # (another process)
            db_path,
            "CREATE TRIGGER swallow BEFORE INSERT ON events WHEN NEW.version > 1 BEGIN SELECT RAISE(IGNORE); END",
        )
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


# ---------------------------------------------------------------------------- a projection's db handle (SQLite)
class Mine(minies.Projection):
    """A read model with a table, an index and a trigger of its own."""

    name = "mine"  # (inherited: a rogue subclass is the same read model)

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE mine (id TEXT PRIMARY KEY, n INTEGER)")
        db.execute("CREATE INDEX mine_n ON mine (n)")
        db.execute("CREATE TABLE mine_log (id TEXT)")
        db.execute("CREATE TRIGGER mine_logged AFTER INSERT ON mine BEGIN INSERT INTO mine_log VALUES (NEW.id); END")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT OR REPLACE INTO mine VALUES (?, ?)", (event.aggregate_id, event.version))
        assert db.execute("SELECT count(*) FROM minies_keys") == [(0,)]  # a projection may read anything
        assert db.execute("PRAGMA table_info(events)")[0][1] == "position"
        assert db.execute("PRAGMA journal_mode") == [("wal",)]


class Other(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE other (id TEXT)")


def rogue(*statements: str, in_setup: bool = False) -> minies.Projection:
    class Rogue(Mine):
        def setup(self, db: minies.Database) -> None:
            super().setup(db)
            for sql in statements if in_setup else ():
                db.execute(sql)

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            super().handle(db, event)
            if event.version == 2:
                for sql in statements:
                    db.execute(sql, ("k",) if "?" in sql else ())

    return Rogue()


def guards_of(path: str) -> list[tuple[str, str]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT type, name FROM sqlite_master WHERE tbl_name IN ('events', 'minies_keys') ORDER BY name"
        ).fetchall()
    finally:
        con.close()


NOT_OURS = "it would write {}, which is the log or one of minies' own tables"
TEMPORARY = (
    "it would create or drop a temporary object, which lives on the store's connection beyond the projection's "
    "transaction (and could change what minies reads and writes)"
)


@pytest.mark.parametrize(
    ("statements", "why"),
    [
        # the issue's examples
        (
            ["ALTER TABLE minies_keys RENAME TO k", "DELETE FROM k", "ALTER TABLE k RENAME TO minies_keys"],
            "it would alter minies_keys, which is not this projection's",
        ),
        (["DROP TRIGGER events_no_update"], "it would drop events_no_update, which is not this projection's"),
        (["ALTER TABLE events RENAME TO events_old"], "it would alter events, which is not this projection's"),
        (["PRAGMA writable_schema = 1"], "PRAGMA writable_schema is not a read"),
        (["PRAGMA journal_mode = delete"], "PRAGMA journal_mode is not a read"),
        (["PRAGMA secure_delete = 0"], "PRAGMA secure_delete is not a read"),
        (["CREATE TEMP TRIGGER t BEFORE INSERT ON main.events BEGIN SELECT RAISE(IGNORE); END"], TEMPORARY),
        # and others
        (["CREATE TEMP TABLE events (x)"], TEMPORARY),  # would shadow main.events for minies' own SQL
        (["CREATE TEMP VIEW minies_keys AS SELECT 1"], TEMPORARY),
        (["PRAGMA synchronous = OFF"], "PRAGMA synchronous is not a read"),
        (["PRAGMA user_version = 9"], "PRAGMA user_version is not a read"),
        (["PRAGMA recursive_triggers = 1"], "PRAGMA recursive_triggers is not a read"),
        (["PRAGMA wal_checkpoint"], "PRAGMA wal_checkpoint is not a read"),
        (["DELETE/**/FROM minies_keys"], NOT_OURS.format("minies_keys")),
        (["UPDATE minies_keys SET key = NULL, forgotten_at = ? WHERE key_id = ?"], NOT_OURS.format("minies_keys")),
        (["INSERT INTO other VALUES ('x')"], "it would write other, which is not this projection's"),
        (["DROP TABLE other"], "it would drop other, which is not this projection's"),
        (["CREATE TABLE later (x)"], "it would create later outside setup"),
        (["CREATE INDEX sneaky ON events (data)"], "it would create sneaky outside setup"),
        (["DROP INDEX minies_keys_live"], "it would drop minies_keys_live, which is not this projection's"),
        (["ANALYZE"], "SQLite's authorizer has no permission for it"),
        (["DETACH temp"], "it would attach or detach a database file"),
        (["RELEASE minies /* minies */"], "it would end the append's transaction"),
    ],
)
def test_a_projection_cannot_touch_what_is_not_its_own(db_path: str, statements: list[str], why: str) -> None:
    with minies.EventStore(db_path, projections=[Other()]) as store:
        store.append("a", deposits(1), aggregate_type="Account")
    guards = guards_of(db_path)
    with minies.EventStore(db_path, projections=[Other(), rogue(*statements)]) as store:
        with pytest.raises(minies.MiniesError, match="^a projection may not run ") as caught:
            store.append("a", deposits(1), aggregate_type="Account")
        assert why in str(caught.value)
        assert store.head()[0] == 1 and store.query("SELECT count(*) FROM mine") == [(1,)]
    assert guards_of(db_path) == guards
    with minies.EventStore(db_path, projections=[Other(), Mine()]) as store:
        assert store.append("a", deposits(1), aggregate_type="Account") == 2
        assert store.query("SELECT id, n FROM mine") == [("a", 2)]
        assert store.query("SELECT count(*) FROM mine_log") == [(2,)]
        assert store.verify().ok


def test_a_trigger_of_the_projections_own_cannot_write_what_is_not_its_own(db_path: str) -> None:
    class Sly(Mine):
        def setup(self, db: minies.Database) -> None:
            super().setup(db)
            db.execute("CREATE TRIGGER sly AFTER INSERT ON mine_log BEGIN DELETE FROM minies_keys; END")

    with (
        minies.EventStore(db_path, projections=[Sly()]) as store,
        pytest.raises(minies.MiniesError, match="minies_keys"),
    ):
        store.append("a", deposits(1), aggregate_type="Account")


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE events_copy (x)",
        "CREATE TABLE minies_mine (x)",
        "CREATE TABLE other (x)",
        "CREATE INDEX o ON other (id)",
    ],
)
def test_setup_creates_only_new_names_on_its_own_tables(db_path: str, sql: str) -> None:
    with minies.EventStore(db_path, projections=[Other()]):
        pass
    if sql.startswith("CREATE TABLE events_copy"):  # a free name: fine
        with minies.EventStore(db_path, projections=[rogue(sql, in_setup=True)]) as store:
            assert store.append("a", deposits(1), aggregate_type="Account") == 1
        return
    with pytest.raises(minies.ProjectionError, match="setup failed: MiniesError: a projection may not run"):
        minies.EventStore(db_path, projections=[rogue(sql, in_setup=True)])


def test_a_db_handle_kept_for_later_runs_nothing(db_path: str) -> None:
    kept: list[minies.Database] = []

    class Keeper(Mine):
        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            kept.append(db)

    with minies.EventStore(db_path, projections=[Keeper()]) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        with pytest.raises(minies.MiniesError, match="works only while minies runs the projection"):
            kept[0].execute("CREATE TEMP TRIGGER t BEFORE INSERT ON main.events BEGIN SELECT RAISE(IGNORE); END")
        assert store.append("a", deposits(1), aggregate_type="Account") == 2


# ---------------------------------------------------------------------------- store.query only reads
class Totals(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE totals (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO totals VALUES (?, 1) ON CONFLICT (id) DO UPDATE SET n = totals.n + 1", (event.aggregate_id,)
        )


WRITES = [
    "PRAGMA query_only=0; DELETE FROM totals",
    "DELETE FROM totals",
    "PRAGMA journal_mode=delete",
    "PRAGMA synchronous=OFF",
    "PRAGMA secure_delete=0",
    "PRAGMA user_version=9",
    "PRAGMA optimize",
    "ATTACH '{tmp}/attached.db' AS a",
    "VACUUM INTO '{tmp}/copy.db'",
    "BEGIN",
    "BEGIN; DELETE FROM totals; COMMIT",
    "SAVEPOINT s",
    "CREATE TEMP TABLE events (x)",
    "CREATE TEMP VIEW v AS SELECT 1",
    "SELECT 1; DELETE FROM totals",
    "WITH gone AS (DELETE FROM totals RETURNING id) SELECT count(*) FROM gone",
    "UPDATE minies_projections SET position = ?, updated_at = ? WHERE name = ?",  # minies' own text, cached
    "EXPLAIN ANALYZE DELETE FROM totals",  # (PostgreSQL runs it; SQLite has no such syntax)
]


@pytest.mark.parametrize("inside", [False, True], ids=["alone", "in-a-transaction"])
@pytest.mark.parametrize("sql", WRITES)
def test_query_runs_one_statement_that_only_reads(location: str, tmp_path: Path, sql: str, inside: bool) -> None:
    sql = sql.format(tmp=tmp_path)
    params: tuple[object, ...] = (0, "t", "Totals") if "?" in sql else ()
    with minies.EventStore(location, projections=[Totals()]) as store:
        store.append("a", deposits(2), aggregate_type="Account")
        with contextlib.ExitStack() as block:
            if inside:
                block.enter_context(store.transaction())
                store.append("b", deposits(1), aggregate_type="Account")
            with pytest.raises(minies.QueryError):
                store.query(sql, params)
            assert store.query("SELECT id, n FROM totals ORDER BY id") == [("a", 2)] + ([("b", 1)] if inside else [])
        store.append("c", deposits(1), aggregate_type="Account")  # writes still work: no transaction left open
        assert store.query("SELECT count(*) FROM events") == [(4 if inside else 3,)]  # a read sees the last write
        assert store.query("SELECT position FROM minies_projections") == [(4 if inside else 3,)]
        assert store.verify().ok
        if not location.startswith("postgres"):
            conn = store._conn
            settings = [conn.pragma(name) for name in ("query_only", "synchronous", "secure_delete", "user_version")]
            assert settings == [0, 2, 1, 4]  # (synchronous FULL)
            assert conn.execute("SELECT count(*) FROM temp.sqlite_master").get == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".db")) == (
        [] if location.startswith("postgres") else ["test.db"]
    )
    if not location.startswith("postgres"):
        assert sqlite3.connect(location).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_query_refuses_several_statements_the_same_on_both_backends(location: str) -> None:
    with minies.EventStore(location) as store:
        for sql in ("SELECT 1; SELECT 2", "SELECT 1;\n SELECT 2;"):
            with pytest.raises(minies.QueryError, match="^store.query runs one statement, got several: "):
                store.query(sql)
        assert store.query("SELECT 1;  ") == [(1,)]
        assert store.query("SELECT 1 -- and a comment") == [(1,)]


def test_query_on_postgres_moves_no_sequence_even_inside_a_transaction(pg_url: str) -> None:
    with minies.EventStore(pg_url) as store:
        pg_run(pg_url, "CREATE SEQUENCE counter")
        for inside in (False, True):
            with contextlib.ExitStack() as block:
                if inside:
                    block.enter_context(store.transaction())
                    store.append("a", deposits(1), aggregate_type="Account")
                with pytest.raises(minies.QueryError, match="read-only"):
                    store.query("SELECT nextval('counter')")
                assert store.query("SELECT last_value, is_called FROM counter") == [(1, False)]
        assert store.version("a") == 1


# ---------------------------------------------------------------------------- guards on open, and repair
EDIT = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
for statement in sys.argv[2:]:
    con.execute(statement)
con.commit()
"""


def drop_guards(path: str, *statements: str) -> None:
    """Edit the file with the stdlib ``sqlite3`` module, in a process of its own (two SQLite
    libraries in one process break each other's POSIX locks on a file both have open)."""
    statements = statements or ("DROP TRIGGER events_no_update", "DROP TRIGGER events_append_only")
    subprocess.run([sys.executable, "-c", EDIT, path, *statements], check=True, timeout=60)


UNGUARDED = (
    "{path} is not guarded: {problem}; minies writes nothing to a log whose guards are missing or overridden. "
    "Run `minies repair {path}` (minies.repair): it re-creates minies' own triggers if the log still verifies, "
    "and names what else to remove; or open it with readonly=True to read it"
)


def test_a_store_refuses_to_write_to_a_log_whose_triggers_were_dropped_until_it_is_repaired(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(3), aggregate_type="Account")
    drop_guards(db_path)
    problem = "immutability triggers are missing: events_append_only, events_no_update"
    with minies.EventStore(db_path) as store:
        for write in (
            lambda: store.append("a", deposits(1), aggregate_type="Account"),
            lambda: store.forget("a"),
            lambda: store.subscription("s").poll(lambda r: None),
        ):
            with pytest.raises(minies.SchemaError) as caught:
                write()
            assert str(caught.value) == UNGUARDED.format(path=db_path, problem=problem)
        assert [r.version for r in store.read("a")] == [1, 2, 3]  # reads work
        report = store.verify()
        assert not report.ok and report.reason == problem and report.events_checked == 3
    with pytest.raises(minies.SchemaError, match="is not guarded"):
        minies.EventStore(db_path, projections=[Totals()])  # (a new projection's setup writes)
    with minies.EventStore(db_path, readonly=True) as auditor:  # auditors still read and verify it
        assert auditor.head()[0] == 3 and auditor.verify().reason == problem
    assert minies.repair(db_path) == ["events_no_update", "events_append_only"]
    assert minies.repair(db_path) == []
    with minies.EventStore(db_path, projections=[Totals()]) as store:
        assert store.verify().ok
        assert store.append("a", deposits(1), aggregate_type="Account") == 4
        assert store.query("SELECT n FROM totals") == [(4,)]
    con = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        con.execute("UPDATE events SET data = '{}'")
    con.close()


def test_the_cli_repairs_and_says_what_it_did(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(2), aggregate_type="Account")
    # What a tool that rebuilds the table (sqlite-utils transform) leaves: the same rows, no triggers.
    drop_guards(
        db_path,
        "DROP TRIGGER events_no_update",
        "DROP TRIGGER events_no_delete",
        "DROP TRIGGER events_append_only",
        "CREATE TABLE events_new AS SELECT * FROM events",
        "DROP TABLE events",
        "ALTER TABLE events_new RENAME TO events",
    )
    verify = subprocess.run([sys.executable, "-m", "minies", "verify", db_path], capture_output=True, text=True)
    assert verify.returncode == 1 and "immutability triggers are missing" in verify.stdout
    done = subprocess.run([sys.executable, "-m", "minies", "repair", db_path], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"re-created events_no_update, events_no_delete, events_append_only on {db_path}\n"
    again = subprocess.run([sys.executable, "-m", "minies", "repair", db_path], capture_output=True, text=True)
    assert again.stdout == f"{db_path} is guarded: nothing to repair\n"
    with minies.EventStore(db_path) as store:
        assert store.verify().ok and store.append("a", deposits(1), aggregate_type="Account") == 3


def test_repair_refuses_a_log_that_does_not_verify_or_carries_triggers_of_its_own(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(3), aggregate_type="Account")
    drop_guards(
        db_path, "DROP TRIGGER events_no_update", "UPDATE events SET data = '{\"amount\": 100}' WHERE position = 2"
    )
    with pytest.raises(minies.SchemaError) as caught:
        minies.repair(db_path)
    assert str(caught.value) == (
        f"cannot repair {db_path!r}: the log does not verify (position 2: event at position 2 does not match its "
        "hash (altered, inserted or reordered)); guarding it again would vouch for it: restore it from a backup"
    )
    other = db_path + "-2"
    with minies.EventStore(other) as store:
        store.append("a", deposits(1), aggregate_type="Account")
    drop_guards(
        other,
        "CREATE TRIGGER swallow BEFORE INSERT ON EVENTS BEGIN SELECT RAISE(IGNORE); END",  # (ON EVENTS: any case)
        "CREATE TRIGGER keep_keys BEFORE UPDATE ON minies_keys BEGIN SELECT RAISE(IGNORE); END",
    )
    refused = "triggers minies did not create are on the events table: swallow"
    with minies.EventStore(other) as store, pytest.raises(minies.SchemaError, match=refused):
        store.append("a", deposits(1), aggregate_type="Account")
    with pytest.raises(minies.SchemaError) as caught:
        minies.repair(other)
    assert str(caught.value) == (
        f"cannot repair {other!r}: triggers minies did not create are on the log or its tables: swallow (on events), "
        "keep_keys (on minies_keys); minies drops nothing it did not create: if they are not needed, drop them "
        "(DROP TRIGGER name) and repair again"
    )
    drop_guards(other, "DROP TRIGGER swallow")
    with minies.EventStore(other) as store:
        assert store.verify().reason == (
            "triggers minies did not create are on the log or minies' own tables: keep_keys (on minies_keys)"
        )
        with pytest.raises(minies.SchemaError, match="keep_keys"):
            store.append("a", deposits(1), aggregate_type="Account")


# ---------------------------------------------------------------------------- what verify covers (SQLite)
def test_verify_sees_temporary_triggers_on_the_stores_own_connection(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        store._conn.execute("CREATE TEMP TRIGGER hide AFTER INSERT ON main.events BEGIN SELECT 1; END")
        assert store.verify().reason == (
            "triggers minies did not create are on the log or minies' own tables: temp.hide (on events)"
        )


def test_a_read_model_with_triggers_of_its_own_verifies(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Mine()]) as store:
        store.append("a", deposits(2), aggregate_type="Account")
        assert store.query("SELECT count(*) FROM mine_log") == [(2,)]  # its trigger ran
        assert store.verify().ok


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        (
            "CREATE TRIGGER swallow BEFORE INSERT ON EVENTS BEGIN SELECT RAISE(IGNORE); END",
            "triggers minies did not create are on the events table: swallow (one could drop or change appended events)",
        ),
        (
            'CREATE TRIGGER swallow BEFORE INSERT ON "Events" BEGIN SELECT RAISE(IGNORE); END',
            "triggers minies did not create are on the events table: swallow (one could drop or change appended events)",
        ),
        (
            "CREATE TRIGGER keep_keys BEFORE UPDATE ON minies_keys BEGIN SELECT RAISE(IGNORE); END",
            "triggers minies did not create are on the log or minies' own tables: keep_keys (on minies_keys)",
        ),
    ],
)
def test_verify_sees_every_trigger_on_the_log_and_minies_tables(db_path: str, trigger: str, reason: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(1), aggregate_type="Account")
    drop_guards(db_path, trigger)
    with minies.EventStore(db_path, readonly=True) as store:
        assert store.verify().reason == reason


def test_a_copy_counts_the_rows_it_stored_too(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    with minies.EventStore(source) as store:
        store.append("a", deposits(5_001), aggregate_type="Account")  # two chunks

    def meanwhile(position: int, head: int) -> None:  # another process swallows what comes next
        if position < head:
            drop_guards(target, "CREATE TRIGGER swallow BEFORE INSERT ON events BEGIN SELECT RAISE(IGNORE); END")

    with pytest.raises(minies.StorageError) as caught:
        minies.copy(source, target, progress=meanwhile)
    assert str(caught.value) == swallowed(0, 1)
    assert sqlite3.connect(target).execute("SELECT max(position) FROM events").fetchone() == (5_000,)


# ---------------------------------------------------------------------------- smaller findings
class Books(minies.Projection):
    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE sqlitebook (id TEXT PRIMARY KEY, n INTEGER)")  # (sqlite_ without the _)
        db.execute("CREATE INDEX sqlite1book ON sqlitebook (n)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT OR REPLACE INTO sqlitebook VALUES (?, ?)", (event.aggregate_id, event.version))


def test_a_read_model_named_like_sqlites_own_tables_is_recorded_and_rebuilt(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Books()]) as store:
        store.append("a", deposits(2), aggregate_type="Account")
        assert store.rebuild("Books").events == 2
        assert store.query("SELECT id, n FROM sqlitebook") == [("a", 2)]
        objects = store.query("SELECT objects FROM minies_projections WHERE name = 'Books'")
    assert objects == [('[["table","sqlitebook"],["index","sqlite1book"]]',)]


@pytest.mark.parametrize(
    "metadata",
    [{"x": float("nan")}, {"x": [1, {"y": float("-inf")}]}, {"x": float("inf"), "user_id": None}],
)
def test_nan_or_infinity_in_metadata_is_refused_not_stored_as_null(location: str, metadata: dict[str, object]) -> None:
    with minies.EventStore(location) as store:
        with pytest.raises(ValueError) as caught:
            store.append("a", deposits(1), aggregate_type="Account", metadata=metadata)
        assert str(caught.value) == (
            "metadata holds NaN or infinity, which JSON cannot carry (it would be stored as null)"
        )
        assert store.head()[0] == 0
        store.append("a", deposits(1), aggregate_type="Account", metadata={"x": None, "y": 1.5})
        assert next(store.read("a")).metadata == {"x": None, "y": 1.5}


class Counted(minies.Event):
    event_type: ClassVar[str] = "side_doors.Counted"  # (test_upcasting has a Counted of its own)
    n: int
    label: str = ""


@pytest.mark.parametrize(("fields", "field"), [({"n": None}, "n"), ({"n": 1, "label": None}, "label")])
def test_none_in_a_typed_field_says_so(fields: dict[str, object], field: str) -> None:
    with minies.EventStore(":memory:") as store, pytest.raises(TypeError) as caught:
        store.append("a", [Counted(**fields)], aggregate_type="A")  # type: ignore[arg-type]
    expected = "int" if field == "n" else "str"
    assert str(caught.value) == (
        f"Counted.{field} = None does not match the class: Expected `{expected}`, got None - at `$.{field}`;"
        " nothing was written"
    )


CREATOR = """
import os, sys, time, minies
from domain import MoneyDeposited
path, go, name = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    with minies.EventStore(path) as store:
        store.append(name, [MoneyDeposited(amount=1)], aggregate_type="Account")
    print("ok")
except minies.MiniesError as e:
    print(f"{type(e).__name__}: {e}")
"""


def test_processes_creating_the_same_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    for trial in range(12):  # (the old code failed one trial in three)
        path, go = tmp_path / f"new-{trial}.db", tmp_path / f"go-{trial}"
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", CREATOR, str(path), str(go), f"p{i}"], stdout=subprocess.PIPE, text=True, env=env
            )
            for i in range(6)
        ]
        time.sleep(0.5)  # (every process imported minies and waits)
        go.touch()
        outcomes = [process.communicate(timeout=60)[0].strip() for process in processes]
        assert outcomes == ["ok"] * 6, f"trial {trial}: {outcomes}"
        with minies.EventStore(str(path), readonly=True) as store:
            assert store.head()[0] == 6 and store.verify().ok


# ---------------------------------------------------------------------------- keys lost outside forget
class Noted(minies.Event):
    event_type: ClassVar[str] = "side_doors.Noted"
    data_subject: ClassVar[str] = "person"
    person: str
    note: minies.Personal[str] = ""


def test_verify_reports_personal_data_whose_key_was_lost_outside_forget(location: str) -> None:
    sqlite = not location.startswith("postgres")
    with minies.EventStore(location) as store:
        store.append("n1", [Noted(person="ann", note="private")], aggregate_type="Notes")
        store.append("n2", [Noted(person="bob", note="secret")], aggregate_type="Notes")
        store.append("n3", [Noted(person="cy", note="hush")], aggregate_type="Notes")
        store.forget("cy")  # forgotten by the book: its SubjectForgotten event says so
        assert store.verify().ok
        # ann's key destroyed behind forget's back (as a rename, delete and rename back did)
        if sqlite:
            drop_guards(location, "UPDATE minies_keys SET key = NULL WHERE subject = 'ann'")
        else:
            pg_run(location, "UPDATE minies_keys SET key = NULL, forgotten_at = now() WHERE subject = 'ann'")
        report = store.verify()
        assert (report.ok, report.first_bad_position) == (False, 1)
        assert report.reason.startswith("event at position 1 holds personal data sealed with key ")
        assert report.reason.endswith(
            ", which was destroyed with no SubjectForgotten event for its subject (outside forget)"
        )
        assert "ann" not in report.reason and "private" not in report.reason
        if sqlite:  # a key's row deleted outright
            drop_guards(location, "DELETE FROM minies_keys WHERE subject = 'bob'")
            report = store.verify()
            assert report.first_bad_position == 1
            drop_guards(location, "DELETE FROM minies_keys WHERE subject = 'ann'")
            report = store.verify()
            assert report.first_bad_position == 1 and report.reason.endswith(
                "which the log does not hold (deleted outside forget: those fields can never be read again)"
            )


def test_a_postgres_rule_is_named_as_such_when_a_projection_sends_the_held_insert(pg_url: str) -> None:
    with minies.EventStore(pg_url, projections=[Totals()]) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        pg_run(pg_url, "CREATE RULE swallow AS ON INSERT TO events DO INSTEAD NOTHING")
        with pytest.raises(minies.StorageError) as caught:
            store.append("a", deposits(1), aggregate_type="Account")
        assert str(caught.value) == swallowed(0, 1)
        assert store.query("SELECT n FROM totals") == [(1,)] and store.head()[0] == 1


# ---------------------------------------------------------------------------- a history: acknowledged means stored
SABOTEUR = """
import random, sqlite3, sys, time
path, seed, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
import os
while not os.path.exists(stop):
    con = sqlite3.connect(path, timeout=30)
    condition = rng.choice(["1", "NEW.version % 2 = 0", "NEW.position % 3 = 1", "NEW.aggregate_id LIKE 'w1%'"])
    con.execute(f"CREATE TRIGGER saboteur BEFORE INSERT ON events WHEN {condition} BEGIN SELECT RAISE(IGNORE); END")
    con.commit()
    open(stop + ".ready", "a").close()  # (the writers start once it has struck)
    time.sleep(rng.uniform(0.001, 0.02))
    con.execute("DROP TRIGGER saboteur")
    con.commit()
    con.close()
    time.sleep(rng.uniform(0.001, 0.02))
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_append_is_acknowledged_whose_rows_are_not_in_the_log(tmp_path: Path, seed: int) -> None:
    """Writers (threads, a store each) append while another process keeps adding and dropping a
    trigger that swallows some inserts; every operation's outcome is recorded, then checked
    against the log: an acknowledged append's events are there, once each, at the versions it
    returned; a refused one left nothing."""
    path, stop = str(tmp_path / "history.db"), tmp_path / "stop"
    with minies.EventStore(path) as store:
        store.append("seed", deposits(1), aggregate_type="Account")
    history: list[tuple[str, list[str], str, int]] = []  # (aggregate, event ids, outcome, version)
    errors: list[str] = []
    lock = threading.Lock()

    def writer(name: str, store: minies.EventStore) -> None:
        rng = random.Random(f"{seed}-{name}")
        with store:
            for _ in range(60):
                ids = [str(uuid.uuid4()) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
                try:
                    version = store.append(name, deposits(len(ids)), aggregate_type="Account", event_ids=ids)
                    outcome = "ok"
                except minies.StorageError as e:
                    outcome, version = "fail", 0
                    with lock:
                        errors.append(str(e))
                with lock:
                    history.append((name, ids, outcome, version))

    stores = [minies.EventStore(path) for _ in range(3)]  # opened (and their guards checked) before it starts
    saboteur = subprocess.Popen([sys.executable, "-c", SABOTEUR, path, str(seed), str(stop)])
    try:
        while not os.path.exists(f"{stop}.ready"):
            time.sleep(0.001)
        threads = [threading.Thread(target=writer, args=(f"w{i}", stores[i])) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.touch()
        saboteur.wait(timeout=60)
    stored: dict[str, tuple[str, int]] = {}
    with minies.EventStore(path, readonly=True) as log:
        for record in log.read_all():
            assert record.event_id not in stored, f"seed {seed}: {record.event_id} stored twice"
            stored[record.event_id] = (record.aggregate_id, record.version)
        assert log.verify().ok
    for aggregate, ids, outcome, version in history:
        if outcome == "ok":
            expected = [(aggregate, version - len(ids) + 1 + k) for k in range(len(ids))]
            assert [stored.get(i) for i in ids] == expected, f"seed {seed}: acknowledged, not stored: {ids}"
        else:
            assert not any(i in stored for i in ids), f"seed {seed}: refused, yet stored: {ids}"
    outcomes = collections.Counter(outcome for _, _, outcome, _ in history)
    assert outcomes["fail"], f"seed {seed}: the saboteur never struck: {outcomes}"
    # Every refusal is the saboteur's doing (on a loaded machine its trigger may be in place
    # throughout): the row count's, or the append-only trigger's when a batch lost a middle row.
    swallowed = ("the append stored ", "a new event must take the next position")
    assert all(any(s in e for s in swallowed) for e in errors), f"seed {seed}: {collections.Counter(errors)}"


@pytest.mark.parametrize("n", [1, 3])
def test_a_postgres_trigger_that_skips_rows_fails_the_append(pg_url: str, n: int) -> None:
    with minies.EventStore(pg_url) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        pg_run(
            pg_url,
            "CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
            "CREATE TRIGGER skip BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION skip()",
        )
        # (minies' own statement trigger finds no new rows and refuses first; the count is behind it)
        with pytest.raises(minies.StorageError, match="append"):
            store.append("a", deposits(n), aggregate_type="Account")  # (a batch goes by COPY: triggers fire)
        assert store.head()[0] == 1


def test_repair_creates_nothing_and_says_what_it_cannot_repair(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.db")
    with pytest.raises(minies.StorageError, match="^cannot repair .*missing.db': no such file$"):
        minies.repair(missing)
    assert not os.path.exists(missing)
    done = subprocess.run([sys.executable, "-m", "minies", "repair", missing], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, "") and done.stderr.startswith("minies: error: cannot repair")
    # (on PostgreSQL, repair mends what verify reports: see tests/test_postgres.py)


def test_verify_sees_a_temporary_table_that_stands_in_for_the_log(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", deposits(1), aggregate_type="Account")
        store._conn.execute("CREATE TEMP TABLE events AS SELECT * FROM main.events")
        assert store.verify().reason == (
            "temporary objects on this connection stand in for the log or minies' tables: temp.events (table)"
        )
