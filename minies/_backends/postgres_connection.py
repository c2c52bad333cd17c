"""A psycopg connection with apsw's interface, which the engine runs its SQL through.

It speaks SQLite's placeholders (``?``, ``:name``), sends what can wait (a ``BEGIN``, a
one-event insert) with the next statement in one pipeline, so an append is two round trips,
and opens a new session when the server dropped one between transactions (never inside one:
a transaction that lost its session fails, and a ``COMMIT`` on the way is ``LostCommit``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from minies._backends import postgres_sql

__all__ = ["Connection", "LostCommit", "first_line", "pg_errors", "psycopg", "translate"]

try:
    import psycopg
    import psycopg.sql
    from psycopg import errors as pg_errors
    from psycopg.pq import PipelineStatus, TransactionStatus
except ImportError:  # pragma: no cover - exercised by the test that hides psycopg
    psycopg = None  # type: ignore[assignment]
    pg_errors = None  # type: ignore[assignment]

if psycopg is not None:

    class LostCommit(psycopg.OperationalError):
        """A COMMIT whose session was lost on the way: it may or may not have committed."""


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
                raise LostCommit(first_line(e)) from e
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


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
