"""What the engine and the backends agree on: the ``Connection`` and ``Backend`` protocols and
a few shared words. Standard library only, so every backend and every engine room can import
it without importing each other."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, NoReturn, Protocol

Check = Callable[[], tuple[int | None, str | None]]
"""A backend's own checks of a log (see ``Backend.check_structure``)."""


class Connection(Protocol):
    """What the engine runs SQL through: apsw's interface, which the PostgreSQL one copies."""

    @property
    def sql(self) -> ModuleType: ...

    @property
    def Error(self) -> type[Exception]: ...

    def execute(self, statement: str, params: Any = ..., /) -> Any: ...

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]], /) -> Any: ...

    def changes(self) -> int:
        """Rows the last INSERT, UPDATE or DELETE changed."""
        ...

    def data_version(self) -> int:
        """Inside a write transaction: equal on two calls only if no other connection has
        committed since this one last did (a backend that cannot tell cheaply never repeats).
        Between transactions it may lag: use ``commit_counter``."""
        ...

    def commit_counter(self) -> int:
        """Changes when another connection commits to the log, whenever it is asked (what
        ``follow`` watches, and what tells a store its caches of the log are stale)."""
        ...

    def get_autocommit(self) -> bool:
        """True outside a transaction."""
        ...


class Backend(Protocol):
    """One open store's storage."""

    @property
    def where(self) -> str:
        """How messages name it: a file path, or a URL without its password."""
        ...

    @property
    def conn(self) -> Connection: ...

    @property
    def unguarded(self) -> str | None:
        """On a writable open: what is wrong with the log's guards (the engine then writes nothing)."""
        ...

    @property
    def file_version(self) -> int:
        """The schema version of the data as found (a read-only store does not migrate it)."""
        ...

    def raise_error(self, error: BaseException, doing: str) -> NoReturn:
        """Raise the ``MiniesError`` that explains a driver error."""
        ...

    def damage(self, error: BaseException) -> str | None:
        """What is damaged, if ``error`` says the stored data is."""
        ...

    def conflict(self, error: BaseException, table: str = "events") -> str | None:
        """If an insert into ``table`` broke a uniqueness: which (for events, ``"event_id"`` or
        ``"version"``); else None."""
        ...

    def projection_db(self) -> Any:
        """The ``Database`` handle projections write through."""
        ...

    def query(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        """Run read-only SQL; ``QueryError`` if it is invalid or writes."""
        ...

    def schema_version(self) -> int: ...

    def check_structure(self) -> Callable[[], tuple[int | None, str | None]]:
        """Start the backend's own checks; call the result for ``(the first event with a
        column of the wrong type or None, the first problem with the immutability guards or
        the storage's integrity or None)``."""
        ...

    def repair(self, verify: Callable[[Connection, Check], str | None]) -> list[str]:
        """Re-create minies' own guards if the log verifies without them (``verify(conn, check)``
        says what is wrong, or None); return the names of those re-created."""
        ...

    def backup(self, target: str) -> None: ...

    def purge(self, snapshots: bool = False) -> bool:
        """Push deleted bytes (a destroyed key; dropped snapshots, if ``snapshots``) out of the
        storage's logs and free space, as far as the backend can; True if it could."""
        ...

    def close(self) -> None: ...

    def reading(self) -> AbstractContextManager[Any]:
        """A consistent read of the whole log while others append (``verify``)."""
        ...


READ_ONLY_STORE = "this store was opened with readonly=True; open it without to write"


SWALLOWED = "minies: the append stored "
"""How a backend's own check of an append's rows starts its error (PostgreSQL's comes back with
the next statement sent, which may be a projection's)."""


def swallowed(stored: int, n: int) -> str:
    """What an append says when fewer of its rows are in the log than it inserted."""
    return (
        f"the append stored {stored} of {n} events: something on the events table discards inserts "
        "(a trigger or rule minies did not create); nothing was written; `minies verify` names it"
    )


def has_table(conn: Connection, name: str) -> bool:
    """Does the log's schema hold this table? (A query that never fails: on PostgreSQL a failed
    statement would end the transaction it is in.)"""
    return ("table", name) in {tuple(row) for row in conn.execute(conn.sql.SCHEMA_OBJECTS).fetchall()}


def is_url(where: str | os.PathLike[str]) -> bool:
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def shown(where: str | os.PathLike[str]) -> str:
    """``where`` as messages show it: a URL's password masked."""
    if not is_url(where):
        return os.fspath(where)
    parts = urllib.parse.urlsplit(str(where))
    if parts.password is None:
        return str(where)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def triggers_problem(found: Mapping[str, str], expected: Mapping[str, str], disabled: Iterable[str] = ()) -> str | None:
    """What is wrong with the triggers on the events table, if anything: ``found`` and
    ``expected`` map each trigger's name to its definition; ``disabled`` names those switched off."""
    missing = sorted(expected.keys() - found.keys())
    if missing:
        return f"immutability triggers are missing: {', '.join(missing)}"
    if disabled := sorted(disabled):
        return f"immutability triggers are disabled: {', '.join(disabled)}"
    altered = [name for name in expected if found[name] != expected[name]]
    if altered:
        return f"the immutability trigger {altered[0]} was altered"
    unknown = sorted(found.keys() - expected.keys())
    if unknown:
        return (
            f"triggers minies did not create are on the events table: {', '.join(unknown)}"
            " (one could drop or change appended events)"
        )
    return None
