from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgserver
import pytest

import minies

TESTS = Path(__file__).parent


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session. Without one the PostgreSQL tests skip, except
    where ``MINIES_REQUIRE_POSTGRES=1`` (CI sets it): there they fail."""
    try:
        with pgserver.cluster() as dsn:
            yield dsn
    except RuntimeError as e:
        if os.environ.get("MINIES_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"MINIES_REQUIRE_POSTGRES=1 but {e}")
        pytest.skip(str(e))


@pytest.fixture(autouse=True)
def psycopg_stays_quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """minies handles every psycopg failure itself: psycopg never gets to log one (its
    warnings would reach the user's stderr)."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = [r.getMessage() for r in records if r.name.startswith("psycopg") and r.levelno >= logging.WARNING]
    assert not logged, f"psycopg logged: {logged}"


@pytest.fixture
def pg_url(pg_dsn: str) -> str:
    """A PostgreSQL URL with an empty log (a fresh schema)."""
    return pgserver.fresh_schema(pg_dsn)


APP_ROLE = "minies_app"


@pytest.fixture(scope="session")
def pg_app_role(pg_dsn: str) -> str:
    """A role of the server's with no privilege of its own (no superuser, no CREATEROLE)."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
            admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
    return APP_ROLE


@pytest.fixture
def pg_app_url(pg_dsn: str, pg_app_role: str) -> str:
    """A PostgreSQL URL with an empty log that the superuser created, opened as a role that
    ``minies grant --role app`` set up: what an application runs as."""
    url = pgserver.fresh_schema(pg_dsn)
    minies.grant(url, pg_app_role, "app")
    return url.replace("postgres@", f"{pg_app_role}@", 1)


@pytest.fixture(params=["sqlite", "postgres", "postgres-app"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a contract test's store lives: a file, a PostgreSQL schema, then the same as the
    application role ``minies grant`` sets up."""
    if request.param == "sqlite":
        return str(tmp_path / "test.db")
    if request.param == "postgres-app":
        return str(request.getfixturevalue("pg_app_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.db")


@pytest.fixture(params=["sqlite", "postgres", "postgres-app"])
def store(request: pytest.FixtureRequest) -> Iterator[minies.EventStore]:
    """An in-memory store (the fixture minies' pytest plugin gives every user), then one on
    PostgreSQL, as the superuser and as the application role."""
    if request.param == "sqlite":
        yield request.getfixturevalue("minies_store")
        return
    with minies.EventStore(request.getfixturevalue("pg_url" if request.param == "postgres" else "pg_app_url")) as s:
        yield s


@pytest.fixture
def file_store(db_path: str) -> Iterator[minies.EventStore]:
    with minies.EventStore(db_path) as s:
        yield s


def run_python(code: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import the tests' domain module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helper process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tamper(store: minies.EventStore, update: str, params: tuple[Any, ...] = ()) -> None:
    """Drop the update guard and run ``update`` on the events table as the log's owner would (a
    store that runs as the application role cannot: it is not the owner)."""
    drop = "DROP TRIGGER events_no_update" + (" ON events" if store.path.startswith("postgres") else "")
    if f"{APP_ROLE}@" not in store.path:
        store._conn.execute(drop)
        store._conn.execute(update, params)
        return
    import psycopg

    from minies._backends.postgres_connection import translate

    dsn, _, schema = owner_url(store.path).partition("?schema=")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        conn.execute(drop)
        conn.execute(translate(update)[0], params)


def owner_url(url: str) -> str:
    """The URL of a PostgreSQL log's owner (the superuser), for a URL of the application role's."""
    return url.replace(f"{APP_ROLE}@", "postgres@", 1)


def schema_objects(store: minies.EventStore) -> set[str]:
    """Names of the tables, indexes and views the store's database holds."""
    if store.path.startswith("postgres"):
        return {
            name
            for (name,) in store.query(
                "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            )
        }
    return {name for (name,) in store.query("SELECT name FROM sqlite_master")}


@pytest.fixture
def upcasting_on() -> Iterator[None]:
    """A rename of a type no test stores: reads take the upcasting path, whatever the session imported."""
    from minies import _events, _upcasters

    minies.rename("minies-tests.NeverStored", "minies-tests.NeverStoredEither")
    assert _upcasters.active()
    try:
        yield
    finally:
        del _upcasters.renames["minies-tests.NeverStored"]
        _events.generation += 1


@pytest.fixture
def no_upcasting() -> Iterator[None]:
    """No versioned class, upcaster or rename registered: reads take the plain path (the test
    session imports versioned classes, so every other test reads through the upcasting one)."""
    from minies import _events, _upcasters

    saved = dict(_events.registry), dict(_upcasters.upcasters), dict(_upcasters.renames)
    for name, cls in saved[0].items():
        if cls.schema_version != 1:
            del _events.registry[name]
    _upcasters.upcasters.clear()
    _upcasters.renames.clear()
    _events.generation += 1
    assert not _upcasters.active()
    try:
        yield
    finally:
        _events.registry.update(saved[0])
        _upcasters.upcasters.update(saved[1])
        _upcasters.renames.update(saved[2])
        _events.generation += 1
