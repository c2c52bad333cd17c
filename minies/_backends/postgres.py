"""The PostgreSQL backend: the same log on a server, through psycopg 3.

Opened by URL: ``postgresql://user:password@host:port/dbname`` (or ``postgres://``), with an
optional ``?schema=NAME`` so several apps share a database. This is the only module that
turns psycopg's exceptions into minies' errors.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NoReturn

from minies._backends import postgres_connection, postgres_sql
from minies._backends.base import READ_ONLY_STORE, shown, swallowed, triggers_problem
from minies._backends.postgres_connection import Connection, first_line, pg_errors, psycopg, translate
from minies._backends.postgres_screen import Refused, why_refused
from minies._database import Database
from minies._errors import MiniesError, QueryError, SchemaError, StorageError

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


_HUB_TABLES: Final = (
    "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
    " AND relname IN ('minies_origins', 'minies_devices')"
)


class PostgresBackend:
    """A minies log in a PostgreSQL database (its tables created on first open)."""

    unguarded: str | None = None  # what is wrong with the guards, found on a writable open

    def __init__(self, url: str, *, durability: str, timeout: float, readonly: bool) -> None:
        if psycopg is None:
            raise MiniesError(
                f'cannot open {shown(url)}: PostgreSQL needs psycopg; install it with: pip install "minies[postgres]"'
            )
        self.where = shown(url)
        self.readonly = readonly
        self._timeout = timeout
        self.file_version = postgres_sql.SCHEMA_VERSION
        dsn, schema = split_schema(url)
        self._dsn = dsn
        # Every session of the store's gets all of these, a replacement for a dropped one too.
        # Temporary objects are looked up last (by default a session's own temporary table
        # named 'events' would take minies' inserts), and a writer cannot hold the log's lock
        # longer than others wait for it: not idle in a transaction, not in one statement.
        waits = max(1, int(timeout * 1000))
        self._settings = [
            f"SET lock_timeout = {waits}",
            f"SET idle_in_transaction_session_timeout = {max(1000, waits)}",
            f"SET synchronous_commit = {'on' if durability == 'full' else 'off'}",
        ]
        if readonly:
            self._settings.append("SET default_transaction_read_only = on")
        if schema is not None:
            self._settings.append(f"SET search_path TO {schema}, pg_temp")
        self.conn = Connection(self._connect(), self._connect, f"SET LOCAL statement_timeout = {max(1000, waits)}")
        try:
            self._prepare(schema)
        except BaseException:
            self.conn.raw.close()
            raise

    def _connect(self) -> Any:
        """A new session, set up as this store's sessions are."""
        try:
            raw = psycopg.connect(self._dsn, autocommit=True, connect_timeout=max(1, round(self._timeout)))
            for setting in self._settings:
                raw.execute(setting)
        except psycopg.Error as e:
            self.raise_error(e, f"cannot connect to {self.where}")
        return raw

    def _prepare(self, schema: str | None) -> None:
        raw = self.conn.raw
        try:
            if raw.info.encoding.lower() not in ("utf8", "utf-8"):
                raise SchemaError(f"{self.where} does not use UTF-8; minies needs a UTF-8 database")
            exists, known, current = raw.execute(postgres_sql.IDENTIFY).fetchone()
            if schema is not None and current != schema:  # not created yet (pg_temp is on the path too)
                current = None
            if self.readonly and not (exists and known):
                raise SchemaError(f"{self.where} holds no minies log")
            if current is None and schema is None:
                raise SchemaError(f"{self.where} has no schema to create the log in (search_path is empty)")
            self._schema = f'"{current or schema}"'
            if schema is None and current is not None:  # the server's default search path named it
                self._settings.append(f"SET search_path TO {self._schema}, pg_temp")
                raw.execute(self._settings[-1])
            if not (exists and known):
                # Several processes may open a fresh database at once: one creates, the others
                # wait, then look again in a transaction of their own (which sees the new tables).
                # (CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent one: it is locked too.)
                with self._schema_lock():
                    if current is None:  # (another client may create it meanwhile: then it exists)
                        with contextlib.suppress(pg_errors.UniqueViolation):
                            raw.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    with raw.transaction():
                        exists, known, _ = raw.execute(postgres_sql.IDENTIFY).fetchone()
                        if exists and not known:
                            raise SchemaError(
                                f"{self.where} has an 'events' table that is not a minies log; use another schema "
                                "(?schema=NAME) or database"
                            )
                        if not exists:
                            for statement in postgres_sql.CREATE:
                                raw.execute(statement.format(schema=self._schema))
            version = self.schema_version()
            if version < postgres_sql.SCHEMA_VERSION and not self.readonly:
                self._migrate()
                version = self.schema_version()
            self._version = version
            if not self.readonly:  # a writable store writes nothing to a log whose guards are off
                self.unguarded = self._perimeter_problem()
            if version > postgres_sql.SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.where} was written by a newer minies (schema version {version}, this one knows "
                    f"up to {postgres_sql.SCHEMA_VERSION}); upgrade minies to open it"
                )
        except psycopg.Error as e:
            self.raise_error(e, f"cannot open {self.where}")

    def _migrate(self) -> None:
        """Bring an older log's schema up to date, once, whoever opens it first."""
        raw = self.conn.raw
        with self._schema_lock(), raw.transaction():
            version = raw.execute(postgres_sql.SCHEMA_VERSION_NOW).fetchone()[0]
            try:
                for target in range(version + 1, postgres_sql.SCHEMA_VERSION + 1):
                    for statement in postgres_sql.MIGRATIONS[target]:
                        raw.execute(statement.format(schema=self._schema))
                    raw.execute("INSERT INTO minies_schema VALUES (%s)", (target,))
            except pg_errors.InsufficientPrivilege:
                raise SchemaError(
                    f"{self.where} is at schema version {version} and this role may not bring it to "
                    f"{postgres_sql.SCHEMA_VERSION}: open it once as the log's owner (readonly=True reads it as it is)"
                ) from None

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Held while one process creates or migrates a schema's tables (the others wait, then
        look again). Keyed by the schema's name, which exists before the schema does."""
        raw, key = self.conn.raw, f"minies schema {self._schema}"
        raw.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            raw.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    # ------------------------------------------------------------------ errors
    def raise_error(self, error: BaseException, doing: str) -> NoReturn:
        e = error
        if isinstance(e, postgres_connection.LostCommit):  # (defined only where psycopg is)
            raise StorageError(
                f"{doing}: the connection to the server was lost during the commit ({e}), so whether this write "
                "was stored is unknown; retrying an append with the same event_ids is safe (if it was stored, the "
                "retry returns its version and stores nothing)"
            ) from None
        if isinstance(e, pg_errors.IdleInTransactionSessionTimeout):
            raise StorageError(
                f"{doing}: the transaction stood idle longer than {max(self._timeout, 1):g}s (timeout=) while it held "
                "the log, and the server ended it; nothing from it was written"
            ) from None
        if isinstance(e, pg_errors.QueryCanceled) and "statement timeout" in str(e):
            raise StorageError(
                f"{doing}: a statement of this write ran longer than {max(self._timeout, 1):g}s (timeout=), "
                "while others waited for the log; nothing from it was written"
            ) from None
        if isinstance(e, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
            raise StorageError(
                f"{doing}: the log is locked by another connection and stayed locked for "
                f"{self._timeout:g}s; retry later or raise timeout="
            ) from None
        if isinstance(e, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)):
            raise StorageError(
                f"{doing}: it collided with a concurrent transaction; nothing was written, retry"
            ) from None
        if isinstance(e, pg_errors.DiskFull):
            raise StorageError(f"{doing}: the server's disk is full; nothing from this call was written") from None
        if isinstance(e, pg_errors.ReadOnlySqlTransaction):
            if self.readonly:
                raise StorageError(f"{doing}: {READ_ONLY_STORE}") from None
            raise StorageError(
                f"{doing}: the server takes no writes in this session (a standby, or default_transaction_read_only)"
            ) from None
        if isinstance(e, pg_errors.InvalidTextRepresentation) and postgres_sql.SWALLOWED in str(e):
            raise StorageError(swallowed(0, 1)) from None
        if isinstance(e, pg_errors.InsufficientPrivilege):
            raise StorageError(f"{doing}: permission denied ({first_line(e)})") from None
        if isinstance(e, pg_errors.RaiseException):
            raise StorageError(f"{doing}: {first_line(e)}") from None
        if isinstance(e, psycopg.OperationalError):
            raise StorageError(
                f"{doing}: the server cannot be reached or dropped the connection ({first_line(e)})"
            ) from None
        raise StorageError(f"{doing}: {type(e).__name__}: {first_line(e)}") from e

    def damage(self, error: BaseException) -> str | None:
        return first_line(error) if isinstance(error, pg_errors.DataCorrupted) else None

    def conflict(self, error: BaseException, table: str = "events") -> str | None:
        if not isinstance(error, pg_errors.UniqueViolation) or error.diag.table_name != table:
            return None
        return "event_id" if "event_id" in (error.diag.constraint_name or "") else "version"

    # ------------------------------------------------------------------ what the engine asks
    def projection_db(self) -> Database:
        db = Database(self.conn, Refused)

        def screen(statement: str) -> bool:
            why = why_refused(statement)
            if why is not None:
                db.why = why
            return why is not None

        db._screen = screen
        return db

    def query(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        text, several = translate(statement)
        if several:
            raise QueryError(f"store.query runs one statement, got several: {statement!r:.200}")
        # Outside a transaction: a read-only one. Inside one (store.transaction()), so the
        # block's own writes are seen: a savepoint, read-only until it is rolled back (which
        # undoes the setting too), so nothing it runs writes, nextval() included.
        try:
            inside = self.conn.start()
            raw = self.conn.raw
            raw.execute("SAVEPOINT minies_query; SET LOCAL transaction_read_only = on" if inside else "BEGIN READ ONLY")
        except psycopg.Error as e:  # (inside a transaction whose session was dropped, say)
            self.raise_error(e, "cannot query")
        try:
            cursor = raw.execute(text, params if params else None)
            if (cursor.statusmessage or "").split(" ")[0] not in _READS:
                raise pg_errors.ReadOnlySqlTransaction()
            return cursor.fetchall() if cursor.description is not None else []
        except pg_errors.ReadOnlySqlTransaction:
            raise QueryError(f"store.query is read-only; this SQL tries to write: {statement!r:.200}") from None
        except (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError) as e:
            if (isinstance(e, psycopg.ProgrammingError) and "placeholder" in str(e)) or "parameter" in str(e):
                raise QueryError(f"wrong parameters for {statement!r:.200}: {first_line(e)}") from None
            raise QueryError(f"invalid SQL {statement!r:.200}: {first_line(e)}") from None
        except (TypeError, KeyError) as e:
            raise QueryError(f"wrong parameters for {statement!r:.200}: {e}") from None
        except psycopg.Error as e:
            self.raise_error(e, "cannot query")
        finally:
            with contextlib.suppress(psycopg.Error):
                raw.execute(
                    "ROLLBACK TO SAVEPOINT minies_query; RELEASE SAVEPOINT minies_query" if inside else "ROLLBACK"
                )

    def schema_version(self) -> int:
        return int(self.conn.execute(postgres_sql.SCHEMA_VERSION_NOW).get or 0)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """One snapshot of the whole log (REPEATABLE READ), read-only."""
        if self.conn.start():  # inside store.transaction(): its own view
            yield
            return
        raw = self.conn.raw
        raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.conn._in_transaction = True  # a dropped session fails the read: no silent second snapshot
        try:
            yield
        finally:
            self.conn._in_transaction = False
            with contextlib.suppress(psycopg.Error):
                raw.execute("ROLLBACK")

    def check_structure(self) -> Callable[[], tuple[int | None, str | None]]:
        """The whole perimeter the log's guarantees rest on: minies' triggers on the events table
        and the keys table, present, as created, enabled for ordinary sessions and alone there;
        minies' functions as created, owned by the log's owner; no rule, no row-level security on
        minies' tables; no default that turns triggers off. (Columns cannot be retyped: PostgreSQL's
        are typed.)"""
        problem = self._perimeter_problem()
        return lambda: (None, problem)

    def _perimeter_problem(self) -> str | None:
        sql, execute = postgres_sql, self.conn.execute
        version = min(max(self._version, 4), postgres_sql.SCHEMA_VERSION)
        tables = {name: (kind, owner, secured) for name, kind, owner, secured in execute(sql.TABLE_STATE)}
        if tables.get("events", ("r",))[0] != "r":
            return "the events table was replaced by another kind of relation"
        expected = {name: _trigger_text(text) for name, text in sql.TRIGGERS[version].items()}
        found: dict[str, str] = {}
        disabled: list[str] = []
        off: list[str] = []
        for table, name, enabled, definition in execute(sql.TRIGGER_STATE):
            name = name if name in expected else f"{name} (on {table})" if table != "events" else name
            found[name] = _normalized(definition)
            if name in expected and enabled == "D":
                disabled.append(name)
            elif name in expected and enabled != "O":
                off.append(f"{name} ({_TRIGGER_STATES.get(enabled, enabled)})")
        problem = triggers_problem(found, expected, disabled)
        if problem is not None:
            return problem
        if off:
            return f"immutability triggers do not fire in ordinary sessions: {', '.join(sorted(off))}"
        owner = tables.get("events", ("r", "", False))[1]
        functions: dict[str, list[tuple[Any, ...]]] = {}
        for name, *rest in execute(sql.FUNCTION_STATE):
            functions.setdefault(name, []).append(tuple(rest))
        for name, text in sorted(sql.FUNCTIONS[version].items()):
            rows = functions.get(name, [])
            if not rows:
                return f"the function {name} behind the immutability triggers is missing"
            if len(rows) > 1:
                return f"the function {name} has overloads minies did not create: {', '.join(r[-1] for r in rows)}"
            function_owner = rows[0][4]
            if _function_state(rows[0]) != _function_state_of(text, self._schema):
                return f"the function {name} behind the immutability triggers was altered"
            if function_owner != owner:
                return (
                    f"the function {name} is owned by {function_owner}, the events table by {owner}: "
                    "one owner runs both"
                )
        for name, (_, table_owner, secured) in tables.items():
            if secured:
                return f"row-level security is on for {name}: some roles would read or write only part of it"
            if name in ("minies_head", "minies_keys") and table_owner != owner:
                return f"{name} is owned by {table_owner}, the events table by {owner}: one owner holds both"
        rules = [rule for (rule,) in execute(sql.RULE_STATE)]
        if rules:
            return f"rules are on minies' tables: {', '.join(rules)} (one can turn an append into nothing)"
        replicas = [who for (who,) in execute(sql.REPLICA_DEFAULTS)]
        if replicas:
            return (
                f"session_replication_role is set for {', '.join(replicas)}: minies' triggers do not fire in "
                "such sessions"
            )
        return None

    def grant(self, role: str, access: str) -> None:
        """Give ``role`` exactly what ``access`` (app, reader, auditor) needs on this log."""
        raw, names = self.conn.raw, {"schema": self._schema, "role": psycopg.sql.Identifier(role).as_string(None)}
        try:
            with raw.transaction():
                raw.execute(postgres_sql.REVOKE.format(**names))
                for statement in postgres_sql.GRANTS[access]:
                    raw.execute(statement.format(**names))
                # a hub's tables (``minies grant`` creates them first): an app settles syncs and
                # registers devices; the others read them
                rights = "SELECT, INSERT, UPDATE" if access == "app" else "SELECT"
                for (table,) in raw.execute(_HUB_TABLES).fetchall():
                    raw.execute(f"GRANT {rights} ON {self._schema}.{table} TO {names['role']}")
                if access == "app":
                    for (table,) in raw.execute(postgres_sql.OTHER_TABLES).fetchall():
                        raw.execute(
                            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {self._schema}.{table} TO {names['role']}"
                        )
        except psycopg.Error as e:
            self.raise_error(e, f"cannot grant {access} to {role!r} on {self.where}")

    def repair(self, verify: Callable[[Any, Any], str | None]) -> list[str]:
        """Re-create minies' own functions and triggers (those missing, altered, or not enabled for
        ordinary sessions), in one transaction, if the log verifies without them: ``verify(conn,
        check)`` says what is wrong with the chain and the versions, or None.

        Raises:
            SchemaError: the log does not verify, or something minies did not create stands in the
                way (a trigger, rule, policy or row-level security on its tables, an overload of
                its functions, another owner, a replica default): minies drops nothing it did not
                create; nothing was changed.
        """
        sql, raw = postgres_sql, self.conn.raw
        version = min(max(self._version, 4), sql.SCHEMA_VERSION)
        redone: list[str] = []
        try:
            with raw.transaction():
                raw.execute(f"LOCK TABLE {self._schema}.events IN EXCLUSIVE MODE")  # no insert meanwhile
                expected = {name: _trigger_text(text) for name, text in sql.TRIGGERS[version].items()}
                triggers = {
                    name: (enabled, _normalized(d)) for _, name, enabled, d in self.conn.execute(sql.TRIGGER_STATE)
                }
                foreign = [f"the trigger {name}" for name in sorted(triggers.keys() - expected.keys())]
                foreign += [f"the rule {rule}" for (rule,) in self.conn.execute(sql.RULE_STATE)]
                tables = {name: (owner, secured) for name, _, owner, secured in self.conn.execute(sql.TABLE_STATE)}
                owner = tables.get("events", ("", False))[0]
                foreign += [f"row-level security on {name}" for name, (_, secured) in tables.items() if secured]
                foreign += [
                    f"{name}'s owner {table_owner}"
                    for name, (table_owner, _) in tables.items()
                    if name in ("minies_head", "minies_keys") and table_owner != owner
                ]
                functions: dict[str, list[str]] = {}
                for name, _, _, _, _, function_owner, _ in self.conn.execute(sql.FUNCTION_STATE):
                    functions.setdefault(name, []).append(function_owner)
                for name in sql.FUNCTIONS[version]:
                    if len(functions.get(name, [])) > 1:
                        foreign.append(f"overloads of {name}")
                    elif functions.get(name, [owner]) != [owner]:
                        foreign.append(f"{name}'s owner {functions[name][0]}")
                foreign += [f"session_replication_role for {who}" for (who,) in self.conn.execute(sql.REPLICA_DEFAULTS)]
                if foreign:
                    raise SchemaError(
                        f"cannot repair {self.where}: what minies did not create stands in the way: "
                        f"{', '.join(foreign)}; minies drops nothing it did not create: if it is not needed, "
                        "remove it and repair again"
                    )
                problem = verify(self.conn, lambda: (None, None))
                if problem is not None:
                    raise SchemaError(
                        f"cannot repair {self.where}: the log does not verify ({problem}); guarding it again would "
                        "vouch for it: restore it from a backup"
                    )
                stored = {name: tuple(rest) for name, *rest in self.conn.execute(sql.FUNCTION_STATE)}
                for name, text in sql.FUNCTIONS[version].items():
                    if name not in stored or _function_state(stored[name]) != _function_state_of(text, self._schema):
                        raw.execute(
                            text.format(schema=self._schema).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
                        )
                        redone.append(f"{name}()")
                for name, text in sql.TRIGGERS[version].items():
                    if triggers.get(name) != ("O", expected[name]):
                        table = "minies_keys" if " ON {schema}.minies_keys " in text else "events"
                        raw.execute(f"DROP TRIGGER IF EXISTS {name} ON {self._schema}.{table}")
                        raw.execute(text.format(schema=self._schema))
                        redone.append(name)
                left = self._perimeter_problem()
                if left is not None:  # (what this cannot mend: say so, change nothing)
                    raise SchemaError(f"cannot repair {self.where}: {left}")
        except psycopg.Error as e:
            self.raise_error(e, f"cannot repair {self.where}")
        self.unguarded = None
        return redone

    def backup(self, target: str) -> None:
        raise StorageError(
            f"cannot back up {self.where} with backup(): use pg_dump, or minies.copy(url, {target!r}) for a minies file"
        )

    def purge(self, snapshots: bool = False) -> bool:
        """Rewrite the keys table (and the snapshots table, if ``snapshots`` were dropped) so a
        destroyed key's and a dropped snapshot's old row versions leave their pages (PostgreSQL
        keeps dead rows until a vacuum, and a plain one leaves their bytes in the page's free
        space; its WAL and backups are the operator's)."""
        raw = self.conn.raw
        # A role that does not own a table is told so by a warning, not an error (an app role: see
        # minies grant), and the table is left as it was. (A notice is readable in its handler only.)
        warned: list[bool] = []

        def handler(notice: Any) -> None:
            warned.append(notice.severity_nonlocalized == "WARNING")

        raw.add_notice_handler(handler)
        try:
            raw.execute(postgres_sql.PURGE_KEYS)
            if snapshots:
                raw.execute(postgres_sql.PURGE_SNAPSHOTS)
        except psycopg.Error:
            return False
        finally:
            raw.remove_notice_handler(handler)
        return not any(warned)

    def close(self) -> None:
        self.conn.raw.close()


# What a statement's status says when it only read.
_QUERY_END = "ROLLBACK TO SAVEPOINT minies_query; RELEASE SAVEPOINT minies_query"
_READS = frozenset({"SELECT", "SHOW", "EXPLAIN", "VALUES", "TABLE", "FETCH"})


_TRIGGER_STATES = {"R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _function_state(row: Sequence[Any]) -> tuple[Any, ...]:
    """A function as FUNCTION_STATE shows it (after its name): language, SECURITY DEFINER or
    not, settings, and body (whitespace aside)."""
    return (row[0], row[1], row[2], _normalized(row[3]))


def _function_state_of(create: str, schema: str) -> tuple[Any, ...]:
    """The same, of the function ``create`` makes."""
    definer = postgres_sql.DEFINER in create
    body = create.format(schema=schema).split("$minies$")[1]
    return ("plpgsql", definer, "search_path=pg_catalog, pg_temp" if definer else "", _normalized(body))


def _trigger_text(create: str) -> str:
    """A trigger's CREATE statement as the catalog shows it, the schema's name taken out."""
    return _normalized(create.format(schema="").replace(" .", " "))


def split_schema(url: str) -> tuple[str, str | None]:
    """The URL psycopg connects with, and the ``schema`` query parameter taken out of it."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema must be a lowercase SQL name (letters, digits, _), got {schema!r}")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest))), schema
