"""The event types a log holds, and whether reads must look at each event's schema version.

A store learns the ``(event_type, schema_version)`` pairs of its log when it opens, adds
those its own appends store (and describes each in ``minies_event_types``), and rereads them
when another connection has written. From them and the registered classes, upcasters and
renames it decides the read path: the fast one, or the one that upcasts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from minies import _codec, _events, _upcasters
from minies._backends import Connection
from minies._events import Event


class StoredTypes:
    """One store's view of the event types in its log."""

    def __init__(self, file_version: int) -> None:
        self._file_version = file_version
        self.pairs: set[tuple[str, int]] = set()  # (event_type, schema_version) in the log
        self._key: tuple[int, int] | None = None  # (commit counter, registry generation) of the answer
        self._upcasting = False

    def load(self, conn: Connection) -> None:
        """Read them again (on open, and after a rollback)."""
        self._key = None
        self.pairs = set(self._rows(conn))

    def _rows(self, conn: Connection) -> list[tuple[str, int]]:
        rows: list[Any] = conn.execute(conn.sql.STORED_TYPES[self._file_version]).fetchall()
        return rows

    def note(self, conn: Connection, events: list[Event]) -> None:
        """The append that stored ``events`` is in the caller's write: describe each new type."""
        for event in events:
            if (event.event_type, event.schema_version) not in self.pairs:
                self._remember(conn, type(event))

    def _remember(self, conn: Connection, cls: type[Event]) -> None:
        try:
            schema = msgspec.json.encode(msgspec.json.schema(cls)).decode()
        except Exception:  # a type msgspec cannot describe still stores fine
            schema = "{}"
        name, version = cls.event_type, cls.schema_version
        conn.execute(
            conn.sql.ADD_TYPE, (name, version, f"{cls.__module__}.{cls.__qualname__}", schema, _codec.now_text())
        )
        self.pairs.add((name, version))
        self._key = None  # (the commit counter counts only other connections' commits)

    def upcasting(self, conn: Connection, commits: int) -> bool:
        """Must reads look at each event's schema version? Yes while upcasters or renames are
        registered, or a class's version is not 1, or the log holds a type at a version newer
        than its class here (so old code refuses those events instead of dropping fields)."""
        key = (commits, _events.generation)
        if key != self._key:
            if self._key is not None and key[0] != self._key[0]:
                self.pairs.update(self._rows(conn))  # another connection wrote
            registry = _events.registry
            self._upcasting = _upcasters.active() or any(
                name in registry and version > registry[name].schema_version for name, version in self.pairs
            )
            self._key = key
        return self._upcasting
