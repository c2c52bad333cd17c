"""minies: an embedded event store and CQRS engine in one SQLite file."""

from minies._aggregate import Aggregate
from minies._aio import AsyncEventStore
from minies._audit import VerifyReport, repair
from minies._copy import CopyReport, copy
from minies._database import Database
from minies._erasure import Erasure
from minies._errors import (
    ConcurrencyError,
    DuplicateEventError,
    MiniesError,
    NotFound,
    PersonalDataError,
    ProjectionError,
    QueryError,
    SchemaError,
    SnapshotWarning,
    StorageError,
    SyncError,
)
from minies._events import (
    ANY,
    ERASURES,
    REJECTIONS,
    SEALS,
    Event,
    EventRejected,
    Recorded,
    Sealed,
    SubjectForgotten,
    metadata_scope,
)
from minies._log import StoreInfo
from minies._personal import Personal, forgotten, sealed
from minies._processors import Processor
from minies._projections import Projection, RebuildReport
from minies._roles import grant
from minies._store import EventStore
from minies._subscriptions import DeadLetter, Subscription
from minies._upcasters import rename, upcaster
from minies._wire import SyncReport

__version__ = "0.2.0"

__all__ = [
    "ANY",
    "Aggregate",
    "AsyncEventStore",
    "ConcurrencyError",
    "CopyReport",
    "Database",
    "DeadLetter",
    "DuplicateEventError",
    "ERASURES",
    "Erasure",
    "Event",
    "EventRejected",
    "EventStore",
    "MiniesError",
    "NotFound",
    "Personal",
    "PersonalDataError",
    "Processor",
    "Projection",
    "ProjectionError",
    "QueryError",
    "REJECTIONS",
    "RebuildReport",
    "Recorded",
    "SEALS",
    "SchemaError",
    "Sealed",
    "SnapshotWarning",
    "StorageError",
    "StoreInfo",
    "SubjectForgotten",
    "Subscription",
    "SyncError",
    "SyncReport",
    "VerifyReport",
    "copy",
    "forgotten",
    "grant",
    "metadata_scope",
    "rename",
    "repair",
    "sealed",
    "upcaster",
]
