"""The handle projections write through: SQL inside the writer's transaction, nothing else.

It lives below the backends (each builds one on its connection, with its own guard: SQLite's
authorizer, PostgreSQL's screen) and below the projections that use it, so neither imports
the other. ``minies.Database`` is its public name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from minies._errors import MiniesError

if TYPE_CHECKING:
    from minies._backends.base import Connection


class Database:
    """What a projection may do with the store: run SQL inside the writer's transaction.

    There is no commit, rollback or close: the transaction belongs to the append. It works
    only while minies runs the projection's code (``setup``, ``handle``, ``forget``). A
    projection reads anything, and creates (in ``setup``), writes, alters and drops only its
    own tables, indexes, views and triggers; SQLite refuses the rest (its authorizer: no DDL
    or writes on the log, minies' tables or other read models, no temporary objects, no
    PRAGMA that sets anything, no ATTACH, no transaction control). SQL uses ``?``
    placeholders on every backend.
    """

    __slots__ = ("_conn", "_refused", "_screen", "_tag", "_tagged", "active", "name", "owned", "taken", "why")

    def __init__(
        self,
        conn: Connection,
        refused: type[Exception],
        screen: Callable[[str], bool] | None = None,
        *,
        tagged: bool = False,
    ) -> None:
        self._conn = conn
        self._refused = refused  # what the backend raises for a refused statement
        self._screen = screen  # or a look at the text first: True means refused
        # Each projection's statements get a text of their own (a trailing comment naming it),
        # so a statement prepared (and authorized) for minies or another projection is never
        # taken from the connection's statement cache for this one.
        self._tagged = tagged
        self._tag = ""
        self.active = False
        self.name = ""
        self.owned: set[str] = set()
        """The running projection's own objects (names, lowercase)."""
        self.taken: frozenset[str] | None = None
        """While ``setup`` runs: the names that exist already (None: it is not creating)."""
        self.why = ""
        """Why the backend refused the last statement, if it says."""

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows (an empty list for writes)."""
        if not self.active or (self._screen is not None and self._screen(sql)):
            raise self._refusal(sql)
        try:
            return self._conn.execute(sql + self._tag, params).fetchall()  # type: ignore[no-any-return]
        except self._refused:
            raise self._refusal(sql) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""
        if not self.active or (self._screen is not None and self._screen(sql)):
            raise self._refusal(sql)
        try:
            self._conn.executemany(sql + self._tag, rows)
        except self._refused:
            raise self._refusal(sql) from None

    def running(self, name: str = "", owned: Iterable[str] = (), taken: Iterable[str] | None = None) -> Database:
        """``with db.running(name, owned):`` marks projection ``name``'s code as running (owning
        ``owned``; creating objects too when ``taken``, the names already used, is given)."""
        self.name = name
        self.owned = {o.lower() for o in owned}
        self.taken = None if taken is None else frozenset(t.lower() for t in taken)
        if self._tagged:
            self._tag = "\n/* minies projection " + name.replace("*/", "* /") + " */"
        return self

    def __enter__(self) -> None:
        self.why = ""
        self.active = True

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.taken = None

    def _refusal(self, sql: str) -> MiniesError:
        if not self.active:
            return MiniesError(
                f"a projection's db handle works only while minies runs the projection (setup, handle, forget): "
                f"{sql!r:.200} was not run"
            )
        why = self.why or (
            "it would end the append's transaction, attach a file, or write the log or minies' own tables"
        )
        return MiniesError(f"a projection may not run {sql!r:.200}: {why}")
