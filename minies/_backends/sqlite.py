"""The SQLite backend: one file in WAL mode (or ``:memory:``), through apsw.

This is the only module that turns apsw's exceptions into minies' errors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final, NoReturn

import apsw

from minies._backends import device_sql, sqlite_sql
from minies._backends.base import READ_ONLY_STORE, Check, triggers_problem
from minies._database import Database
from minies._errors import QueryError, SchemaError, StorageError

_SYNCHRONOUS: Final = {"full": "FULL", "normal": "NORMAL"}
# An event that clashes with a recorded one, as the append-only trigger (in front of the
# UNIQUE constraints) says it.
_CLASHED: Final = "minies: events are append-only; this "


class Connection(apsw.Connection):
    """An apsw connection that carries its SQL dialect (see ``minies._backends.Connection``)."""

    sql = sqlite_sql
    Error = apsw.Error

    def commit_counter(self) -> int:
        # Changes when another connection commits (https://sqlite.org/pragma.html#pragma_data_version).
        # (apsw's data_version() costs nothing, but is brought up to date only when this
        # connection next starts to read: inside a write it is exact, between reads it is not.)
        return int(self.execute("PRAGMA data_version").get)  # (a little faster than self.pragma)


class SqliteBackend:
    """A minies file: created with the schema if missing, migrated if older."""

    def __init__(
        self, path: str, *, durability: str, timeout: float, readonly: bool, device: str | None = None
    ) -> None:
        self.path = self.where = path
        self.readonly = readonly
        self._durability = durability
        self._timeout = timeout
        self._memory = path == ":memory:"
        self._reader_args = (path, apsw.SQLITE_OPEN_READONLY)  # how a second, reading connection opens
        self.unguarded: str | None = None  # what is wrong with the guards, found on a writable open
        self.querying = False  # store.query's statement is being prepared and run: reads only
        self.why = ""  # why the authorizer refused the query's statement
        self.file_version = sqlite_sql.SCHEMA_VERSION
        self.conn = self._connect()
        try:
            self._prepare()
            self._become(device)
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------------ opening
    def _connect(self) -> Connection:
        where = self.path
        if not self._memory and not self.readonly:
            parent = os.path.dirname(os.path.abspath(where))
            if not os.path.isdir(parent):
                raise StorageError(f"cannot create {where!r}: the directory {parent!r} does not exist")
        if self.readonly and not self._memory and not os.path.exists(where):
            raise StorageError(f"cannot open {where!r}: no such file")
        if os.path.isdir(where):
            raise StorageError(f"cannot open {where!r}: it is a directory, not a file")
        wal = where + "-wal"
        if self.readonly and not self._memory and not os.path.exists(wal):
            self._read_as_it_is()
        try:
            if not self.readonly:
                conn = Connection(where, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
            else:
                try:
                    conn = Connection(*self._reader_args)
                    conn.pragma("schema_version")  # with a -wal: can its -shm be opened?
                except apsw.CantOpenError:
                    if os.path.exists(wal) and os.path.getsize(wal) > 0:
                        raise StorageError(
                            f"cannot open {where!r}: its -wal holds commits not yet in the file, which SQLite "
                            "reads only with a -shm beside them, and none can be made here (read-only media?); "
                            "copy the file and its -wal to a writable folder"
                        ) from None
                    self._read_as_it_is()  # an empty -wal on read-only media
                    conn = Connection(*self._reader_args)
            conn.set_busy_timeout(int(self._timeout * 1000))
        except apsw.Error as e:
            self.raise_error(e, f"cannot open {where!r}")
        return conn

    def _read_as_it_is(self) -> None:
        """Read-only connections will open the file ``immutable``.

        With no -wal, no connection has the file open and the last one checkpointed everything
        into it. Read as it is, nothing is created beside it: a read-only folder or medium
        works, and the folder is left exactly as it was found
        (https://sqlite.org/uri.html#uriimmutable, https://sqlite.org/wal.html#readonly).
        """
        self._reader_args = (
            "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?immutable=1",
            apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
        )

    def _prepare(self) -> None:
        conn = self.conn
        try:
            version = sqlite_sql.identify(conn, repr(self.path))
            if self.readonly:
                if version == 0:
                    raise SchemaError(f"{self.path!r} is empty, not a minies database")
                if version < 2:
                    raise SchemaError(f"{self.path!r} has schema version {version}; open it writable once to migrate")
                self.file_version = version
                return
            if not self._memory and conn.pragma("journal_mode") != "wal":
                mode = self._switch_to_wal()
                if mode != "wal":
                    raise StorageError(f"cannot switch {self.path!r} to WAL mode (got {mode!r})")
            conn.pragma("synchronous", _SYNCHRONOUS[self._durability])
            # Deleted content is overwritten with zeros, so a forgotten key or a read model's
            # old row leaves no bytes behind (https://sqlite.org/pragma.html#pragma_secure_delete).
            conn.pragma("secure_delete", True)
            conn.pragma("journal_size_limit", 64 * 1024 * 1024)
            if version != sqlite_sql.SCHEMA_VERSION:
                with _writing(conn):  # the write lock: another process may be at it too
                    sqlite_sql.create_or_migrate(conn, sqlite_sql.identify(conn, repr(self.path)))
            self.unguarded = self.guards()
        except apsw.Error as e:
            self.raise_error(e, f"cannot open {self.path!r}")

    def _become(self, device: str | None) -> None:
        """A device's connection reads and appends through its pending tail (``device_sql``)."""
        conn = self.conn
        try:
            if device is not None:
                if self.readonly or self._memory:
                    raise ValueError("a device is a minies file opened for writing")
                with _writing(conn):
                    device_sql.enrol(conn, device)
            if conn.execute(device_sql.IS_DEVICE).get:
                conn.sql = device_sql.SQL
        except apsw.Error as e:
            self.raise_error(e, f"cannot open {self.path!r} as a device")

    def _switch_to_wal(self) -> str:
        """``PRAGMA journal_mode=wal`` on a new file. It needs the file to itself and SQLite
        does not wait for that (no busy handler: processes opening a new file at once got
        "locked" at once), so it is retried here until ``timeout``."""
        deadline, wait = time.monotonic() + self._timeout, 0.001
        while True:
            try:
                return str(self.conn.pragma("journal_mode", "wal"))
            except apsw.BusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(wait)
                wait = min(wait * 2, 0.05)

    # ------------------------------------------------------------------ errors
    def raise_error(self, error: BaseException, doing: str) -> NoReturn:
        e = error
        if isinstance(e, (apsw.BusyError, apsw.LockedError)):
            raise StorageError(
                f"{doing}: the database is locked by another connection and stayed locked for "
                f"{self._timeout:g}s; retry later or raise timeout="
            ) from None
        if isinstance(e, apsw.FullError):
            raise StorageError(
                f"{doing}: the disk is full (or the file reached its size limit); nothing from "
                "this call was written, free some space and retry"
            ) from None
        if self.readonly and isinstance(e, apsw.ReadOnlyError):
            raise StorageError(f"{doing}: {READ_ONLY_STORE}") from None
        if isinstance(e, apsw.ReadOnlyError) or (
            isinstance(e, apsw.CantOpenError) and not self.readonly and _read_only(self.path)
        ):
            raise StorageError(
                f"{doing}: the file or its directory is read-only; open it with readonly=True to read it"
            ) from None
        if isinstance(e, apsw.NotADBError):
            raise SchemaError(f"{doing}: it is not a SQLite database (nor a minies one)") from None
        if isinstance(e, apsw.CorruptError):
            raise StorageError(f"{doing}: the file is damaged ({e}); restore it from a backup") from None
        if isinstance(e, apsw.CantOpenError):
            raise StorageError(f"{doing}: the file cannot be opened (missing, a directory, or no permission)") from None
        if isinstance(e, (apsw.IOError, apsw.PermissionsError, apsw.NoMemError)):
            raise StorageError(f"{doing}: {e}") from None
        raise StorageError(f"{doing}: {type(e).__name__}: {e}") from e

    def damage(self, error: BaseException) -> str | None:
        return str(error) if isinstance(error, apsw.CorruptError) else None

    def conflict(self, error: BaseException, table: str = "events") -> str | None:
        if not isinstance(error, apsw.ConstraintError):
            return None
        message = str(error)
        if f"UNIQUE constraint failed: {table}." not in message and not (table == "events" and _CLASHED in message):
            return None
        return "event_id" if "event_id" in message else "version"

    # ------------------------------------------------------------------ what the engine asks
    def projection_db(self) -> Database:
        db = Database(self.conn, apsw.AuthError, tagged=True)
        self.conn.set_authorizer(_authorizer(db, self))
        return db

    def query(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        """One statement that only reads, by construction: while it is prepared, SQLite's
        authorizer allows nothing but reads (no write, DDL, ATTACH, transaction control or
        PRAGMA that sets), and it is never taken from the statement cache, where a statement
        minies prepared for itself would skip that check. On the store's own connection, so a
        query inside ``store.transaction()`` sees the block's writes."""
        conn = self.conn
        cursor = conn.cursor()
        statements = 0

        def one(_cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            nonlocal statements
            statements += 1
            return statements == 1

        cursor.exec_trace = one
        self.querying, self.why = True, ""
        try:
            return cursor.execute(statement, params, can_cache=False).fetchall()
        except apsw.ExecTraceAbort:
            raise QueryError(f"store.query runs one statement, got several: {statement!r:.200}") from None
        except (apsw.AuthError, apsw.ReadOnlyError):
            why = self.why or "it would write"
            raise QueryError(f"store.query is read-only; {why}: {statement!r:.200}") from None
        except (apsw.SQLError, apsw.ConstraintError, apsw.MismatchError, apsw.ExecutionCompleteError) as e:
            raise QueryError(f"invalid SQL {statement!r:.200}: {e}") from None
        except (apsw.BindingsError, TypeError) as e:
            raise QueryError(f"wrong parameters for {statement!r:.200}: {e}") from None
        except apsw.Error as e:
            self.raise_error(e, "cannot query")
        finally:
            self.querying = False
            cursor.close()

    def schema_version(self) -> int:
        return int(self.conn.pragma("user_version"))

    def reading(self) -> apsw.Connection:
        return self.conn  # `with conn:` is one read transaction

    def guards(self) -> str | None:
        """What is wrong with the triggers minies' guarantees rest on, if anything: its own
        three on the events table, as created; no other there, none on minies' own tables, and
        no temporary one on either on this connection."""
        conn = self.conn
        shadows = [f"temp.{name} ({kind})" for kind, name in conn.execute(sqlite_sql.SHADOWS)]
        if shadows:
            return f"temporary objects on this connection stand in for the log or minies' tables: {', '.join(shadows)}"
        found = {name: " ".join(str(sql).split()) for name, sql in conn.execute(sqlite_sql.TRIGGER_SQL)}
        problem = triggers_problem(found, {name: " ".join(sql.split()) for name, sql in sqlite_sql.TRIGGERS.items()})
        if problem is not None:
            return problem
        others: list[Any] = conn.execute(sqlite_sql.OTHER_TRIGGERS).fetchall()
        if others:
            names = ", ".join(
                f"{'temp.' if schema == 'temp' else ''}{name} (on {table})" for schema, name, table in others
            )
            return f"triggers minies did not create are on the log or minies' own tables: {names}"
        return None

    def repair(self, verify: Callable[[Connection, Check], str | None]) -> list[str]:
        """Re-create minies' own triggers on the events table (those missing or altered), in one
        write transaction, if the log verifies without them: ``verify(conn, check)`` says what
        is wrong with the chain, the columns' types, the versions and the file, or None.

        Raises:
            SchemaError: the log does not verify, or triggers minies did not create are on the log
                or its tables (minies drops nothing it did not create); nothing was changed.
        """
        conn = self.conn
        where = repr(self.path)
        try:
            with _writing(conn):  # the write lock: no append between the check and the guards
                found = {name: " ".join(str(sql).split()) for name, sql in conn.execute(sqlite_sql.TRIGGER_SQL)}
                expected = {name: " ".join(sql.split()) for name, sql in sqlite_sql.TRIGGERS.items()}
                others = [f"{name} (on events)" for name in sorted(found.keys() - expected.keys())]
                others += [f"{name} (on {table})" for _, name, table in conn.execute(sqlite_sql.OTHER_TRIGGERS)]
                if others:
                    raise SchemaError(
                        f"cannot repair {where}: triggers minies did not create are on the log or its tables: "
                        f"{', '.join(others)}; minies drops nothing it did not create: if they are not needed, "
                        "drop them (DROP TRIGGER name) and repair again"
                    )
                problem = verify(conn, lambda: _scan(conn))
                if problem is not None:
                    raise SchemaError(
                        f"cannot repair {where}: the log does not verify ({problem}); guarding it again would "
                        "vouch for it: restore it from a backup"
                    )
                redone = [name for name in expected if found.get(name) != expected[name]]
                for name in redone:
                    conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
                    conn.execute(sqlite_sql.TRIGGERS[name])
            self.unguarded = self.guards()
        except apsw.Error as e:
            self.raise_error(e, f"cannot repair {where}")
        return redone

    def check_structure(self) -> Callable[[], tuple[int | None, str | None]]:
        """The immutability triggers; then, on a connection and thread of their own (SQLite
        releases the GIL, so on two cores they cost a verify little wall time), the first
        event with a retyped column and SQLite's integrity check of every page and index.
        """
        guards = self.guards()
        if self._memory:
            retyped, integrity = _scan(self.conn)
            return lambda: (retyped, guards or integrity)
        result: list[tuple[int | None, str | None]] = []

        def run() -> None:
            try:
                conn = apsw.Connection(*self._reader_args)
                try:
                    result.append(_scan(conn))
                finally:
                    conn.close()
            except apsw.Error as e:
                result.append((None, f"cannot run the integrity check: {e}"))

        thread = threading.Thread(target=run, name="minies-integrity-check", daemon=True)
        thread.start()

        def wait() -> tuple[int | None, str | None]:
            thread.join()
            retyped, integrity = result[0]
            return retyped, guards or integrity

        return wait

    def backup(self, target: str) -> None:
        try:
            self.conn.execute("VACUUM INTO ?", (target,))
        except apsw.Error as e:
            self.raise_error(e, f"cannot back up to {target!r}")

    def purge(self, snapshots: bool = False) -> bool:
        """Copy the WAL into the file and truncate it, so no old page (a destroyed key's, a
        dropped snapshot's: ``secure_delete`` zeroed them in the pages) survives in it. False if
        another connection's read kept some frames needed (SQLite then refuses the truncation:
        busy), or if the store lives in memory."""
        if self._memory:
            return False
        try:
            self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.BusyError:
            return False
        except apsw.Error as e:
            self.raise_error(e, f"cannot checkpoint {self.path!r}")
        return True

    def close(self) -> None:
        """Checkpoint the WAL into the main file, then close."""
        conn = self.conn
        if not self.readonly and not self._memory:
            with contextlib.suppress(apsw.Error):
                conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        try:
            conn.close()
        except apsw.Error as e:  # committed events are safe; the connection is gone anyway
            self.raise_error(e, f"closing {self.path!r} failed")


def _scan(conn: apsw.Connection) -> tuple[int | None, str | None]:
    retyped = conn.execute(sqlite_sql.RETYPED).get
    problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    return retyped, None if problems == ["ok"] else "SQLite integrity check failed: " + "; ".join(problems[:3])


# What a projection's code may do, as SQLite's authorizer sees each statement while it is
# prepared (https://sqlite.org/c3ref/set_authorizer.html, https://sqlite.org/c3ref/c_alter_table.html):
# an allow-list, so what it does not name is refused, however the SQL is spelled.
_READS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})
_WRITES = frozenset({apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE})
# The catalog tables that DDL writes itself (each DDL statement is authorized on its own).
# Nothing writes sqlite_master directly without PRAGMA writable_schema, which is refused;
# sqlite_sequence numbers AUTOINCREMENT rows, which none of minies' tables use.
_CATALOG = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema", "sqlite_sequence"})
_CREATES = {  # action: which argument names the object, and which the table it belongs to
    apsw.SQLITE_CREATE_TABLE: None,
    apsw.SQLITE_CREATE_VIEW: None,
    apsw.SQLITE_CREATE_VTABLE: None,
    apsw.SQLITE_CREATE_INDEX: 2,
    apsw.SQLITE_CREATE_TRIGGER: 2,
}
_DROPS = frozenset(
    {
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_DROP_VIEW,
        apsw.SQLITE_DROP_VTABLE,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TRIGGER,
    }
)
_TEMPORARY = frozenset(
    {
        apsw.SQLITE_CREATE_TEMP_TABLE,
        apsw.SQLITE_CREATE_TEMP_VIEW,
        apsw.SQLITE_CREATE_TEMP_INDEX,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_DROP_TEMP_TABLE,
        apsw.SQLITE_DROP_TEMP_VIEW,
        apsw.SQLITE_DROP_TEMP_INDEX,
        apsw.SQLITE_DROP_TEMP_TRIGGER,
    }
)
# PRAGMAs that only read: without a value, or with a table's name (https://sqlite.org/pragma.html).
_READ_PRAGMAS = frozenset(
    {
        "application_id",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "function_list",
        "journal_mode",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "schema_version",
        "synchronous",
        "user_version",
    }
)
_TABLE_PRAGMAS = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
_TRANSACTION = "it would end the append's transaction, which is the append's own"


def _reserved(name: str) -> bool:
    """The log's and minies' own names (and SQLite's)."""
    return name == "events" or name.startswith(("minies_", "sqlite_"))


def _authorizer(db: Database, backend: SqliteBackend) -> Callable[..., int]:
    """SQLite's authorizer: while ``store.query`` runs, reads only; while projection code runs,
    it may read anything, and create (in setup), write, alter and drop only its own objects
    (``db.owned``); minies' own statements otherwise."""

    def authorize(action: int, one: str | None, two: str | None, schema: str | None, _trigger: str | None) -> int:
        if action in _READS:
            return apsw.SQLITE_OK
        if backend.querying:
            if action == apsw.SQLITE_PRAGMA and _reads_only((one or "").lower(), two):
                return apsw.SQLITE_OK
            backend.why = _query_refusal(action, (one or "").lower())
            return apsw.SQLITE_DENY
        if not db.active:
            return apsw.SQLITE_OK
        why = _refusal(db, action, (one or "").lower(), (two or "").lower(), schema)
        if why is None:
            return apsw.SQLITE_OK
        db.why = why
        return apsw.SQLITE_DENY

    return authorize


def _reads_only(pragma: str, value: str | None) -> bool:
    return (pragma in _READ_PRAGMAS and not value) or pragma in _TABLE_PRAGMAS


def _query_refusal(action: int, one: str) -> str:
    """Why ``store.query`` may not do ``action`` (anything but a read)."""
    if action == apsw.SQLITE_PRAGMA:
        return f"PRAGMA {one} is not a read (it may not change a setting of the store's connection or file)"
    if action in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return "it would start or end a transaction"
    if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return "it would attach or detach a database file"
    return "it would write or change the schema"


def _refusal(db: Database, action: int, one: str, two: str, schema: str | None) -> str | None:
    """Why projection code may not do ``action`` (None: it may)."""
    if action in _WRITES:
        if one in _CATALOG or (schema == "main" and one in db.owned):
            return None
        if _reserved(one):
            return f"it would write {one}, which is the log or one of minies' own tables"
        return f"it would write {one}, which is not this projection's (it writes only the tables it created in setup)"
    if action in _CREATES:
        table = two if _CREATES[action] == 2 else one
        if one.startswith("sqlite_autoindex_") and table in db.owned:  # a UNIQUE constraint's own index
            return None
        if db.taken is None:
            return f"it would create {one} outside setup (a projection creates its objects in setup)"
        if schema != "main" or _reserved(one) or one in db.taken:
            return f"it would create {one}, a name that is not free for this projection"
        if table != one and table not in db.owned:
            return f"it would create {one} on {table}, which is not this projection's"
        db.owned.add(one)
        return None
    if action in _DROPS:
        return None if schema == "main" and one in db.owned else f"it would drop {one}, which is not this projection's"
    if action == apsw.SQLITE_ALTER_TABLE:  # (one: the schema, two: the table)
        return None if one == "main" and two in db.owned else f"it would alter {two}, which is not this projection's"
    if action == apsw.SQLITE_REINDEX:
        return None
    if action == apsw.SQLITE_PRAGMA:
        if _reads_only(one, two):
            return None
        return f"PRAGMA {one} is not a read (it may not change a setting of the store's connection or file)"
    if action in _TEMPORARY:
        return (
            "it would create or drop a temporary object, which lives on the store's connection beyond the "
            "projection's transaction (and could change what minies reads and writes)"
        )
    if action in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return _TRANSACTION
    if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return "it would attach or detach a database file"
    return "SQLite's authorizer has no permission for it in a projection (ANALYZE, a virtual table's own DDL, ...)"


def _read_only(path: str) -> bool:
    """Is ``path`` an existing file that cannot be written (read-only media, permissions)?"""
    return os.path.isfile(path) and not os.access(path, os.W_OK)  # EROFS on read-only media, EACCES


@contextlib.contextmanager
def _writing(conn: Connection) -> Iterator[None]:
    """The backend's own write transaction (opening, repair): committed, or rolled back."""
    conn.execute(sqlite_sql.BEGIN)
    try:
        yield
    except BaseException:
        conn.execute(sqlite_sql.ROLLBACK)
        raise
    conn.execute(sqlite_sql.COMMIT)
