"""The PostgreSQL backend: the same log on a server, through psycopg 3.

Opened by URL: ``postgresql://user:password@host:port/dbname`` (or ``postgres://``), with an
optional ``?schema=NAME`` so several apps share a database. This is the only module that
turns psycopg's exceptions into minies' errors.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

from minies._backends import postgres_sql
from minies._backends.base import READ_ONLY_STORE, shown, swallowed, triggers_problem
from minies._database import Database
from minies._errors import MiniesError, QueryError, SchemaError, StorageError

try:
    import psycopg
    import psycopg.sql
    from psycopg import errors as pg_errors
    from psycopg.pq import PipelineStatus, TransactionStatus
except ImportError:  # pragma: no cover - exercised by the test that hides psycopg
    psycopg = None  # type: ignore[assignment]

if psycopg is not None:

    class LostCommit(psycopg.OperationalError):
        """A COMMIT whose session was lost on the way: it may or may not have committed."""


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# A token the placeholder translation must step over whole: quoted text, identifiers,
# dollar-quoted bodies, comments, `::` casts; or a `?`, `:name` or `%` to rewrite.
_TOKENS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/|::|(\?)|:([A-Za-z_]\w*)|(%)|(;)""",
    re.DOTALL,
)


def translate(statement: str, bound: bool = False) -> tuple[str, bool]:
    """``?`` and ``:name`` placeholders (SQLite's) as psycopg's ``%s`` and ``%(name)s``; and
    whether the text holds more than one statement. ``bound``: the text goes with parameters,
    and psycopg reads every ``%`` of it, quoted ones too (``LIKE 'a%'``), as its own."""
    several = False

    def rewrite(found: re.Match[str]) -> str:
        nonlocal several
        if found.group(2):
            return "%s"
        if found.group(3):
            return f"%({found.group(3)})s"
        if found.group(4):
            return "%%"
        if found.group(5):
            several = several or bool(statement[found.end() :].strip())
        return found.group(0).replace("%", "%%") if bound else found.group(0)

    return _TOKENS.sub(rewrite, statement), several


class _Rows:
    """A finished statement's rows, as apsw's cursor hands them out."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    @property
    def get(self) -> Any:
        if not self._rows:
            return None
        row = self._rows[0]
        return row[0] if len(row) == 1 else row

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


class Connection:
    """A psycopg connection with apsw's interface (see ``minies._backends.Connection``)."""

    sql = postgres_sql

    def __init__(self, raw: Any, reconnect: Callable[[], Any], begin: str) -> None:
        self.raw = raw
        self._reconnect = reconnect
        self._begin = begin  # what follows each BEGIN of the engine's, in the same pipeline
        self.Error: type[Exception] = psycopg.Error
        self._texts: dict[str, str] = {}
        self._changes = 0
        self._versions = itertools.count()
        # Round trips are what a write costs here, so two things wait for the next statement
        # and travel with it in one pipeline: a BEGIN, and a one-event insert (which then
        # reaches the server with the COMMIT). An append is two round trips: [BEGIN, lock
        # and read the head] and [INSERT, COMMIT]. (Under the head lock, no insert of minies'
        # can break a constraint, so nothing is lost by learning of a failure at the COMMIT.)
        self._begun = False
        self._held: tuple[str, Sequence[Any]] | None = None
        self._in_transaction = False  # from the engine's BEGIN to its COMMIT or ROLLBACK

    def _text(self, statement: str) -> str:
        text = self._texts.get(statement)
        if text is None:
            text = self._texts[statement] = translate(statement, bound=True)[0]
        return text

    def execute(self, statement: str, params: Any = ()) -> _Rows:
        if statement is postgres_sql.BEGIN:
            self._begun = self._in_transaction = True
            return _Rows([])
        if statement is postgres_sql.ROLLBACK:
            self._in_transaction = False
        if statement is postgres_sql.ROLLBACK or statement is postgres_sql.ROLLBACK_TO:
            self._held = None
            if self._begun or self._lost():  # nothing reached the server, or it is gone
                self._begun = False
                return _Rows([])
        elif statement is postgres_sql.COMMIT and self._begun and self._held is None:
            self._begun = self._in_transaction = False
            return _Rows([])
        try:
            text = self._text(statement) if params else statement  # (no parameters: a % is itself)
            cursor = self._round_trip(
                lambda: self.raw.execute(text, params if params else None),
                None if statement is postgres_sql.COMMIT else lambda: self._together(text, params),
            )
        except psycopg.OperationalError as e:
            if statement is postgres_sql.COMMIT and self._lost():  # sent, maybe committed: no one can tell now
                raise LostCommit(_first_line(e)) from e
            raise
        finally:
            # The transaction is open until the server has committed it: a COMMIT that finds
            # the session gone fails (the writes went with it), and is never redone on a new one.
            if statement is postgres_sql.COMMIT:
                self._in_transaction = False
        self._changes = max(cursor.rowcount, 0)
        return _Rows(cursor.fetchall() if cursor.description is not None else [])

    def _round_trip(self, send: Callable[[], Any], together: Callable[[], Any] | None = None) -> Any:
        """``send`` after what waits (in one pipeline; or ``together``, when the transaction
        stays open after it); once more on a new session if the server dropped this one and
        nothing of a transaction can have been lost (this is its first round trip, or there is
        none)."""
        begun, held = self._begun, self._held
        redo = begun or not self._in_transaction
        if redo and self._lost():
            self.raw = self._reconnect()
        for attempt in (1, 2):
            try:
                if not (self._begun or self._held):
                    return send()
                if together is not None:
                    return together()
                return self._pipelined(send)
            except psycopg.OperationalError:
                if attempt == 2 or not redo or not self._lost():
                    raise
                self.raw = self._reconnect()
                self._begun, self._held = begun, held
        raise AssertionError("unreachable")

    def _pipelined(self, send: Callable[[], Any]) -> Any:
        """What waits, then ``send``, in one pipeline. A failure that the server reports while
        the pipeline is still open is raised once the pipeline is closed (closing an aborted
        pipeline fails too, and psycopg would log that on stderr)."""
        failure: psycopg.Error | None = None
        try:
            with self.raw.pipeline():
                try:
                    self._send_waiting()
                    result = send()
                except psycopg.Error as error:
                    failure = error
        except psycopg.Error:
            if self.raw.pgconn.pipeline_status != PipelineStatus.OFF:
                # The session died with the pipeline busy: the connection is stuck in pipeline
                # mode and refuses every later statement; it counts as lost.
                self.raw.close()
            if failure is None:
                raise
        if failure is not None:
            raise failure
        return result

    def _lost(self) -> bool:
        return bool(self.raw.broken or self.raw.closed)

    def _send_waiting(self) -> None:
        for text, params in self._waiting():
            self.raw.execute(text, params)

    def _waiting(self) -> list[tuple[str, Any]]:
        """What waits for the next statement (taken: the caller sends it)."""
        waiting: list[tuple[str, Any]] = []
        if self._begun:
            self._begun = False
            waiting += [(postgres_sql.BEGIN, None), (self._begin, None)]
        if self._held is not None:
            statement, row = self._held
            self._held = None
            waiting.append((self._text(statement), row))
            if statement in postgres_sql.BULK:  # an event's insert: no acknowledgement without the row
                waiting.append((postgres_sql.STORED_AT, (row[0],)))
        return waiting

    def _together(self, text: str | None, params: Any) -> Any:
        """What waits, then ``text``, as one query of the simple protocol: one round trip, like a
        pipeline, after which the transaction stays open. (The flush request that ends a psycopg
        pipeline reaches the server after its Sync, and disarms the server's idle-in-transaction
        timeout until the next statement: a writer that froze right after would hold the log.)"""
        cursor = psycopg.ClientCursor(self.raw)
        statements = self._waiting() + ([] if text is None else [(text, params if params else None)])
        cursor.execute("; ".join(t if p is None else cursor.mogrify(t, p) for t, p in statements))
        while cursor.nextset():  # to the last statement's result
            pass
        return cursor

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        bulk = postgres_sql.BULK.get(statement)
        if bulk is not None and len(rows) == 1 and self._held is None:
            self._held = (statement, rows[0])
            self._changes = 1
            return
        self.start()
        if bulk is not None:
            with self.raw.cursor() as cursor, cursor.copy(bulk) as copy:
                for row in rows:
                    copy.write_row(row)
            self._changes = len(rows)
            return
        with self.raw.cursor() as cursor:  # in a pipeline of ours: psycopg's own would log a failure
            self._pipelined(lambda: cursor.executemany(self._text(statement), rows))
            self._changes = max(cursor.rowcount, 0)

    def start(self) -> bool:
        """Send what waits (a BEGIN, an insert), on a live session; True if a transaction is open."""
        self._round_trip(lambda: None, lambda: self._together(None, None))
        return not self.get_autocommit()

    def changes(self) -> int:
        return self._changes

    def data_version(self) -> int:
        return next(self._versions)  # never vouches: every append locks and reads the head

    def commit_counter(self) -> int:
        return int(self.execute(postgres_sql.COMMIT_COUNTER).get)

    def get_autocommit(self) -> bool:
        if self._begun:
            return False
        if self._lost():  # a lost session: the engine's ROLLBACK ends its transaction here
            return not self._in_transaction
        return bool(self.raw.info.transaction_status == TransactionStatus.IDLE)


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
        if isinstance(e, LostCommit):
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
            raise StorageError(f"{doing}: permission denied ({_first_line(e)})") from None
        if isinstance(e, pg_errors.RaiseException):
            raise StorageError(f"{doing}: {_first_line(e)}") from None
        if isinstance(e, psycopg.OperationalError):
            raise StorageError(
                f"{doing}: the server cannot be reached or dropped the connection ({_first_line(e)})"
            ) from None
        raise StorageError(f"{doing}: {type(e).__name__}: {_first_line(e)}") from e

    def damage(self, error: BaseException) -> str | None:
        return _first_line(error) if isinstance(error, pg_errors.DataCorrupted) else None

    def conflict(self, error: BaseException, table: str = "events") -> str | None:
        if not isinstance(error, pg_errors.UniqueViolation) or error.diag.table_name != table:
            return None
        return "event_id" if "event_id" in (error.diag.constraint_name or "") else "version"

    # ------------------------------------------------------------------ what the engine asks
    def projection_db(self) -> Database:
        db = Database(self.conn, _Refused)

        def screen(statement: str) -> bool:
            why = _screen(statement)
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
                raise QueryError(f"wrong parameters for {statement!r:.200}: {_first_line(e)}") from None
            raise QueryError(f"invalid SQL {statement!r:.200}: {_first_line(e)}") from None
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


class _Refused(Exception):
    """Never raised by psycopg: projections' statements are screened before they run."""


# A projection's statements are screened before they run. This is a guard against mistakes, not
# against hostile code: the handle is the store's own session, so whatever that session's role
# may do, code holding it can do (through a function it creates, say). What keeps the log safe
# from such code is the role the store runs as (``minies grant --role app``: it cannot change or
# empty the log) and ``verify`` (which reports what an owner's credentials did to the guards).
_WORDS = re.compile(
    r"""'(?:[^']|'')*'|[eE]'(?:[^'\\]|\\.|'')*'|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/"""
    r"""|"((?:[^"]|"")*)"|([A-Za-z_][\w$]*)|(;)|(,)|(\.)|(\()""",
    re.DOTALL,
)
# Statements that end or change the append's transaction or the session, or act outside it.
_CONTROL = frozenset(
    {
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare",
        "set",
        "reset",
        "discard",
        "listen",
        "unlisten",
        "notify",
        "vacuum",
        "analyze",
        "cluster",
        "checkpoint",
        "copy",
        "do",
        "call",
        "lock",
        "load",
        "grant",
        "revoke",
        "security",
        "reassign",
        "import",
    }
)
_WRITES = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "truncate",
        "drop",
        "alter",
        "create",
        "comment",
        "refresh",
        "reindex",
    }
)
# The words after which a table's name comes (a list of them, after TRUNCATE or DROP ... ).
_TABLE_BEFORE = frozenset(
    {
        "from",
        "into",
        "update",
        "join",
        "table",
        "only",
        "exists",
        "on",
        "truncate",
        "using",
        "view",
        "index",
        "to",
    }
)
_FORBIDDEN_CALLS = frozenset({"set_config", "pg_terminate_backend", "pg_cancel_backend", "dblink", "dblink_exec"})


def _screen(statement: str) -> str | None:
    """Why a projection may not run ``statement``; None if it may."""
    words: list[str] = []
    several = False
    for found in _WORDS.finditer(statement):
        quoted, word, semicolon = found.group(2), found.group(3), found.group(4)
        if semicolon:
            several = several or bool(statement[found.end() :].strip())
        elif quoted is not None:
            words.append(quoted.replace('""', '"'))
        elif word is not None:
            words.append(word.lower())
        elif found.group(5) or found.group(6) or found.group(7):
            words.append(found.group(0))
    if several:
        return "it holds several statements (a projection runs one at a time)"
    if not words:
        return None
    if words[0] in _CONTROL or words[:2] == ["alter", "system"]:
        return "it would end or change the append's transaction or the session"
    called = [w for i, w in enumerate(words[:-1]) if words[i + 1] == "(" and w in _FORBIDDEN_CALLS]
    if called:
        return f"it calls {called[0]}() (a session setting, or another session)"
    if _WRITES.isdisjoint(words):
        return None
    for i, word in enumerate(words):
        if word in _TABLE_BEFORE or (word == "," and i and _listing(words, i)):
            name = _name_at(words, i + 1)
            if name == "events" or name.startswith("minies_"):
                return f"it writes or changes the log or minies' own tables ({name})"
    return None


def _listing(words: list[str], comma: int) -> bool:
    """Whether the comma at ``comma`` continues a list of tables (TRUNCATE a, b / DROP TABLE a, b)."""
    for word in reversed(words[:comma]):
        if word in ("(", "set", "select", "values", "returning", "where"):
            return False
        if word in ("truncate", "table", "view", "index", "exists", "only", "sequence"):
            return True
    return False


def _name_at(words: list[str], i: int) -> str:
    """The relation named from ``words[i]`` (its last part, after a schema and a dot)."""
    while i < len(words) and words[i] in ("only", "table", "if", "exists", "not", "lateral"):
        i += 1
    if i >= len(words):
        return ""
    while i + 2 < len(words) and words[i + 1] == ".":
        i += 2
    return words[i]


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


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


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
