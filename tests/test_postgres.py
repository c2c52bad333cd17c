"""What only the PostgreSQL backend has to prove: many processes on one server, a superuser
who tampers, copies between a file and a server, and the server's own failure modes.

The contract every backend keeps (appends, reads, projections, subscriptions, audit,
upcasting) runs on both backends in the other test files.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pgserver
import psycopg
import pytest
from conftest import run_python
from domain import AccountOpened, Balances, MoneyDeposited, SnappedAccount

import minies
from minies._backends.postgres_connection import translate


def psql(url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """Run SQL as the superuser through the stock ``psql`` client, in the store's schema."""
    dsn, _, schema = url.partition("?schema=")
    return subprocess.run(
        [
            shutil.which("psql") or "psql",
            dsn,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            f"SET search_path TO {schema}; {sql}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def fill(url: str, n: int = 12) -> None:
    with minies.EventStore(url, projections=[Balances()]) as store:
        for i in range(n):
            store.append(f"acc-{i % 3}", [MoneyDeposited(amount=i)], aggregate_type="Account")


WRITER = """
import sys, minies
from domain import MoneyDeposited
url, me = sys.argv[1], int(sys.argv[2])
with minies.EventStore(url) as store:
    for i in range(40):
        store.append(f"own-{me}", [MoneyDeposited(amount=i)], aggregate_type="Account")  # i: this process's order
        while True:  # the shared aggregate: optimistic concurrency, retried on conflict
            version = store.version("shared")
            try:
                store.append("shared", [MoneyDeposited(amount=me)], aggregate_type="Account", expected_version=version)
                break
            except minies.ConcurrencyError:
                pass
"""


def drop_session(store: minies.EventStore, pid: int | None = None) -> None:
    """What a server restart or an admin does to the store's session (or to ``pid``'s)."""
    dsn = store.path.partition("?schema=")[0]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid or store._conn.raw.info.backend_pid,))


def test_four_processes_append_with_conflicts_gap_free_in_commit_order(pg_url: str) -> None:
    minies.EventStore(pg_url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, str(me)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    with minies.EventStore(pg_url) as store:
        records = list(store.read_all())
        assert [r.position for r in records] == list(range(1, 321))  # 4 x (40 own + 40 shared), no gaps
        shared = [r for r in records if r.aggregate_id == "shared"]
        assert [r.version for r in shared] == list(range(1, 161))  # no lost update, no double
        assert sorted(r.data.amount for r in shared) == sorted([0, 1, 2, 3] * 40)
        for me in range(4):  # each process's appends sit in the log in the order it made them
            assert [r.data.amount for r in records if r.aggregate_id == f"own-{me}"] == list(range(40))
        assert store.verify().ok


def test_threads_share_commits_on_postgres_and_each_append_keeps_its_own_outcome(pg_url: str) -> None:
    with minies.EventStore(pg_url, projections=[Balances()]) as store:
        store.append("shared", [AccountOpened(owner="o", balance=0)], aggregate_type="Account")
        conflicts: list[int] = []

        def work(me: int) -> None:
            for i in range(25):
                store.append(f"own-{me}", [MoneyDeposited(amount=1)], aggregate_type="Account", expected_version=i)
                try:
                    store.append("shared", [MoneyDeposited(amount=1)], aggregate_type="Account", expected_version=1 + i)
                except minies.ConcurrencyError:
                    conflicts.append(me)

        threads = [threading.Thread(target=work, args=(me,)) for me in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shared = store.version("shared") - 1
        assert shared + len(conflicts) == 6 * 25  # every append either committed or got its own error
        assert all(store.version(f"own-{me}") == 25 for me in range(6))
        assert store.query("SELECT balance FROM balances WHERE account_id = 'shared'") == [(shared,)]
        assert store.head()[0] == 1 + 150 + shared and store.verify().ok


def test_the_server_refuses_changes_to_history_from_any_client(pg_url: str) -> None:
    fill(pg_url)
    for sql, refused in (
        ("UPDATE events SET data = '{\"amount\": 999}' WHERE position = 3", "UPDATE is refused"),
        ("DELETE FROM events WHERE position = 12", "DELETE is refused"),
        ("TRUNCATE events", "TRUNCATE is refused"),
        (
            "INSERT INTO events SELECT 20, gen_random_uuid(), 'x', 'Account', 'MoneyDeposited', 1, '{}', '{}', now(),"
            " '\\x00', 1",
            "must take the next position",
        ),
    ):
        result = psql(pg_url, sql)
        assert result.returncode != 0 and refused in result.stderr, (sql, result.stderr)
    with minies.EventStore(pg_url) as store:
        with pytest.raises(psycopg.Error, match="UPDATE is refused"):
            store._conn.execute("UPDATE events SET version = version")
        assert store.head()[0] == 12 and store.verify().ok


def test_a_superuser_who_disables_the_triggers_is_caught_by_verify(pg_url: str) -> None:
    fill(pg_url)
    edit = "ALTER TABLE events DISABLE TRIGGER USER; UPDATE events SET data = '{\"amount\": 999}' WHERE position = 3"
    assert psql(pg_url, edit).returncode == 0
    with minies.EventStore(pg_url) as store:
        report = store.verify()
        assert not report.ok and report.first_bad_position == 3 and "does not match its hash" in report.reason
    assert psql(pg_url, "UPDATE events SET data = '{\"amount\":2}' WHERE position = 3").returncode == 0  # put back
    with minies.EventStore(pg_url) as store:
        assert (
            store.verify().reason
            == "immutability triggers are disabled: events_append_only, events_no_delete, events_no_truncate, events_no_update"
        )
    assert psql(pg_url, "ALTER TABLE events ENABLE TRIGGER USER").returncode == 0
    with minies.EventStore(pg_url) as store:
        assert store.verify().ok
    assert psql(pg_url, "DROP TRIGGER events_no_delete ON events").returncode == 0
    with minies.EventStore(pg_url) as store:
        assert store.verify().reason == "immutability triggers are missing: events_no_delete"
    weakened = (
        "CREATE OR REPLACE FUNCTION minies_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    assert psql(pg_url, weakened).returncode == 0
    with minies.EventStore(pg_url) as store:
        assert store.verify().reason in (
            "immutability triggers are missing: events_no_delete",
            "the immutability trigger events_no_update was altered",
        )


def test_a_trigger_minies_did_not_create_is_reported(pg_url: str) -> None:
    fill(pg_url, 3)
    drop_them = (
        "CREATE FUNCTION drop_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
        " CREATE TRIGGER drop_it BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION drop_it()"
    )
    assert psql(pg_url, drop_them).returncode == 0
    with minies.EventStore(pg_url) as store:
        assert store.verify().reason == (
            "triggers minies did not create are on the events table: drop_it (one could drop or change appended events)"
        )


_ROLE = f"x_{uuid.uuid4().hex[:10]}"  # a role of the cluster's, for the tests that hand things to one
_APPEND_BODY = (
    "$$ DECLARE first bigint; last bigint; n bigint; BEGIN SELECT min(position), max(position), count(*)"
    " INTO first, last, n FROM new_rows; RETURN NULL; END $$"
)
# What a superuser (or the log's owner) can do to the guards, and what verify says about it.
PERIMETER = {
    "a rule": (
        "CREATE RULE swallow AS ON INSERT TO events DO INSTEAD NOTHING",
        "rules are on minies' tables: events.swallow (one can turn an append into nothing)",
    ),
    "a rule on the head": (
        "CREATE RULE stay AS ON UPDATE TO minies_head DO INSTEAD NOTHING",
        "rules are on minies' tables: minies_head.stay (one can turn an append into nothing)",
    ),
    "a trigger on the head": (
        "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
        " CREATE TRIGGER keep BEFORE UPDATE ON minies_head FOR EACH ROW EXECUTE FUNCTION keep()",
        "triggers minies did not create are on the events table: keep (on minies_head) (one could drop or change"
        " appended events)",
    ),
    "ENABLE REPLICA": (
        "ALTER TABLE events ENABLE REPLICA TRIGGER events_no_update",
        "immutability triggers do not fire in ordinary sessions: events_no_update (ENABLE REPLICA)",
    ),
    "ENABLE ALWAYS": (
        "ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only",
        "immutability triggers do not fire in ordinary sessions: events_append_only (ENABLE ALWAYS)",
    ),
    "a gutted append function": (
        "CREATE OR REPLACE FUNCTION minies_append() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
        f" SET search_path = pg_catalog, pg_temp AS {_APPEND_BODY}",
        "the function minies_append behind the immutability triggers was altered",
    ),
    "the append function run as the caller": (
        "ALTER FUNCTION minies_append() SECURITY INVOKER",
        "the function minies_append behind the immutability triggers was altered",
    ),
    "its search path unpinned": (
        "ALTER FUNCTION minies_append() RESET search_path",
        "the function minies_append behind the immutability triggers was altered",
    ),
    "the append lock removed": (
        "CREATE OR REPLACE FUNCTION minies_append_state(aggregate text) RETURNS TABLE (version bigint,"
        " aggregate_type text, head bigint, hash bytea) LANGUAGE sql AS $$ SELECT NULL::bigint, NULL::text,"
        " position, hash FROM minies_head $$",
        "the function minies_append_state behind the immutability triggers was altered",
    ),
    "an overload": (
        "CREATE FUNCTION minies_append_state(aggregate varchar) RETURNS TABLE (version bigint, aggregate_type text,"
        " head bigint, hash bytea) LANGUAGE sql AS $$ SELECT 0::bigint, NULL::text, 0::bigint, NULL::bytea $$",
        "the function minies_append_state has overloads minies did not create: aggregate text, aggregate character varying",
    ),
    "a trigger that never fires": (
        "DROP TRIGGER events_no_delete ON events; CREATE TRIGGER events_no_delete BEFORE DELETE ON events"
        " FOR EACH ROW WHEN (false) EXECUTE FUNCTION minies_refuse()",
        "the immutability trigger events_no_delete was altered",
    ),
    "a trigger on one column": (
        "DROP TRIGGER events_no_update ON events; CREATE TRIGGER events_no_update BEFORE UPDATE OF hash ON events"
        " FOR EACH ROW EXECUTE FUNCTION minies_refuse()",
        "the immutability trigger events_no_update was altered",
    ),
    "row-level security": (
        "ALTER TABLE events ENABLE ROW LEVEL SECURITY",
        "row-level security is on for events: some roles would read or write only part of it",
    ),
    "a policy": (
        "CREATE POLICY early ON events USING (position < 3)",
        "row-level security is on for events: some roles would read or write only part of it",
    ),
    "another owner": (
        f"ALTER FUNCTION minies_append() OWNER TO {_ROLE}",
        f"the function minies_append is owned by {_ROLE}, the events table by postgres: one owner runs both",
    ),
    "another owner of the head": (
        f"ALTER TABLE minies_head OWNER TO {_ROLE}",
        f"minies_head is owned by {_ROLE}, the events table by postgres: one owner holds both",
    ),
    "a role that skips triggers": (
        f"ALTER ROLE {_ROLE} SET session_replication_role = replica",
        f"session_replication_role is set for {_ROLE} (session_replication_role=replica): minies' triggers do not"
        " fire in such sessions",
    ),
    "the keys' guard off": (
        "ALTER TABLE minies_keys DISABLE TRIGGER minies_keys_guard",
        "immutability triggers are disabled: minies_keys_guard",
    ),
}


@pytest.mark.parametrize("change", PERIMETER)
def test_verify_reads_the_whole_perimeter_the_log_relies_on(pg_url: str, change: str) -> None:
    """Rules, trigger states and definitions, function bodies and settings, owners, row-level
    security, replica defaults: each change is reported, and undoing it makes verify pass."""
    sql, reason = PERIMETER[change]
    fill(pg_url, 3)
    dsn = pg_url.partition("?schema=")[0]
    with psycopg.connect(dsn, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (_ROLE,)).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                admin.execute(f"CREATE ROLE {_ROLE}")
    try:
        assert psql(pg_url, sql).returncode == 0
        with minies.EventStore(pg_url) as store:
            report = store.verify()
            assert (report.ok, report.reason) == (False, reason)
    finally:
        if "ALTER ROLE" in sql:
            assert psql(pg_url, f"ALTER ROLE {_ROLE} RESET ALL").returncode == 0


REPAIRABLE = {  # what a tool or an owner may do to minies' own guards, and what repair re-creates
    "ENABLE REPLICA": (PERIMETER["ENABLE REPLICA"][0], ["events_no_update"]),
    "a gutted append function": (PERIMETER["a gutted append function"][0], ["minies_append()"]),
    "a trigger that never fires": (PERIMETER["a trigger that never fires"][0], ["events_no_delete"]),
    "the keys' guard off": (PERIMETER["the keys' guard off"][0], ["minies_keys_guard"]),
    "dropped": (
        "DROP TRIGGER events_no_truncate ON events; DROP TRIGGER events_append_only ON events",
        ["events_append_only", "events_no_truncate"],
    ),
}


@pytest.mark.parametrize("change", REPAIRABLE)
def test_a_writable_open_refuses_an_unguarded_log_and_repair_mends_minies_own_guards(pg_url: str, change: str) -> None:
    sql, redone = REPAIRABLE[change]
    fill(pg_url, 3)
    assert psql(pg_url, sql).returncode == 0
    with minies.EventStore(pg_url) as store:
        with pytest.raises(minies.SchemaError, match=r" is not guarded: .*Run `minies repair "):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.head()[0] == 3
    assert minies.repair(pg_url) == redone
    assert minies.repair(pg_url) == []
    with minies.EventStore(pg_url) as store:
        assert store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account") == 1
        assert store.verify().ok


def test_repair_on_a_server_drops_nothing_and_guards_no_log_that_fails_verify(pg_url: str) -> None:
    fill(pg_url, 3)
    assert psql(pg_url, PERIMETER["a rule"][0] + "; " + PERIMETER["ENABLE REPLICA"][0]).returncode == 0
    with pytest.raises(
        minies.SchemaError,
        match=r": what minies did not create stands in the way: the rule events.swallow; minies drops nothing",
    ):
        minies.repair(pg_url)
    assert psql(pg_url, "DROP RULE swallow ON events").returncode == 0
    edit = "UPDATE events SET data = '{\"amount\": 9}' WHERE position = 2"
    assert psql(pg_url, f"ALTER TABLE events DISABLE TRIGGER events_no_update; {edit}").returncode == 0
    with pytest.raises(minies.SchemaError, match=r"the log does not verify \(position 2: .*restore it from a backup"):
        minies.repair(pg_url)
    with minies.EventStore(pg_url, readonly=True) as store:  # nothing was changed
        enabled = "SELECT tgenabled FROM pg_trigger WHERE tgname = 'events_no_update' AND tgrelid = 'events'::regclass"
        assert store.query(enabled) == [("D",)]


def test_a_read_model_s_own_trigger_and_rule_on_its_own_table_pass_verify(pg_url: str) -> None:
    class Audited(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE emails (id TEXT)")
            db.execute("CREATE TABLE emails_log (id TEXT)")
            db.execute(
                "CREATE FUNCTION emails_logged() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN INSERT INTO emails_log VALUES (NEW.id); RETURN NEW; END $$"
            )
            db.execute("CREATE TRIGGER emails_log AFTER INSERT ON emails FOR EACH ROW EXECUTE FUNCTION emails_logged()")

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute("INSERT INTO emails VALUES (?)", (event.aggregate_id,))

    with minies.EventStore(pg_url, projections=[Audited()]) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.query("SELECT id FROM emails_log") == [("a",)]
        assert store.verify().ok


def as_role(url: str, role: str) -> str:
    return url.replace("postgres@", f"{role}@", 1)


def new_role(dsn: str) -> str:
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    return role


def test_appending_needs_no_right_to_move_the_head(pg_url: str) -> None:
    """INSERT on the events table and SELECT are enough: the trigger moves the head as the log's
    owner (before, a role needed UPDATE on minies_head, and with it could leave a gap for good)."""
    fill(pg_url, 2)
    dsn, _, schema = pg_url.partition("?schema=")
    role = new_role(dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT INSERT ON {schema}.events TO {role}")
    with minies.EventStore(as_role(pg_url, role)) as store:
        assert store.append("a", [MoneyDeposited(amount=1), MoneyDeposited(amount=2)], aggregate_type="Account") == 2
        assert store.append("a", [MoneyDeposited(amount=3)], aggregate_type="Account") == 3
    with minies.EventStore(pg_url) as store:
        assert store.head()[0] == 5 and store.verify().ok


def _as(url: str, role: str, sql: str) -> str:
    """What the server says to ``role`` running ``sql`` in the store's schema (empty: it ran)."""
    dsn, _, schema = as_role(url, role).partition("?schema=")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        try:
            conn.execute(sql)
        except psycopg.Error as e:
            return str(e).splitlines()[0]
    return ""


def test_the_app_role_appends_reads_projects_and_forgets_and_cannot_weaken_the_log(
    pg_url: str, pg_app_role: str
) -> None:
    minies.grant(pg_url, pg_app_role, "app")
    app = as_role(pg_url, pg_app_role)
    with minies.EventStore(app, projections=[Balances()], snapshot_every={SnappedAccount: 2}) as store:
        store.append("acc-1", [AccountOpened(owner="o", balance=1)], aggregate_type="Account")
        store.append("acc-1", [MoneyDeposited(amount=i) for i in range(3)], aggregate_type="Account")
        account = SnappedAccount(id="s")
        account.record(AccountOpened(owner="o", balance=1))
        for i in range(3):
            account.record(MoneyDeposited(amount=i))
            store.save(account)
        assert store.load(SnappedAccount, "s").balance == 4
        store.append("p-1", [ServerNoteTaken(note="secret")], aggregate_type="Patient")
        store.subscription("mailer").poll(lambda r: None, limit=2)
        erasure = store.forget("p-1")  # (the keys table is the owner's to rewrite: not purged, and it says so)
        assert (erasure.keys, erasure.purged) == (1, False)
        assert store.query("SELECT balance FROM balances WHERE account_id = 'acc-1'") == [(4,)]
        assert store.rebuild("Balances").events > 0 and store.verify().ok
    refused = {
        "UPDATE events SET data = '{}' WHERE position = 1": "permission denied for table events",
        "DELETE FROM events": "permission denied for table events",
        "TRUNCATE events": "permission denied for table events",
        "UPDATE minies_head SET position = 99": "permission denied for table minies_head",
        "INSERT INTO minies_head VALUES (true, 0, '')": "permission denied for table minies_head",
        "DELETE FROM minies_keys": "permission denied for table minies_keys",
        "TRUNCATE minies_keys": "permission denied for table minies_keys",
        "UPDATE minies_keys SET key = 'x'": "minies: personal-data keys are only destroyed, by forget; UPDATE is refused",
        "UPDATE minies_keys SET key = NULL, forgotten_at = now(), subject = 'x'": (
            "minies: personal-data keys are only destroyed, by forget; UPDATE is refused"
        ),
        "ALTER TABLE events DISABLE TRIGGER ALL": "must be owner of table events",
        "ALTER TABLE events ENABLE REPLICA TRIGGER events_no_update": "must be owner of table events",
        "ALTER TABLE minies_keys DISABLE TRIGGER USER": "must be owner of table minies_keys",
        "DROP TRIGGER events_no_delete ON events": "must be owner of relation events",
        "CREATE RULE swallow AS ON INSERT TO events DO INSTEAD NOTHING": "must be owner of table events",
        "CREATE RULE stay AS ON UPDATE TO minies_head DO INSTEAD NOTHING": "must be owner of table minies_head",
        "CREATE TRIGGER t BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION minies_refuse()": (
            "permission denied for table events"
        ),
        "CREATE POLICY p ON events USING (false)": "must be owner of table events",
        "ALTER TABLE events ENABLE ROW LEVEL SECURITY": "must be owner of table events",
        "DROP TABLE minies_subscriptions": "must be owner of table minies_subscriptions",
        "ALTER TABLE events RENAME TO old_events": "must be owner of table events",
        "CREATE OR REPLACE FUNCTION minies_append() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$": (
            "must be owner of function minies_append"
        ),
        "SET session_replication_role = replica": 'permission denied to set parameter "session_replication_role"',
        "SELECT set_config('session_replication_role', 'replica', false)": (
            'permission denied to set parameter "session_replication_role"'
        ),
        f"ALTER ROLE {pg_app_role} SET session_replication_role = replica": (
            'permission denied to set parameter "session_replication_role"'
        ),
    }
    said = {sql: _as(pg_url, pg_app_role, sql) for sql in refused}
    assert said == refused
    with minies.EventStore(pg_url) as store:
        assert store.verify().ok and store.head()[0] == 10


def test_reader_and_auditor_roles_read_and_verify_and_write_nothing(pg_url: str) -> None:
    fill(pg_url, 3)
    dsn = pg_url.partition("?schema=")[0]
    reader, auditor = new_role(dsn), new_role(dsn)
    minies.grant(pg_url, reader, "reader")
    result = subprocess.run(
        [sys.executable, "-m", "minies", "grant", "--role", "auditor", pg_url, auditor],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, f"granted auditor to {auditor} on {pg_url}\n"), result.stderr
    for role in (reader, auditor):
        with minies.EventStore(as_role(pg_url, role), readonly=True) as store:
            assert store.head()[0] == 3 and store.verify().ok and len(list(store.read_all())) == 3
        denied = r"permission denied \(permission denied for table events\)"
        with minies.EventStore(as_role(pg_url, role)) as store, pytest.raises(minies.StorageError, match=denied):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert _as(pg_url, role, "CREATE TABLE mine (x int)").startswith("permission denied for schema")
    with minies.EventStore(as_role(pg_url, reader), readonly=True) as store:
        assert store.query("SELECT count(*) FROM balances") == [(3,)]
    with (
        minies.EventStore(as_role(pg_url, auditor), readonly=True) as store,
        pytest.raises(minies.MiniesError, match="permission denied for table balances"),
    ):
        store.query("SELECT count(*) FROM balances")
    with pytest.raises(ValueError, match="access must be one of app, reader, auditor, got 'admin'"):
        minies.grant(pg_url, reader, "admin")  # type: ignore[arg-type]
    with pytest.raises(minies.StorageError, match='role "nobody_here" does not exist'):
        minies.grant(pg_url, "nobody_here", "reader")
    on_a_file = subprocess.run(
        [sys.executable, "-m", "minies", "grant", "--role", "app", "shop.db", reader],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (on_a_file.returncode, on_a_file.stderr) == (
        2,
        "minies: error: roles exist on PostgreSQL only; 'shop.db' is a file (its permissions decide)\n",
    )


def test_a_log_of_the_previous_version_verifies_read_only_and_migrates_once_opened(
    pg_url: str, pg_app_role: str
) -> None:
    """A schema-4 log (the head moved with the appender's own rights, no guard on the keys)
    verifies as it is when opened read-only, and is brought to schema 5 by the first writable
    open, after which an app role appends without any right on the head."""
    from minies._backends import postgres_sql

    fill(pg_url, 3)
    schema = pg_url.partition("?schema=")[2]
    old_append = postgres_sql.APPEND_FUNCTION_V4.format(schema=f'"{schema}"').replace("CREATE", "CREATE OR REPLACE", 1)
    as_it_was = (
        f"{old_append}; DROP TRIGGER minies_keys_guard ON minies_keys; DROP TRIGGER minies_keys_no_truncate ON"
        " minies_keys; DROP FUNCTION minies_keys_guard(); UPDATE minies_schema SET version = 4"
    )
    assert psql(pg_url, as_it_was).returncode == 0
    with minies.EventStore(pg_url, readonly=True) as store:
        assert store.info().schema_version == 4 and store.verify().ok
    assert psql(pg_url, "ALTER FUNCTION minies_append() SECURITY DEFINER").returncode == 0
    with minies.EventStore(pg_url, readonly=True) as store:  # schema 4's function is checked as schema 4 made it
        assert store.verify().reason == "the function minies_append behind the immutability triggers was altered"
    assert psql(pg_url, "ALTER FUNCTION minies_append() SECURITY INVOKER").returncode == 0
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn, autocommit=True) as admin:  # an app role of the old version's
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {pg_app_role}")
        admin.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA {schema} TO {pg_app_role}")
    with pytest.raises(
        minies.SchemaError,
        match=r" is at schema version 4 and this role may not bring it to 5: open it once as the log's owner",
    ):
        minies.EventStore(as_role(pg_url, pg_app_role))
    with minies.EventStore(as_role(pg_url, pg_app_role), readonly=True) as store:
        assert store.head()[0] == 3 and store.verify().ok
    minies.grant(pg_url, pg_app_role, "app")  # the owner's open migrates
    with minies.EventStore(as_role(pg_url, pg_app_role)) as store:
        assert store.info().schema_version == 5
        assert store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account") == 1
        assert store.verify().ok and store.head()[0] == 4
    assert _as(pg_url, pg_app_role, "DELETE FROM minies_keys").startswith("permission denied")


def test_the_right_to_append_cannot_break_the_chain(pg_url: str, pg_app_role: str) -> None:
    """An app role inserts rows itself, outside minies: the next position with a hash that does
    not chain, or a version that does not follow its aggregate's last, is refused (either would
    have made the log fail verify for good); a row chained as minies chains it goes in."""
    from minies import _audit

    minies.grant(pg_url, pg_app_role, "app")
    fill(pg_url, 3)  # acc-0..acc-2 at version 1

    def insert(version: int, data: str, digest: bytes | None = None) -> str:
        with minies.EventStore(pg_url) as store:
            head = bytes.fromhex(store.head()[1])
        event_id, at = str(uuid.uuid4()), "2026-01-01T00:00:00.000000Z"
        right = _audit.chain_batch(
            head, 4, [event_id], "acc-0", "Account", ["MoneyDeposited"], version, [data], "{}", at, [1]
        )
        return _as(
            pg_url,
            pg_app_role,
            f"INSERT INTO events VALUES (4, '{event_id}', 'acc-0', 'Account', 'MoneyDeposited', {version}, '{data}',"
            f" '{{}}', '{at}', '\\x{(digest or right[0]).hex()}', 1)",
        )

    assert insert(2, '{"amount":5}', digest=bytes(32)) == (
        "minies: a new event's hash must chain it to the event before (see verify); refused"
    )
    assert insert(3, '{"amount":5}') == "minies: a new event's version must follow its aggregate's last; refused"
    assert insert(2, '{"amount":5}') == ""  # chained as minies chains it
    with minies.EventStore(pg_url) as store:
        assert store.head()[0] == 4 and store.version("acc-0") == 2 and store.verify().ok


def test_every_session_setting_survives_a_new_session(pg_url: str) -> None:
    """A read-only store stays read-only, and keeps its timeouts, durability and search path,
    on the session that replaces a dropped one (the read-only setting was the first session's only)."""
    fill(pg_url, 2)
    settings = (
        "SELECT current_setting('default_transaction_read_only'), current_setting('lock_timeout'),"
        " current_setting('idle_in_transaction_session_timeout'), current_setting('synchronous_commit'),"
        " current_setting('search_path')"
    )
    with minies.EventStore(pg_url, readonly=True, durability="normal", timeout=2) as store:
        before = store.query(settings)
        for _ in range(2):
            drop_session(store)
            with pytest.raises(minies.StorageError, match="this store was opened with readonly=True"):
                store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
            assert store.query(settings) == before
        assert before[0][:4] == ("on", "2s", "2s", "off") and before[0][4].endswith(", pg_temp")
        assert store.head()[0] == 2
    with minies.EventStore(pg_url) as store:
        assert store.head()[0] == 2


def test_a_statement_with_a_gap_inside_it_is_refused_by_insert_and_by_copy(pg_url: str) -> None:
    fill(pg_url, 2)
    row = "(%d, gen_random_uuid(), 'x', 'Account', 'MoneyDeposited', %d, '{}', '{}', now(), '\\x00', 1)"
    gap = f"INSERT INTO events VALUES {row % (3, 1)}, {row % (5, 2)}"
    copied = (
        "COPY events FROM STDIN;\n3\t00000000-0000-4000-8000-000000000001\tx\tAccount\tMoneyDeposited\t1\t{}\t{}\t"
        "2026-01-01\t\\\\x00\t1\n5\t00000000-0000-4000-8000-000000000002\tx\tAccount\tMoneyDeposited\t2\t{}\t{}\t"
        "2026-01-01\t\\\\x00\t1\n\\.\n"
    )
    for sql in (gap, f"INSERT INTO events VALUES {row % (4, 1)}, {row % (3, 2)}, {row % (6, 3)}"):
        result = psql(pg_url, sql)
        assert result.returncode != 0 and "must take the next position" in result.stderr, result.stderr
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.RaiseException, match="next position"):
        conn.execute(f"SET search_path TO {schema}")
        with conn.cursor().copy(copied.split(";\n", 1)[0]) as copy:
            copy.write(copied.split(";\n", 1)[1].removesuffix("\\.\n"))
    with minies.EventStore(pg_url) as store:
        assert store.head()[0] == 2 and store.verify().ok


def test_a_frozen_writer_cannot_hold_the_log_past_the_timeout(pg_url: str) -> None:
    """A writer that stops mid-transaction (a stopped process, a debugger) is ended by the
    server once it has been idle for ``timeout``: other writers get the log; it gets an error."""
    fill(pg_url, 1)
    frozen = minies.EventStore(pg_url, timeout=1)
    outcome: list[object] = []

    def freeze() -> None:
        try:
            with frozen.transaction():
                frozen.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
                time.sleep(4)  # holds the log's lock, idle in its transaction
        except minies.MiniesError as e:
            outcome.append(e)

    thread = threading.Thread(target=freeze)
    thread.start()
    time.sleep(0.5)
    with minies.EventStore(pg_url, timeout=10) as other:
        started = time.monotonic()
        assert other.append("b", [MoneyDeposited(amount=2)], aggregate_type="Account") == 1
        assert time.monotonic() - started < 4
    thread.join(30)
    frozen.close()
    assert len(outcome) == 1 and isinstance(outcome[0], minies.StorageError), outcome
    assert str(outcome[0]) == (
        "cannot commit: the transaction stood idle longer than 1s (timeout=) while it held the log, and the server"
        " ended it; nothing from it was written"
    )
    with minies.EventStore(pg_url) as store:
        assert store.version("a") == 0 and store.head()[0] == 2 and store.verify().ok


def test_a_statement_of_a_write_that_runs_past_the_timeout_is_cancelled(pg_url: str) -> None:
    class Slow(minies.Projection):
        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute("SELECT pg_sleep(5)")

    with minies.EventStore(pg_url, projections=[Slow()], timeout=1) as store:
        started = time.monotonic()
        with pytest.raises(
            minies.ProjectionError, match=r"QueryCanceled: canceling statement due to statement timeout$"
        ):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert time.monotonic() - started < 4 and store.head()[0] == 0


def test_a_temporary_table_named_events_does_not_take_the_appends(pg_url: str) -> None:
    """A session's own temporary tables come first on PostgreSQL's default search path: one named
    'events' (made through the store's session, say) would have taken every append, to vanish
    with the session."""
    with minies.EventStore(pg_url) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        store._conn.raw.execute("CREATE TEMPORARY TABLE events (LIKE events INCLUDING ALL)")  # (the screen refuses it)
        store.append("a", [MoneyDeposited(amount=2), MoneyDeposited(amount=3)], aggregate_type="Account")
        store.append("a", [MoneyDeposited(amount=4)], aggregate_type="Account")
    with minies.EventStore(pg_url) as store:
        assert [r.data.amount for r in store.read("a")] == [1, 2, 3, 4] and store.verify().ok


def test_sessions_killed_at_random_during_appends_give_only_storage_errors_and_retries_store_once(
    pg_url: str,
) -> None:
    """Another connection ends the store's session at random moments (pg_terminate_backend), the
    commit's round trip included, while one client appends with fixed event ids and retries
    each failed append. Every failure is a StorageError (never psycopg's own: one was raised
    while the connection stayed stuck in pipeline mode), one lost during the commit says its
    outcome is unknown, and the log holds each append exactly once, in order."""
    import random

    rng = random.Random(29)
    with minies.EventStore(pg_url) as store:
        store.append("warm", [MoneyDeposited(amount=0)], aggregate_type="Account")
        dsn, stop = pg_url.partition("?schema=")[0], threading.Event()
        delays = [rng.random() * 0.01 for _ in range(1000)]

        def kill() -> None:
            with psycopg.connect(dsn, autocommit=True) as admin:
                for delay in itertools.cycle(delays):
                    if stop.wait(delay):
                        return
                    with contextlib.suppress(psycopg.OperationalError):  # (between a lost session and the next)
                        admin.execute("SELECT pg_terminate_backend(%s)", (store._conn.raw.info.backend_pid,))

        killer = threading.Thread(target=kill)
        killer.start()
        failures: list[BaseException] = []
        appended: list[str] = []
        try:
            for i in range(1500):
                ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4))]
                for _ in range(50):
                    try:
                        store.append("a", [MoneyDeposited(amount=i)], aggregate_type="Account", event_ids=ids)
                        break
                    except Exception as e:  # anything but a StorageError is a finding
                        failures.append(e)
                appended.append(ids[0])
                lost = [f for f in failures if "during the commit" in str(f)]
                if len(lost) >= 5 and i >= 300:
                    break
        finally:
            stop.set()
            killer.join(30)
        assert [type(f) for f in failures if not isinstance(f, minies.StorageError)] == []
        assert len(lost) >= 5, f"only {len(lost)} sessions were lost during the commit"
        assert (
            lost[0]
            .args[0]
            .endswith(
                "so whether this write was stored is unknown; retrying an append with the same event_ids is safe (if it"
                " was stored, the retry returns its version and stores nothing)"
            )
        )
    with minies.EventStore(pg_url) as store:
        assert [r.event_id for r in store.read("a")] == appended and store.verify().ok


def test_the_chain_recomputed_independently_from_the_servers_rows(pg_url: str) -> None:
    """The README's recipe, by hand, on rows read with plain psycopg: the same head hash."""
    fill(pg_url, 20)
    with minies.EventStore(pg_url) as store:
        head = store.head()
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        rows = conn.execute(
            "SELECT position, event_id::text, aggregate_id, aggregate_type, event_type, version, data::text,"
            " metadata::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
            " schema_version FROM events ORDER BY position"
        ).fetchall()
    digest = bytes(32)
    for *fields, schema_version in rows:
        canonical = b"".join(b"%d:%s," % (len(str(f).encode()), str(f).encode()) for f in fields)
        if schema_version != 1:
            canonical += b"%d:%d," % (len(str(schema_version)), schema_version)
        digest = hashlib.sha256(digest + canonical).digest()
    assert (len(rows), digest.hex()) == head


class ServerNoteTaken(minies.Event):  # the subject is the aggregate id
    note: minies.Personal[str] = ""


def test_copy_file_to_server_and_back_keeps_the_head_hash_and_is_incremental(tmp_path: Path, pg_url: str) -> None:
    edge, back = str(tmp_path / "edge.db"), str(tmp_path / "back.db")
    with minies.EventStore(edge, snapshot_every={SnappedAccount: 2}) as store:
        account = SnappedAccount(id="s")
        account.record(AccountOpened(owner="o", balance=1))
        for i in range(5):
            account.record(MoneyDeposited(amount=i))
            store.save(account)
        for patient in ("p-1", "p-2"):  # personal data: its keys travel, a forgotten one stays so
            store.append(patient, [ServerNoteTaken(note=f"about {patient}")], aggregate_type="Patient")
        store.forget("p-2")
    fill(edge)
    with minies.EventStore(edge) as store:
        head, snapshots = store.head(), store.snapshot_stats()

    def notes(where: str) -> list[tuple[str, list[str]]]:
        with minies.EventStore(where) as store:
            return [(r.data.note, sorted(minies.forgotten(r))) for p in ("p-1", "p-2") for r in store.read(p)]

    assert notes(edge) == [("about p-1", []), ("", ["note"])]
    assert minies.copy(edge, pg_url).head_hash == head[1]
    with minies.EventStore(pg_url, projections=[Balances()]) as server:  # projections rebuild there
        assert server.head() == head and server.verify().ok and server.snapshot_stats() == snapshots
        assert server.load(SnappedAccount, "s").balance == 11
        assert server.query("SELECT balance FROM balances WHERE account_id = 'acc-0'") == [(18,)]
    assert notes(pg_url) == notes(edge)
    assert minies.copy(pg_url, back).head_hash == head[1]
    assert notes(back) == notes(edge)
    fill(edge, 5)  # the edge device writes more: only those travel
    report = minies.copy(edge, pg_url)
    assert (report.copied, report.skipped) == (5, head[0])
    with minies.EventStore(edge) as store:
        assert report.head_hash == store.head()[1]
    fill(back, 1)  # the other file diverged from the server
    with pytest.raises(minies.SchemaError, match=rf"\(they differ at position {head[0] + 1}\); copy to a new store"):
        minies.copy(back, pg_url)
    result = subprocess.run(
        [sys.executable, "-m", "minies", "copy", pg_url, str(tmp_path / "cli.db")], capture_output=True, text=True
    )
    assert result.returncode == 0 and f"head {head[0] + 5} {report.head_hash}" in result.stdout


def test_concurrent_first_opens_of_an_empty_database_all_succeed(pg_dsn: str) -> None:
    """Six processes create one schema and its log at once, four times over. (The schema lock
    was keyed by current_schema(), NULL before the schema exists: no lock at all, and about one
    first open in fifty failed on a duplicate schema or table.)"""
    code = "import sys, minies\nwith minies.EventStore(sys.argv[1]) as s: print(s.info().schema_version)"
    for _ in range(4):
        url = pgserver.fresh_schema(pg_dsn)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        outs = [proc.communicate(timeout=120) for proc in procs]
        assert [(p.returncode, out) for p, (out, _) in zip(procs, outs, strict=True)] == [(0, "5\n")] * 6, outs


def test_a_first_open_while_another_client_creates_the_schema_succeeds(pg_url: str) -> None:
    dsn, _, schema = pg_url.partition("?schema=")
    opened: list[object] = []
    with psycopg.connect(dsn) as other, psycopg.connect(dsn, autocommit=True) as watcher:
        other.execute(f"CREATE SCHEMA {schema}")  # not committed yet: the first open waits on it
        thread = threading.Thread(target=lambda: opened.append(_open_and_count(pg_url)))
        thread.start()
        deadline = time.monotonic() + 30
        while not watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE SCHEMA%'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline and thread.is_alive(), opened
            time.sleep(0.01)
        other.commit()
    thread.join(60)
    assert opened == [0]


def _open_and_count(url: str) -> object:
    try:
        with minies.EventStore(url) as store:
            return store.head()[0]
    except minies.MiniesError as e:
        return e


def test_a_lock_held_past_the_timeout_is_a_storage_error(pg_url: str) -> None:
    fill(pg_url, 1)
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn) as other, minies.EventStore(pg_url, timeout=0.3) as store:
        other.execute(f"SELECT * FROM {schema}.minies_head FOR UPDATE")  # another writer, mid-append
        with pytest.raises(minies.StorageError, match=r"locked by another connection and stayed locked for 0.3s"):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        other.rollback()
        assert store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account") == 1


def test_projections_on_postgres_cannot_end_the_transaction_or_write_minies_tables(pg_url: str) -> None:
    class Rogue(minies.Projection):
        sql = ""

        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE seen (position BIGINT)")

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute("INSERT INTO seen VALUES (?)", (event.position,))
            if Rogue.sql:
                db.execute(Rogue.sql)

    with minies.EventStore(pg_url, projections=[Rogue()]) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        for sql in (
            "COMMIT",
            "  rollback",
            "SAVEPOINT x",
            "SET search_path TO public",
            "UPDATE minies_projections SET position = 0",
            'insert into "minies_subscriptions" VALUES (1)',
            "DELETE FROM events",
            "SELECT 1; COMMIT",
        ):
            Rogue.sql = sql
            with pytest.raises(minies.MiniesError, match="a projection may not run"):
                store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        Rogue.sql = "SELECT ';' AS not_two_statements, '?' AS not_a_placeholder"
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.query("SELECT position FROM seen ORDER BY 1") == [(1,), (2,)]
        assert store.version("a") == 2


REFUSED_TO_PROJECTIONS = (
    "DELETE/**/FROM minies_keys",
    "TRUNCATE seen, minies_keys",
    'TRUNCATE TABLE ONLY "minies_keys"',
    "MERGE INTO minies_projections p USING seen s ON false WHEN NOT MATCHED THEN DO NOTHING",
    "DROP TABLE IF EXISTS seen, minies_subscriptions",
    "ALTER TABLE IF EXISTS events DISABLE TRIGGER ALL",
    "ALTER TABLE ONLY public.events ENABLE REPLICA TRIGGER events_no_update",
    "CREATE RULE swallow AS ON INSERT TO events DO INSTEAD NOTHING",
    "CREATE OR REPLACE RULE r AS ON UPDATE TO minies_head DO INSTEAD NOTHING",
    "CREATE TRIGGER t BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE POLICY p ON events USING (false)",
    "SELECT set_config('session_replication_role', 'replica', true)",
    "SELECT pg_catalog.set_config('synchronous_commit', 'off', false)",
    "WITH gone AS (DELETE FROM minies_keys RETURNING 1) SELECT count(*) FROM gone",
    "UPDATE minies_head SET position = position + 1",
    "INSERT INTO events SELECT * FROM events",
    "LOCK TABLE events",
    "ANALYZE minies_keys",
    "DO $$ BEGIN DELETE FROM minies_keys; END $$",
    "CALL anything()",
    "RESET ALL",
    "set local synchronous_commit = off",
    "DISCARD ALL",
    "COMMENT ON TABLE events IS 'x'",
    "SELECT 1; DELETE FROM minies_keys",
)


@pytest.mark.parametrize("sql", REFUSED_TO_PROJECTIONS)
def test_a_projection_s_handle_refuses_what_would_weaken_the_log_or_its_session(pg_url: str, sql: str) -> None:
    class Rogue(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE seen (position BIGINT)")

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute(sql)

    with minies.EventStore(pg_url, projections=[Rogue()]) as store:
        with pytest.raises(minies.MiniesError, match=r"^a projection may not run "):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.head()[0] == 0 and store.query("SHOW synchronous_commit") == [("on",)]


def test_a_projection_s_handle_lets_through_what_only_looks_like_a_write_to_minies_tables(pg_url: str) -> None:
    class Counts(minies.Projection):
        def setup(self, db: minies.Database) -> None:
            db.execute("CREATE TABLE stats (name TEXT PRIMARY KEY, events INTEGER NOT NULL, note TEXT)")
            db.execute("CREATE INDEX stats_events ON stats (events)")

        def handle(self, db: minies.Database, event: minies.Recorded) -> None:
            db.execute(
                "INSERT INTO stats VALUES ('all', 1, 'DELETE FROM minies_keys; TRUNCATE events') -- , minies_keys\n"
                " ON CONFLICT (name) DO UPDATE SET events = stats.events + 1, note = $x$ ; COMMIT $x$"
            )
            db.execute("UPDATE stats SET events = events WHERE name = ? AND note <> 'set_config('", ("all",))
            assert db.execute("SELECT count(*) FROM events WHERE position <= ?", (event.position,)) == [
                (event.position,)
            ]
            assert db.execute("SELECT 7 % 3") == [(1,)]
            assert db.execute("SELECT 'a%' LIKE ?, '%' || ?", ("a_", "b")) == [(True, "%b")]

    with minies.EventStore(pg_url, projections=[Counts()]) as store:
        store.append("a", [MoneyDeposited(amount=1), MoneyDeposited(amount=2)], aggregate_type="Account")
        assert store.query("SELECT events FROM stats") == [(2,)]


def test_placeholders_are_translated_outside_quotes_comments_and_casts() -> None:
    assert translate("SELECT ?, :name, '?', \"a?\", 1::text, 5 % 2 -- ?\n") == (
        "SELECT %s, %(name)s, '?', \"a?\", 1::text, 5 %% 2 -- ?\n",
        False,
    )
    assert translate("SELECT 1; SELECT 2")[1] and not translate("SELECT 1;  ")[1]
    assert translate("SELECT $x$ ? ; $x$")[0] == "SELECT $x$ ? ; $x$"


def test_schemas_keep_apps_apart_and_names_are_checked(pg_dsn: str) -> None:
    one, two = f"{pg_dsn}?schema=app_one_{id(pg_dsn)}", f"{pg_dsn}?schema=app_two_{id(pg_dsn)}"
    fill(one, 3)
    fill(two, 5)
    with minies.EventStore(one) as a, minies.EventStore(two) as b:
        assert (a.head()[0], b.head()[0]) == (3, 5)
    with pytest.raises(ValueError, match="schema must be a lowercase SQL name"):
        minies.EventStore(f"{pg_dsn}?schema=Robert'); DROP TABLE events;--")


def test_a_read_only_store_refuses_writes_and_an_empty_schema(pg_url: str) -> None:
    with pytest.raises(minies.SchemaError, match="holds no minies log"):
        minies.EventStore(pg_url, readonly=True)
    fill(pg_url, 2)
    with minies.EventStore(pg_url, readonly=True) as store:
        assert store.head()[0] == 2
        with pytest.raises(
            minies.StorageError, match=": this store was opened with readonly=True; open it without to write$"
        ):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.head()[0] == 2


def test_a_foreign_events_table_is_refused_untouched(pg_url: str) -> None:
    dsn, _, schema = pg_url.partition("?schema=")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.events (id int)")
    with pytest.raises(minies.SchemaError, match="has an 'events' table that is not a minies log"):
        minies.EventStore(pg_url)
    assert psql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").stdout.split()[2] == "1"


def test_unreachable_servers_are_one_clear_error_without_the_password() -> None:
    with pytest.raises(minies.StorageError, match=r"cannot connect to postgresql://u:\*\*\*@127.0.0.1:1/x: ") as caught:
        minies.EventStore("postgresql://u:s3cret@127.0.0.1:1/x", timeout=2)
    assert "s3cret" not in str(caught.value)


def test_without_psycopg_a_url_names_the_extra_to_install() -> None:
    result = run_python(
        "import sys; sys.modules['psycopg'] = None\nimport minies\n"
        "try:\n    minies.EventStore('postgresql://u:pw@localhost/db')\nexcept minies.MiniesError as e:\n    print(e)",
    )
    assert result.stdout.strip() == (
        'cannot open postgresql://u:***@localhost/db: PostgreSQL needs psycopg; install it with: pip install "minies[postgres]"'
    )


def test_the_command_line_works_on_a_server(pg_url: str) -> None:
    fill(pg_url, 4)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        return subprocess.run(
            [sys.executable, "-m", "minies", *args], capture_output=True, text=True, timeout=60, env=env
        )

    info = cli("info", pg_url)
    assert info.returncode == 0 and "server" in info.stdout and "4 events in 3 aggregates" in info.stdout
    assert cli("verify", pg_url).returncode == 0
    events = cli("events", pg_url, "--json")
    assert [json.loads(line)["position"] for line in events.stdout.splitlines()] == [1, 2, 3, 4]
    with minies.EventStore(pg_url) as store:
        head = store.head()
    assert cli("head", pg_url).stdout == f"{head[0]} {head[1]}\n"
    assert cli("verify", pg_url, "--expect-head", f"{head[0]} {head[1]}").returncode == 0
    assert len(cli("export", pg_url).stdout.splitlines()) == 4
    assert "MoneyDeposited" in cli("types", pg_url).stdout
    assert cli("snapshots", pg_url).returncode == 0
    assert cli("check", pg_url, "--import", "domain").returncode == 0
    rebuilt = cli("rebuild", pg_url, "Balances", "--import", "domain")
    assert rebuilt.returncode == 0 and "rebuilt Balances: 4 events" in rebuilt.stdout, rebuilt.stderr
    refused = cli("backup", pg_url, "copy.db")
    assert refused.returncode == 2 and "use pg_dump, or minies.copy" in refused.stderr


def test_durability_timeout_and_backup_map_to_the_server(pg_url: str) -> None:
    with minies.EventStore(pg_url) as full, minies.EventStore(pg_url, durability="normal", timeout=2.5) as normal:
        assert full.query("SHOW synchronous_commit") == [("on",)]
        assert normal.query("SHOW synchronous_commit") == [("off",)]
        assert normal.query("SHOW lock_timeout") == [("2500ms",)]
        with pytest.raises(minies.StorageError, match=r"use pg_dump, or minies.copy\(url, 'x.db'\) for a minies file"):
            full.backup("x.db")


def test_the_readme_s_jsonb_expression_index_works_on_the_json_payloads(pg_url: str) -> None:
    fill(pg_url, 30)
    assert psql(pg_url, "CREATE INDEX events_amount ON events (((data::jsonb) ->> 'amount'))").returncode == 0
    with minies.EventStore(pg_url) as store:
        assert store.query("SELECT count(*) FROM events WHERE (data::jsonb) ->> 'amount' = ?", ("7",)) == [(1,)]
        assert store.verify().ok  # the payloads' text, and so the chain, is untouched


def test_the_docs_one_line_change_and_copy_command(tmp_path: Path, pg_dsn: str) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "how-to" / "postgresql.md").read_text()
    (line,) = re.findall(r"```py\n(.*?)```", readme, flags=re.S)
    server = f"{pg_dsn}?schema=shop_{uuid.uuid4().hex[:12]}"
    run_python(
        "import minies\nfrom domain import MoneyDeposited\nminies.EventStore('shop.db').close()\n"
        + line.replace("postgresql://app:secret@db.internal:5432/shop?schema=shop", server)
        + "store.append('a', [MoneyDeposited(amount=1)], aggregate_type='Account')\nstore.close()\n"
    )
    with minies.EventStore(server) as store:
        assert store.head()[0] == 1
    local = str(tmp_path / "local.db")
    fill(local, 3)
    copied = subprocess.run(
        [sys.executable, "-m", "minies", "copy", local, server.replace("shop_", "shop2_")],
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0 and "copied 3 events" in copied.stdout, copied.stderr


def test_the_testing_kit_runs_scenarios_on_a_server_and_leaves_nothing(pg_dsn: str) -> None:
    from minies.testing import projection_scenario, scenario

    (
        projection_scenario(Balances(), on=pg_dsn)
        .given("acc-1", AccountOpened(owner="o", balance=5), MoneyDeposited(amount=3), aggregate_type="Account")
        .then("SELECT account_id, balance FROM balances", [("acc-1", 8)])
    )
    scenario(SnappedAccount, "a", on=pg_dsn).given(AccountOpened(owner="o", balance=1)).when(
        lambda account: account.deposit(2)
    ).then(MoneyDeposited(amount=2))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'minies_test_%'").fetchone() == (0,)


def test_a_dropped_session_is_replaced_where_nothing_can_be_lost(pg_url: str) -> None:
    """A server restart, a failover, an idle timeout: the next call gets a new session, unless
    the session died inside a transaction (that one fails, and only it)."""
    with minies.EventStore(pg_url, projections=[Balances()]) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        drop_session(store)
        assert store.append("a", [MoneyDeposited(amount=2)], aggregate_type="Account") == 2  # a new session
        drop_session(store)
        assert store.version("a") == 2 and store.query("SELECT balance FROM balances") == [(3,)]
        with (
            pytest.raises(minies.StorageError, match="cannot be reached or dropped the connection"),
            store.transaction(),
        ):
            store.append("a", [MoneyDeposited(amount=4)], aggregate_type="Account")
            drop_session(store)
            store.append("a", [MoneyDeposited(amount=8)], aggregate_type="Account")
        assert store.version("a") == 2 and store.query("SELECT balance FROM balances") == [(3,)]  # all or nothing
        assert store.append("a", [MoneyDeposited(amount=16)], aggregate_type="Account") == 3
        assert store.verify().ok


def test_a_session_dropped_during_verify_is_one_clear_error_and_the_next_verify_passes(pg_url: str) -> None:
    with minies.EventStore(pg_url) as store:
        store.append("a", [MoneyDeposited(amount=1) for _ in range(5000)], aggregate_type="Account")

        def kill(checked: int, total: int) -> None:  # after the first chunk of the chain
            drop_session(store)

        with pytest.raises(
            minies.StorageError, match=r"^cannot verify: the server cannot be reached or dropped the connection \("
        ):
            store.verify(progress=kill)
        assert store.verify().ok and store.version("a") == 5000


def test_postgres_urls_open_the_same_store(pg_url: str) -> None:
    fill(pg_url, 2)
    with minies.EventStore(pg_url.replace("postgresql://", "postgres://", 1)) as store:
        assert store.head()[0] == 2 and store.verify().ok


def test_a_role_without_rights_or_writes_gets_one_clear_message_and_nothing_changes(pg_url: str) -> None:
    fill(pg_url, 2)
    dsn, _, schema = pg_url.partition("?schema=")
    reader, paused = f"r_{uuid.uuid4().hex[:10]}", f"p_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        for role in (reader, paused):
            admin.execute(f"CREATE ROLE {role} LOGIN")
            admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {reader}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {paused}")
        admin.execute(f"ALTER ROLE {paused} SET default_transaction_read_only = on")
    refusals = {
        reader: r"permission denied \(permission denied for table \w+\)",
        paused: r"the server takes no writes in this session \(a standby, or default_transaction_read_only\)",
    }
    for role, refusal in refusals.items():
        with minies.EventStore(pg_url.replace("postgres@", f"{role}@", 1)) as store:
            assert store.head()[0] == 2
            with pytest.raises(minies.StorageError, match=rf"^cannot (append to 'a'|commit): {refusal}$"):
                store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
            assert store.head()[0] == 2


def test_a_trigger_of_the_users_that_refuses_appends_is_its_message(pg_url: str) -> None:
    fill(pg_url, 2)
    with minies.EventStore(pg_url) as store:
        raw = store._conn.raw
        raw.execute(
            "CREATE FUNCTION paused() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'appends are paused for maintenance'; END $$"
        )
        raw.execute("CREATE TRIGGER paused BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION paused()")
        raw.commit()
        with pytest.raises(
            minies.StorageError, match=r"^cannot (append to 'a'|commit): appends are paused for maintenance$"
        ):
            store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.head()[0] == 2
        assert store.verify().reason.startswith("triggers minies did not create are on the events table: paused")


def test_query_on_a_server_refuses_several_statements_and_names_wrong_parameters(pg_url: str) -> None:
    fill(pg_url, 2)
    with minies.EventStore(pg_url) as store:
        with pytest.raises(
            minies.QueryError, match=r"^store.query runs one statement, got several: 'SELECT 1; SELECT 2'$"
        ):
            store.query("SELECT 1; SELECT 2")
        with pytest.raises(  # the server's complaint names the parameter ($1), not a placeholder
            minies.QueryError,
            match=r"^wrong parameters for 'SELECT count\(\*\) FROM events WHERE position = \?': invalid input syntax",
        ):
            store.query("SELECT count(*) FROM events WHERE position = ?", ("x",))
        assert store.query("SELECT count(*) FROM events WHERE position = ?", (2,)) == [(1,)]


def test_an_unreachable_server_says_why_on_one_line() -> None:
    with pytest.raises(
        minies.StorageError,
        match=r"^cannot connect to postgresql://u:\*\*\*@127.0.0.1:1/db: the server cannot be reached or dropped the "
        r"connection \(connection failed: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\)$",
    ):
        minies.EventStore("postgresql://u:secret@127.0.0.1:1/db")


def test_a_server_error_without_text_is_named_by_its_class() -> None:
    from minies._backends.postgres_connection import first_line as _first_line

    assert _first_line(psycopg.OperationalError()) == "OperationalError"
    assert _first_line(psycopg.OperationalError("  first\nsecond  ")) == "first"


class DeferredUnique(minies.Projection):
    """A read model whose UNIQUE constraint is checked at COMMIT, after the append's own checks."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE owners (owner TEXT, UNIQUE (owner) DEFERRABLE INITIALLY DEFERRED)")

    def on_AccountOpened(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO owners VALUES (?)", (event.data.owner,))


def test_a_read_model_constraint_checked_at_commit_is_not_mistaken_for_a_concurrent_append(pg_url: str) -> None:
    with minies.EventStore(pg_url, projections=[DeferredUnique()]) as store:
        store.append("a", [AccountOpened(owner="ann", balance=0)], aggregate_type="Account")
        with pytest.raises(minies.StorageError, match=r"^cannot commit: UniqueViolation: duplicate key value"):
            store.append("b", [AccountOpened(owner="ann", balance=0)], aggregate_type="Account")
        assert store.version("b") == 0 and store.query("SELECT owner FROM owners") == [("ann",)]


def test_a_session_dropped_during_a_query_is_one_clear_error_and_the_next_query_works(pg_url: str) -> None:
    dsn = pg_url.partition("?schema=")[0]
    fill(pg_url, 2)
    with minies.EventStore(pg_url) as store:
        pid = store._conn.raw.info.backend_pid

        def kill_when_sleeping() -> None:
            with psycopg.connect(dsn, autocommit=True) as admin:
                deadline = time.monotonic() + 30
                while not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE '%%pg_sleep%%'", (pid,)
                ).fetchall():
                    assert time.monotonic() < deadline, "the query never started"
                    time.sleep(0.01)
            drop_session(store, pid)

        killer = threading.Thread(target=kill_when_sleeping)
        killer.start()
        with pytest.raises(
            minies.StorageError, match=r"^cannot query: the server cannot be reached or dropped the connection \(\w"
        ):
            store.query("SELECT pg_sleep(30)")
        killer.join(30)
        assert store.query("SELECT count(*) FROM events") == [(2,)]


def test_an_empty_transaction_leaves_no_transaction_open_behind_it(pg_url: str) -> None:
    """A session left idle in a transaction would hold its locks and old rows (blocking DDL
    and VACUUM) until the store closed: after any block and a read, the session is idle."""
    dsn = pg_url.partition("?schema=")[0]
    fill(pg_url, 2)
    with minies.EventStore(pg_url) as store, psycopg.connect(dsn, autocommit=True) as admin:
        pid = store._conn.raw.info.backend_pid
        with store.transaction():
            pass
        assert store.version("a0") >= 0 and store.head()[0] == 2
        assert admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == ("idle",)
        with store.transaction():
            store.append("b", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.version("b") == 1
        state = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert state == ("idle",)


def test_a_session_dropped_just_before_the_commit_fails_the_commit_and_writes_nothing(pg_url: str) -> None:
    """The COMMIT must not be sent again on a new session: the transaction's writes went with
    the old one, and a COMMIT there would report success for writes that never happened."""
    dropped = (
        r"^cannot (commit|query): (the server cannot be reached or dropped the connection"
        r"|the connection to the server was lost during the commit) \(\w"
    )
    with minies.EventStore(pg_url, projections=[Balances()]) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        with pytest.raises(minies.StorageError, match=dropped), store.transaction():
            store.append("a", [MoneyDeposited(amount=2)], aggregate_type="Account")
            store.append("b", [MoneyDeposited(amount=4), MoneyDeposited(amount=8)], aggregate_type="Account")
            drop_session(store)
        assert (store.version("a"), store.version("b")) == (1, 0)
        with pytest.raises(minies.StorageError, match=dropped), store.transaction():
            store.append("a", [MoneyDeposited(amount=2)], aggregate_type="Account")
            drop_session(store)
            with pytest.raises(minies.StorageError, match=dropped):
                store.query("SELECT count(*) FROM events")  # a raw psycopg error before
        assert store.version("a") == 1 and store.query("SELECT sum(balance) FROM balances") == [(1,)]
        assert store.append("a", [MoneyDeposited(amount=16)], aggregate_type="Account") == 2
        assert store.verify().ok


def test_urls_are_told_from_paths_and_shown_without_their_password() -> None:
    from minies._backends import is_url, shown

    assert is_url("postgresql://h/db") and is_url("postgres://h/db")
    assert not is_url("postgresql.db") and not is_url(Path("postgres://h/db"))
    assert shown("postgresql://u:s3cret@h:5432/db?schema=x") == "postgresql://u:***@h:5432/db?schema=x"
    assert shown("postgres://u:s3cret@h/db") == "postgres://u:***@h/db"
    assert shown("postgresql://u@h/db") == "postgresql://u@h/db"
    assert shown(Path("shop.db")) == "shop.db"


def test_the_schema_is_taken_out_of_the_url_and_the_rest_kept() -> None:
    from minies._backends.postgres import split_schema

    assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    assert split_schema("postgresql://u@h/db?sslmode=require&schema=shop&application_name=") == (
        "postgresql://u@h/db?sslmode=require&application_name=",
        "shop",
    )
    assert split_schema("postgresql://u@h/db?schema=a&schema=b_2") == ("postgresql://u@h/db", "b_2")
    for bad in ("", "Shop", "1shop", "a" * 64, "shop;"):
        with pytest.raises(ValueError, match="schema must be a lowercase SQL name"):
            split_schema(f"postgresql://u@h/db?schema={bad}")


class _Added(minies.Event):
    amount: int


class _Counts(minies.Projection):
    name = "counts"

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE counts (id TEXT PRIMARY KEY, n INTEGER)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO counts VALUES (?, 1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1", (event.aggregate_id,)
        )


def test_a_store_opening_with_a_read_model_while_others_append_applies_each_event_once(pg_url: str) -> None:
    """A catch-up takes the log's lock before it reads its checkpoint and the head, as an
    append does (found by the sync histories: the read model counted some events twice)."""
    minies.EventStore(pg_url, projections=[_Counts()]).close()
    stop = threading.Event()

    def writer(i: int) -> None:
        with minies.EventStore(pg_url, projections=[_Counts()]) as store:
            for _ in range(30):
                store.append(f"a{i}", [_Added(amount=1)], aggregate_type="A")

    def opener() -> None:
        while not stop.is_set():
            minies.EventStore(pg_url, projections=[_Counts()]).close()

    threads = [threading.Thread(target=opener), *(threading.Thread(target=writer, args=(i,)) for i in range(4))]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    with minies.EventStore(pg_url) as store:
        assert sorted(store.query("SELECT id, n FROM counts")) == [(f"a{i}", 30) for i in range(4)]
