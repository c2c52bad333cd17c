"""The SQLite backend: one file in WAL mode (or ``:memory:``), through apsw.

This is the only module that turns apsw's exceptions into minies' errors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Final, NoReturn

import apsw

from minies._backends import READ_ONLY_STORE, sqlite_sql, triggers_problem
from minies._errors import QueryError, SchemaError, StorageError
from minies._projections import Database

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

    def __init__(self, path: str, *, durability: str, timeout: float, readonly: bool) -> None:
        self.path = self.where = path
        self.readonly = readonly
        self._durability = durability
        self._timeout = timeout
        self._memory = path == ":memory:"
        self._reader_args = (path, apsw.SQLITE_OPEN_READONLY)  # how a second, reading connection opens
        self.file_version = sqlite_sql.SCHEMA_VERSION
        self.conn = self._connect()
        try:
            self._prepare()
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
            if not self._memory:
                mode = conn.pragma("journal_mode", "wal")
                if mode != "wal":
                    raise StorageError(f"cannot switch {self.path!r} to WAL mode (got {mode!r})")
            conn.pragma("synchronous", _SYNCHRONOUS[self._durability])
            # Deleted content is overwritten with zeros, so a forgotten key or a read model's
            # old row leaves no bytes behind (https://sqlite.org/pragma.html#pragma_secure_delete).
            conn.pragma("secure_delete", True)
            conn.pragma("journal_size_limit", 64 * 1024 * 1024)
            if version != sqlite_sql.SCHEMA_VERSION:
                conn.execute(sqlite_sql.BEGIN)  # the write lock: another process may be at it too
                try:
                    sqlite_sql.create_or_migrate(conn, sqlite_sql.identify(conn, repr(self.path)))
                    conn.execute(sqlite_sql.COMMIT)
                except BaseException:
                    conn.execute(sqlite_sql.ROLLBACK)
                    raise
        except apsw.Error as e:
            self.raise_error(e, f"cannot open {self.path!r}")

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
        db = Database(self.conn, apsw.AuthError)
        self.conn.set_authorizer(_authorizer(db))
        return db

    def query(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        conn = self.conn
        conn.pragma("query_only", True)
        try:
            return conn.execute(statement, params).fetchall()
        except apsw.ReadOnlyError:
            raise QueryError(f"store.query is read-only; this SQL tries to write: {statement!r:.200}") from None
        except (apsw.SQLError, apsw.ConstraintError, apsw.MismatchError, apsw.ExecutionCompleteError) as e:
            raise QueryError(f"invalid SQL {statement!r:.200}: {e}") from None
        except (apsw.BindingsError, TypeError) as e:
            raise QueryError(f"wrong parameters for {statement!r:.200}: {e}") from None
        except apsw.Error as e:
            self.raise_error(e, "cannot query")
        finally:
            conn.pragma("query_only", False)

    def schema_version(self) -> int:
        return int(self.conn.pragma("user_version"))

    def reading(self) -> apsw.Connection:
        return self.conn  # `with conn:` is one read transaction

    def check_structure(self) -> Callable[[], tuple[int | None, str | None]]:
        """The immutability triggers; then, on a connection and thread of their own (SQLite
        releases the GIL, so on two cores they cost a verify little wall time), the first
        event with a retyped column and SQLite's integrity check of every page and index.
        """
        triggers = {name: " ".join(str(sql).split()) for name, sql in self.conn.execute(sqlite_sql.TRIGGER_SQL)}
        guards = triggers_problem(triggers, {name: " ".join(sql.split()) for name, sql in sqlite_sql.TRIGGERS.items()})
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


# https://sqlite.org/c3ref/c_alter_table.html
_REFUSED_ACTIONS = frozenset({apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT, apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH})
_WRITES = frozenset({apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE, apsw.SQLITE_DROP_TABLE})


def _authorizer(db: Database) -> Callable[..., int]:
    """SQLite's authorizer refuses, while projection code runs, what would end the append's
    transaction, attach a file, or write the log or minies' own tables."""

    def authorize(action: int, name: str | None, _2: str | None, _db: str | None, _trig: str | None) -> int:
        if not db.active:
            return apsw.SQLITE_OK
        if action in _REFUSED_ACTIONS:
            return apsw.SQLITE_DENY
        if action in _WRITES and name and (name == "events" or name.startswith("minies_")):
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    return authorize


def _read_only(path: str) -> bool:
    """Is ``path`` an existing file that cannot be written (read-only media, permissions)?"""
    return os.path.isfile(path) and not os.access(path, os.W_OK)  # EROFS on read-only media, EACCES
