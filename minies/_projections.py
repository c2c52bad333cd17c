"""Projections: read models kept in the same file, updated inside the append's transaction.

Invariant this module relies on: positions are assigned as last + 1 inside SQLite's single
write transaction, so the log has no gaps and commits in position order. A checkpoint
"applied up to position P" therefore means "applied every event <= P", and catching up from
P can never skip an event committed by another process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, ClassVar

import msgspec

from minies import _codec, _events, _personal
from minies._backends import SWALLOWED, Connection
from minies._database import Database
from minies._errors import ProjectionError
from minies._events import Event, Recorded, SubjectForgotten, type_names
from minies._log import LAST, Opener, log_pages


class Projection:
    """A read model: SQL tables in the store's file, fed by events.

    Override ``setup`` to create the tables (it always runs on a fresh slate) and either
    ``handle`` for every event, or methods named ``on_<EventType>`` for the types you care
    about; with the latter the projection only ever sees those types (an overridden
    ``handle_batch`` sees every type, unless ``event_types`` says otherwise). In the method's name,
    each character of the type that is not a letter, digit or ``_`` is written ``_``
    (``on_shop_order_placed`` for "shop.order-placed", whose class must be defined by then).

    Attributes:
        name: ClassVar, the checkpoint's key; defaults to the class name.
        version: ClassVar, bump it after changing setup or handlers: the projection is rebuilt.
        event_types: ClassVar, only these types reach ``handle`` (None: all, unless
            ``on_<EventType>`` methods say otherwise).
    """

    name: ClassVar[str]
    _named: ClassVar[bool] = False
    version: ClassVar[int] = 1
    event_types: ClassVar[Collection[str | type[Event]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # An explicit name is inherited like any attribute; the class-name default is not.
        if "name" in cls.__dict__:
            cls._named = True
        elif not cls._named:
            cls.name = cls.__name__

    def setup(self, db: Database) -> None:
        """Create the read model's tables and indexes. No ``IF NOT EXISTS`` needed."""

    def handle(self, db: Database, event: Recorded) -> None:
        """Apply one event to the read model (runs inside the writer's transaction).

        By default: call the ``on_<EventType>`` method, if there is one.
        """
        try:
            method = self._on[event.event_type]
        except (AttributeError, KeyError):
            method = self._method_for(event.event_type)
        if method is not None:
            method(db, event)

    def handle_batch(self, db: Database, events: Sequence[Recorded]) -> None:
        """Apply several events, in order. Override it to batch the writes (``executemany``);
        rebuilds and catch-ups hand over up to 2,000 events at a time.

        By default: ``handle`` each event.
        """
        for event in events:
            try:
                self.handle(db, event)
            except Exception as e:
                e.add_note(f"at position {event.position}")
                raise

    def forget(self, db: Database, subject: str) -> bool:
        """Remove ``subject``'s personal data from the read model; ``store.forget`` calls it
        inside its transaction, after destroying the subject's key.

        Return True once done. The default returns False: then, if this projection sees an
        event type with personal fields, it is rebuilt from the log, where the subject's
        fields now read as forgotten (always right, and as slow as a rebuild). Override it to
        delete or blank the subject's rows directly.
        """
        return False

    def _method_for(self, event_type: str) -> Callable[[Database, Recorded], None] | None:
        if "_on" not in self.__dict__:
            self._on: dict[str, Callable[[Database, Recorded], None] | None] = {}
        method = self._on[event_type] = getattr(self, "on_" + _NOT_IDENTIFIER.sub("_", event_type), None)
        return method

    def wanted_types(self) -> frozenset[str] | None:
        """The event types this projection sees, or None for all of them."""
        if self.event_types is not None:
            return type_names(self.event_types)
        if type(self).handle is Projection.handle and type(self).handle_batch is Projection.handle_batch:
            handled = {name[3:] for name in dir(self) if name.startswith("on_") and callable(getattr(self, name))}
            # `on_shop_order_placed` handles "shop.order-placed" too: the registered types it names
            spelled = {name for name in _events.registry if _NOT_IDENTIFIER.sub("_", name) in handled}
            return frozenset(handled | spelled)
        return None


_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


class RebuildReport(msgspec.Struct, frozen=True):
    """What a rebuild did: ``events`` applied in ``seconds`` (``events_per_second``)."""

    name: str
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


Progress = Callable[[int, int], None]
_AT_POSITION = re.compile(r"^at position (\d+)$")


def _failed_position(error: BaseException) -> int | None:
    for note in getattr(error, "__notes__", ()):
        found = _AT_POSITION.match(note)
        if found:
            return int(found.group(1))
    return None


class Projector:
    """Runs a store's projections: inline on append, catch-up on open, rebuild on demand.

    Every method runs inside a write transaction the store opened.
    """

    def __init__(self, projections: Iterable[Projection], read_view: Callable[[], tuple[bool, Opener | None]]) -> None:
        self._read_view = read_view
        self.projections: dict[str, Projection] = {}
        for projection in projections:
            if not isinstance(projection, Projection):
                raise TypeError(f"projections must be minies.Projection instances, got {type(projection).__name__}")
            name = projection.name
            if not isinstance(name, str) or not name:
                raise ValueError(f"projection name must be a non-empty str, got {name!r}")
            if name in self.projections:
                raise ValueError(f"two projections are named {name!r}; names must be unique")
            self.projections[name] = projection
        self._types = {name: p.wanted_types() for name, p in self.projections.items()}
        self._positions: dict[str, int] = {}
        # The head as of this store's last inline apply, which left every checkpoint there (a
        # catch-up or rebuild leaves its own at the head too); None: read the checkpoints again.
        self._known_head: int | None = None
        self._owned: dict[str, list[str]] = {}  # each projection's objects, as its checkpoint row lists them
        self.erased: list[str] = []
        """Read models cleaned of a forgotten subject (by ``SubjectForgotten`` events) lately."""

    def __bool__(self) -> bool:
        return bool(self.projections)

    def forget(self) -> None:
        """Drop cached checkpoints (after a rollback, or when another writer moved the log)."""
        self._known_head = None
        self._owned.clear()

    def _objects(self, conn: Connection, name: str) -> list[str]:
        """The names of what projection ``name`` created in its setup."""
        owned = self._owned.get(name)
        if owned is None:
            state = conn.execute(conn.sql.PROJECTION_STATE, (name,)).fetchone()
            owned = self._owned[name] = [str(o) for _, o in msgspec.json.decode(state[2])] if state else []
        return owned

    # ------------------------------------------------------------------ inline
    def apply(self, conn: Connection, db: Database, records: list[Recorded], head_before: int, now: str) -> None:
        """Apply freshly appended ``records`` (the log was at ``head_before`` before them)."""
        if self._known_head != head_before:
            rows: list[Any] = conn.execute(conn.sql.PROJECTION_POSITIONS).fetchall()
            self._positions = dict(rows)
            self._owned.clear()  # (another writer may have rebuilt a projection)
        erased = [r.data.subject for r in records if isinstance(r.data, SubjectForgotten)]
        for name, projection in self.projections.items():
            position = self._positions[name]  # every projection has a row after its catch-up on open
            if position < head_before:  # another store appended meanwhile, perhaps a forget: applied too
                if self._erase(conn, db, name, self._erased(conn, position, head_before)):
                    continue  # rebuilt: at the head, these records included
                self._replay(conn, db, projection, position, None, upto=head_before)
            if erased and self._erase(conn, db, name, erased):
                continue
            wanted = self._types[name]
            mine = records if wanted is None else [r for r in records if r.event_type in wanted]
            if mine:
                with db.running(name, self._objects(conn, name)):
                    try:
                        projection.handle_batch(db, mine)
                    except conn.Error as e:
                        if SWALLOWED in str(e):  # the append's own rows are missing: the store says so
                            raise
                        position = _failed_position(e) or mine[0].position
                        raise ProjectionError(
                            name, f"SQL failed at position {position}: {type(e).__name__}: {e}", position
                        ) from e
                    except Exception as e:
                        e.add_note(f"in projection {name!r}")
                        raise
        head = records[-1].position
        for name in self.projections:
            conn.execute(conn.sql.ADVANCE_PROJECTION, (head, now, name))
        self._positions = dict.fromkeys(self.projections, head)
        self._known_head = head

    # ------------------------------------------------------------------ catch-up and rebuild
    def catch_up(self, conn: Connection, db: Database, name: str) -> None:
        """Bring one projection up to the head; rebuild it if it is new or its version changed."""
        projection = self.projections[name]
        hold_the_log(conn)
        state = conn.execute(conn.sql.PROJECTION_STATE, (name,)).fetchone()
        head = conn.execute(conn.sql.HEAD_POSITION).get
        if state is None or state[0] != projection.version:
            self.rebuild(conn, db, name)
        elif state[1] < head:
            # A subject forgotten meanwhile (by another store, or the CLI, without this read model).
            if self._erase(conn, db, name, self._erased(conn, state[1], head)):
                return
            self._replay(conn, db, projection, state[1], None)
            conn.execute(conn.sql.ADVANCE_PROJECTION, (head, _codec.now_text(), name))

    @staticmethod
    def _erased(conn: Connection, after: int, upto: int) -> list[str]:
        """The subjects of the ``SubjectForgotten`` events at positions ``after < p <= upto``."""
        rows = conn.execute(conn.sql.ERASED_BETWEEN, (after, upto))
        return [msgspec.json.decode(data)["subject"] for (data,) in rows]

    def _erase(self, conn: Connection, db: Database, name: str, subjects: list[str]) -> bool:
        """Take forgotten subjects' personal data out of one read model: its ``forget`` hook,
        else a rebuild if it sees any type with personal fields. True if it was rebuilt (and
        so is at the head already)."""
        projection = self.projections[name]
        sealed = {cls.event_type for cls in _personal.SEALED}
        wanted = self._types[name]
        for subject in subjects:
            with db.running(name, self._objects(conn, name)):
                try:
                    handled = projection.forget(db, subject)
                except conn.Error as e:
                    if SWALLOWED in str(e):
                        raise
                    raise ProjectionError(name, f"forget({subject!r}) failed: {type(e).__name__}: {e}") from e
            if handled:
                self.erased.append(name)
            elif wanted is None or not sealed.isdisjoint(wanted):
                self.rebuild(conn, db, name)
                self.erased.append(name)
                return True
        return False

    def rebuild(self, conn: Connection, db: Database, name: str, progress: Progress | None = None) -> RebuildReport:
        """Drop what the projection created, run ``setup`` again, replay the whole log."""
        projection = self.projections[name]
        started = time.perf_counter()
        hold_the_log(conn)
        state = conn.execute(conn.sql.PROJECTION_STATE, (name,)).fetchone()
        for kind, object_name in reversed(msgspec.json.decode(state[2]) if state else []):
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{object_name}"')
        self._owned.pop(name, None)
        before = set(conn.execute(conn.sql.SCHEMA_OBJECTS).fetchall())
        try:
            with db.running(name, (), taken=[object_name for _, object_name in before]):
                projection.setup(db)
        except Exception as e:
            raise ProjectionError(name, f"setup failed: {type(e).__name__}: {e}") from e
        created = [row for row in conn.execute(conn.sql.SCHEMA_OBJECTS).fetchall() if row not in before]
        created.sort(key=lambda row: ("table", "view", "index", "trigger").index(row[0]))
        self._owned[name] = [object_name for _, object_name in created]
        count = self._replay(conn, db, projection, 0, progress)
        head = conn.execute(conn.sql.HEAD_POSITION).get
        conn.execute(
            conn.sql.SAVE_PROJECTION,
            (name, projection.version, head, msgspec.json.encode(created).decode(), _codec.now_text()),
        )
        return RebuildReport(name, count, time.perf_counter() - started)

    def _replay(
        self,
        conn: Connection,
        db: Database,
        projection: Projection,
        after: int,
        progress: Progress | None,
        upto: int = LAST,
    ) -> int:
        wanted = self._types[projection.name]
        total = min(upto, conn.execute(conn.sql.HEAD_POSITION).get)
        count = 0
        batch: list[Recorded] = []
        try:
            with db.running(projection.name, self._objects(conn, projection.name)):
                upcasting, opener = self._read_view()
                for batch in log_pages(conn, upcasting, after, wanted, upto=upto, opener=opener):
                    if batch:
                        projection.handle_batch(db, batch)
                        count += len(batch)
                        if progress is not None:
                            progress(batch[-1].position, total)
        except Exception as e:
            position = _failed_position(e)
            if position:
                where = f"position {position}"
            elif batch:
                where = f"a position in {batch[0].position}..{batch[-1].position}"
            else:  # the read failed before a page came (an event this store cannot open, say)
                where = f"a position after {after}"
            raise ProjectionError(projection.name, f"failed at {where}: {type(e).__name__}: {e}", position) from e
        if progress is not None:
            progress(total, total)
        return count


def hold_the_log(conn: Connection) -> None:
    """Take the log's write lock before reading a checkpoint and the head, as an append does
    before it writes: else, on PostgreSQL, an append committing meanwhile would apply events a
    catch-up applies too. (Its state query takes it there; a SQLite write holds it already.)"""
    conn.execute(conn.sql.APPEND_STATE, ("",)).fetchall()
