"""The exception tree. Every error minies raises on purpose is a ``MiniesError``:

    MiniesError
    ├── ConcurrencyError      the aggregate moved on since you read it; reload and retry
    ├── DuplicateEventError   an event id was reused for a different event   (also ValueError)
    ├── NotFound              no events for that aggregate                  (also LookupError)
    ├── SchemaError           not a minies file, a newer schema, or an event type/class mismatch
    ├── ProjectionError       a projection failed while setting up or catching up
    ├── QueryError            store.query was given bad SQL or parameters, or SQL that writes
    ├── PersonalDataError     a sealed personal field cannot be opened or written: altered,
    │                         a wrong or missing key-encryption key, no cryptography package
    ├── StorageError          the file cannot be written: disk full, read-only, locked, damaged
    └── SyncError             a hub refused a device's push (nothing written), or their logs diverged

    SnapshotWarning           (a UserWarning) an aggregate's state would not read back as itself,
                              so its class is not snapshotted; loads replay instead

Wrong argument types and values raise the builtin ``TypeError``/``ValueError`` before
anything is written.
"""

from __future__ import annotations


class MiniesError(Exception):
    """Base class of every error minies raises on purpose."""


class ConcurrencyError(MiniesError):
    """The aggregate is not at the version the caller expected.

    Attributes:
        aggregate_id: the aggregate that was appended to.
        expected: the version the caller expected.
        actual: the version the aggregate is really at.
    """

    def __init__(self, aggregate_id: str, expected: int, actual: int) -> None:
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"aggregate {aggregate_id!r} is at version {actual}, expected {expected}; reload it and retry")

    def __reduce__(self) -> tuple[type[ConcurrencyError], tuple[str, int, int]]:
        return (type(self), (self.aggregate_id, self.expected, self.actual))


class DuplicateEventError(MiniesError, ValueError):
    """An event id is already recorded for a different event.

    Attributes:
        event_id: the reused id.
    """

    def __init__(self, event_id: str, detail: str) -> None:
        self.event_id = event_id
        self.detail = detail
        super().__init__(f"event id {event_id!r} is already used {detail}; pick a new id")

    def __reduce__(self) -> tuple[type[DuplicateEventError], tuple[str, str]]:
        return (type(self), (self.event_id, self.detail))


class NotFound(MiniesError, LookupError):
    """The aggregate has no events (at or below the requested version)."""


class SchemaError(MiniesError):
    """The file is not a minies database, is from a newer minies, or does not match the code.

    Attributes:
        position: the stored event that does not read with today's code, if that is the cause.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message)

    def __reduce__(self) -> tuple[type[SchemaError], tuple[str, int | None]]:
        return (type(self), (str(self), self.position))


class ProjectionError(MiniesError):
    """A projection failed while it was being set up, caught up or rebuilt, or its SQL failed
    during an append (the append was rolled back; SQLite's error is the ``__cause__``).

    Attributes:
        projection: the projection's name.
        position: the event it failed on, if known.
    """

    def __init__(self, projection: str, message: str, position: int | None = None) -> None:
        self.projection = projection
        self.message = message
        self.position = position
        super().__init__(f"projection {projection!r}: {message}")

    def __reduce__(self) -> tuple[type[ProjectionError], tuple[str, str, int | None]]:
        return (type(self), (self.projection, self.message, self.position))


class PersonalDataError(MiniesError):
    """A personal field cannot be sealed or opened: its ciphertext was altered or moved, its
    key is missing, the key-encryption key is wrong or missing, or ``cryptography`` is not
    installed (``pip install "minies[crypto]"``)."""


class QueryError(MiniesError, ValueError):
    """``store.query`` was given invalid SQL, wrong parameters, or SQL that would write."""


class SnapshotWarning(UserWarning):
    """An aggregate's state would not read back as itself, so it is not snapshotted.

    Loading then replays the events, which is always right, only slower.
    """


class StorageError(MiniesError):
    """The database file cannot be read or written: disk full, read-only, locked or damaged."""


class SyncError(MiniesError):
    """A sync was refused, and nothing was written: a device or bundle that does not fit the
    hub (not registered, not allowed, not the device it claims, a sequence with a gap, an
    altered or replayed event), or a log that diverged from the hub's."""
