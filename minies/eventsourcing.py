"""minies as a persistence module of the ``eventsourcing`` library.

    PERSISTENCE_MODULE=minies.eventsourcing MINIES_PATH=bank.db python app.py

``MINIES_PATH`` is a file path (or ``:memory:``, or a PostgreSQL URL). An application's
events become minies events: one immutable, hash-chained log that ``minies verify`` checks
and the ``sqlite3`` shell reads. How the library's records map onto minies:

- A stored event ``(originator_id, originator_version, topic, state)`` is an event of the
  stream ``str(originator_id)``, ``event_type`` = topic, ``data`` = the state's JSON text
  as is when it is a JSON object (so ``json_extract`` sees it), else
  ``{"$bytes": "<base64>"}`` (compressed or encrypted states). States round-trip byte for
  byte.
- minies versions start at 1 and have no gaps; the library's may start at any number (0 or
  1, its ``INITIAL_VERSION``). The stream's ``aggregate_type`` records what the library's
  first version was, and whether ids are UUIDs: ``eventsourcing:uuid:1`` means UUID ids and
  minies version 1 = the library's version 1. A version that would leave a gap is refused.
- Notification ids are minies positions: gap-free, in commit order.
- Records that are not a gap-free stream (snapshots: ``aggregate_recorder("snapshots")``)
  live in a side table ``eventsourcing_snapshots``, and tracking in
  ``eventsourcing_tracking``: outside the hash chain.

Settings (read by the library from the environment or the application's ``env``):
``MINIES_PATH`` (required), ``MINIES_DURABILITY`` (``full``, the default, or ``normal``),
``CREATE_TABLE`` (side tables; the log's schema is always created), and the library's
``*_RECORDER_TOPIC`` overrides. Conflicts raise the library's ``IntegrityError`` with nothing
written; other failures raise its ``OperationalError``/``DataError``/``ProgrammingError``,
caused by minies' own error.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final, cast
from uuid import UUID

import msgspec

try:
    from eventsourcing.persistence import (
        AggregateRecorder,
        ApplicationRecorder,
        DataError,
        InfrastructureFactory,
        IntegrityError,
        ListenNotifySubscription,
        Notification,
        OperationalError,
        ProcessRecorder,
        ProgrammingError,
        StoredEvent,
        Tracking,
        TrackingRecorder,
    )
    from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError(
        'minies.eventsourcing needs the eventsourcing library: pip install "minies[eventsourcing]"'
    ) from None

from minies import _codec
from minies._errors import ConcurrencyError, MiniesError, StorageError
from minies._store import EventStore

__all__ = [
    "Factory",
    "MiniesAggregateRecorder",
    "MiniesApplicationRecorder",
    "MiniesProcessRecorder",
    "MiniesRecordsRecorder",
    "MiniesTrackingRecorder",
]

_ALL: Final = (1 << 62) - 1  # "no limit" and "no upper bound" in SQL both backends accept
_BYTES: Final = '{"$bytes":"'  # how a state that is not a JSON object starts, once stored
_STREAM: Final = "eventsourcing:{id_type}:{first}"
_PURPOSE: Final = re.compile(r"[a-z][a-z0-9_]{0,40}")
_is_object = msgspec.json.Decoder(dict).decode


# ---------------------------------------------------------------------------- the mapping
def _data(state: bytes) -> str:
    """A state as the text of minies' ``data`` column (see the module's docstring)."""
    if state.startswith(b"{") and not state.startswith(b'{"$bytes":"'):
        try:
            _is_object(state)
            return state.decode()
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
    return f'{_BYTES}{base64.b64encode(state).decode()}"}}'


def _state(data: str) -> bytes:
    if data.startswith(_BYTES):
        return base64.b64decode(data[len(_BYTES) : -2])
    return data.encode()


@functools.lru_cache(maxsize=256)
def _stream(aggregate_type: str) -> tuple[bool, int]:
    """(ids are UUIDs, the library's version at minies version 1) of a stream's type."""
    prefix, _, rest = aggregate_type.partition(":")
    id_type, _, first = rest.partition(":")
    if prefix == "eventsourcing" and id_type in ("uuid", "text"):
        with contextlib.suppress(ValueError):
            return id_type == "uuid", int(first)
    return False, 1  # a stream minies itself wrote: its own ids and versions


def _originator(aggregate_id: str, is_uuid: bool) -> UUID | str:
    return UUID(aggregate_id) if is_uuid else aggregate_id


def _id_text(originator_id: object) -> tuple[str, str]:
    """(the id as stored, its type) of an originator id, checked."""
    if isinstance(originator_id, UUID):
        return str(originator_id), "uuid"
    if isinstance(originator_id, str) and originator_id and "\x00" not in originator_id:
        return originator_id, "text"
    raise DataError(f"originator_id must be a UUID or a non-empty str, got {originator_id!r:.80}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """minies' errors as the library's, each caused by minies' own (one clear message)."""
    try:
        yield
    except ConcurrencyError as e:
        raise IntegrityError(str(e)) from e
    except StorageError as e:
        raise OperationalError(str(e)) from e
    except (MiniesError, ValueError, TypeError) as e:
        raise DataError(str(e)) from e


# ---------------------------------------------------------------------------- recorders
class MiniesRecorder:
    """What every recorder shares: the factory's store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def create_table(self) -> None:
        """Create the side tables this recorder needs (the log itself always exists)."""

    def _create(self, statements: Sequence[str], table: str = "") -> None:
        store = self.store
        with _translated(), store._tx.lock, store._tx.write():
            for statement in statements:
                store._conn.execute(statement.format(table=table))


class MiniesAggregateRecorder(MiniesRecorder, AggregateRecorder):
    """Aggregate events in the minies log (``aggregate_recorder("events")``)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        self._insert(stored_events, None)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        runs = _runs(stored_events)
        store = self.store

        def work() -> list[int]:
            positions: list[int] = []
            for run in runs:
                positions.extend(self._append_run(*run))
            if tracking is not None:
                MiniesTrackingRecorder._track(store, tracking)
            return positions

        if not runs and tracking is None:
            return []
        with _translated():
            return store._tx.grouped(work)

    def _append_run(
        self, aggregate_id: str, id_type: str, first: int, topics: list[str], datas: list[str]
    ) -> list[int]:
        """One run as one minies append (the caller holds the store inside a write)."""
        store = self.store
        stored: Any = store._conn.execute(store._sql.ES_STREAM_TYPE, (aggregate_id,)).fetchone()
        aggregate_type = _STREAM.format(id_type=id_type, first=first) if stored is None else stored[0]
        base = _stream(aggregate_type)[1]
        if first < base:
            raise IntegrityError(
                f"originator {aggregate_id!r} begins at version {base}: version {first} is before it; "
                "nothing was written"
            )
        try:
            _, rows, _ = store._appender.write_events(
                aggregate_id,
                aggregate_type,
                first - base,
                _codec.encode_metadata(None),
                topics,
                datas,
                [1] * len(datas),
                None,
            )
        except ConcurrencyError as e:
            at = f"originator {aggregate_id!r} is at version {e.actual + base - 1}"
            if e.expected < e.actual:
                raise IntegrityError(f"{at}: version {first} is already recorded; nothing was written") from None
            raise DataError(
                f"{at}: version {first} would leave a gap, which minies refuses; nothing was written"
            ) from None
        return [row[0] for row in rows]

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        aggregate_id, _ = _id_text(originator_id)
        store = self.store
        with _translated(), store._tx.lock:
            conn = store._tx.open()
            first = 1
            if gt is not None or lte is not None:
                stored: Any = conn.execute(store._sql.ES_STREAM_TYPE, (aggregate_id,)).fetchone()
                if stored is None:
                    return []
                first = _stream(stored[0])[1]
            after = 0 if gt is None else max(gt - first + 1, 0)
            upto = _ALL if lte is None else lte - first + 1
            statement = store._sql.ES_STREAM.format(order="DESC" if desc else "ASC")
            rows: list[Any] = conn.execute(
                statement, (aggregate_id, after, upto, _ALL if limit is None else limit)
            ).fetchall()
        if not rows:
            return []
        is_uuid, base = _stream(rows[0][3])  # one stream: one type
        if isinstance(originator_id, UUID) != is_uuid:
            originator_id = _originator(aggregate_id, is_uuid)
        return [StoredEvent(originator_id, version + base - 1, topic, _state(data)) for version, topic, data, _ in rows]


class MiniesApplicationRecorder(MiniesAggregateRecorder, ApplicationRecorder):
    """Aggregate events and the application's notification log (minies positions)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, None)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        low = 1 if start is None else start + (0 if inclusive_of_start else 1)
        high = _ALL if stop is None else stop
        store = self.store
        with _translated(), store._tx.lock:
            conn = store._tx.open()
            if topics:
                rows: list[Any] = conn.execute(
                    store._sql.ES_NOTIFICATIONS_OF_TOPICS,
                    (low, high, msgspec.json.encode(list(topics)).decode(), limit),
                ).fetchall()
            else:
                rows = conn.execute(store._sql.ES_NOTIFICATIONS, (low, high, limit)).fetchall()
        originators: dict[str, UUID | str] = {}  # one UUID object per stream in the page
        notifications = []
        for position, aggregate_id, aggregate_type, version, topic, data in rows:
            is_uuid, base = _stream(aggregate_type)
            originator = originators.get(aggregate_id)
            if originator is None:
                originator = originators[aggregate_id] = _originator(aggregate_id, is_uuid)
            # Notification(originator_id, originator_version, topic, state, id)
            notifications.append(Notification(originator, version + base - 1, topic, _state(data), position))
        return notifications

    def max_notification_id(self) -> int | None:
        with _translated():
            return self.store.head()[0] or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> MiniesSubscription:
        return MiniesSubscription(self, gt=gt, topics=topics)


class MiniesSubscription(ListenNotifySubscription[MiniesApplicationRecorder]):
    """Notifications as they are recorded, by this process or any other.

    The library's pull thread reads a page whenever it is told something changed; a second
    thread tells it, woken by this store's commits at once and by other connections' commits
    through the backend's commit counter (as ``Subscription.follow`` is).
    """

    def __init__(self, recorder: MiniesApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._watcher = threading.Thread(target=self._watch, name="minies-subscription", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        try:
            for _ in self._recorder.store._tx.wakeups(lambda: self._has_been_stopped, 0.1):
                self._has_been_notified.set()
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = e
            self.stop()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._watcher.join()


class MiniesRecordsRecorder(MiniesRecorder, AggregateRecorder):
    """Records that are not a gap-free stream (the library's snapshots), in a side table
    ``eventsourcing_<purpose>``: kept for speed, outside the hash chain."""

    def __init__(self, store: EventStore, purpose: str = "snapshots") -> None:
        super().__init__(store)
        if not _PURPOSE.fullmatch(purpose):
            raise ProgrammingError(f"purpose must be a lowercase SQL name, got {purpose!r:.80}")
        self.table = f"eventsourcing_{purpose}"

    def create_table(self) -> None:
        self._create(self.store._sql.ES_CREATE_RECORDS, self.table)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        rows = [
            (*_id_text(e.originator_id), _version(e.originator_version), _topic(e.topic), bytes(e.state))
            for e in stored_events
        ]
        store = self.store
        statement = store._sql.ES_INSERT_RECORD.format(table=self.table)

        def work() -> None:
            try:
                store._conn.executemany(statement, rows)
            except store._conn.Error as e:
                if store._backend.conflict(e, self.table):
                    raise IntegrityError(
                        f"{self.table} already holds one of these records; nothing was written"
                    ) from None
                raise

        if rows:
            with _translated():
                store._tx.grouped(work)
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        aggregate_id, _ = _id_text(originator_id)
        store = self.store
        statement = store._sql.ES_RECORDS.format(table=self.table, order="DESC" if desc else "ASC")
        low = -_ALL if gt is None else gt
        high = _ALL if lte is None else lte
        with _translated(), store._tx.lock:
            bounds = (aggregate_id, low, high, _ALL if limit is None else limit)
            rows: list[Any] = store._tx.open().execute(statement, bounds).fetchall()
        return [
            StoredEvent(_originator(aggregate_id, id_type == "uuid"), version, topic, bytes(state))
            for version, topic, state, id_type in rows
        ]


class MiniesTrackingRecorder(MiniesRecorder, TrackingRecorder):
    """How far an application has processed each upstream application's notifications."""

    def create_table(self) -> None:
        self._create(self.store._sql.ES_CREATE_TRACKING)

    def insert_tracking(self, tracking: Tracking) -> None:
        store = self.store
        with _translated():
            store._tx.grouped(lambda: self._track(store, tracking))

    @staticmethod
    def _track(store: EventStore, tracking: Tracking) -> None:
        """Move the tracking id forward (the caller holds the store inside a write)."""
        conn = store._conn
        conn.execute(store._sql.ES_TRACK, (tracking.application_name, tracking.notification_id))
        if not conn.changes():
            raise IntegrityError(
                f"application {tracking.application_name!r} is already tracked at or after notification "
                f"{tracking.notification_id}; nothing was written"
            )

    def max_tracking_id(self, application_name: str) -> int | None:
        store = self.store
        with _translated(), store._tx.lock:
            value = store._tx.open().execute(store._sql.ES_TRACKED, (application_name,)).fetchone()
        return None if value is None else int(value[0])


class MiniesProcessRecorder(MiniesTrackingRecorder, MiniesApplicationRecorder, ProcessRecorder):
    """Events and tracking, written in one transaction: each upstream notification is
    processed exactly once."""

    def create_table(self) -> None:
        MiniesTrackingRecorder.create_table(self)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._insert(stored_events, kwargs.get("tracking"))


def _version(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"originator_version must be an int, got {value!r:.80}")
    return value


def _topic(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or "," in value:
        raise DataError(f"topic must be a non-empty str without NUL or commas, got {value!r:.80}")
    return value


def _runs(stored_events: Sequence[StoredEvent]) -> list[tuple[str, str, int, list[str], list[str]]]:
    """Consecutive events of one originator, as ``(id, id type, first version, topics, datas)``:
    each run is one minies append, in the order given (so positions follow the input)."""
    runs: list[tuple[str, str, int, list[str], list[str]]] = []
    topics: list[str]  # of the current run
    datas: list[str]
    last_id: object = None
    last_version = 0
    checked: set[str] = set()  # topics repeat: check each once
    for event in stored_events:
        version = event.originator_version
        if type(version) is not int:
            _version(version)
        topic = event.topic
        if topic not in checked:
            checked.add(_topic(topic))
        state = event.state
        if event.originator_id == last_id and last_id is not None:
            if version != last_version + 1:
                error = IntegrityError if version <= last_version else DataError
                raise error(
                    f"originator {runs[-1][0]!r}: version {version} follows {last_version} in one batch; "
                    "versions must be consecutive; nothing was written"
                )
        else:
            last_id = event.originator_id
            topics, datas = [], []
            runs.append((*_id_text(last_id), version, topics, datas))
        topics.append(topic)
        datas.append(_data(state if type(state) is bytes else bytes(state)))
        last_version = version
    return runs


# ---------------------------------------------------------------------------- the factory
class Factory(InfrastructureFactory[MiniesTrackingRecorder]):
    """The library's entry point: ``PERSISTENCE_MODULE=minies.eventsourcing``."""

    MINIES_PATH = "MINIES_PATH"
    MINIES_DURABILITY = "MINIES_DURABILITY"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class = MiniesAggregateRecorder
    application_recorder_class = MiniesApplicationRecorder
    tracking_recorder_class = MiniesTrackingRecorder
    process_recorder_class = MiniesProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        path = self.env.get(self.MINIES_PATH)
        if not path:
            keys = ", ".join(self.env.create_keys(self.MINIES_PATH))
            raise OSError(f"minies: set the file (or PostgreSQL URL) in the environment, with one of: {keys}")
        durability = self.env.get(self.MINIES_DURABILITY) or "full"
        try:
            self.store = EventStore(path, durability=cast(Any, durability))
        except ValueError as e:
            raise OSError(f"minies: {self.MINIES_DURABILITY}: {e}") from None
        except MiniesError as e:
            raise OperationalError(str(e)) from e

    def _made(self, recorder: MiniesRecorder) -> Any:
        if strtobool(self.env.get(self.CREATE_TABLE) or "yes"):
            recorder.create_table()
        return recorder

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "events":
            return cast(AggregateRecorder, self._made(self.aggregate_recorder_class(self.store)))
        return cast(AggregateRecorder, self._made(MiniesRecordsRecorder(self.store, purpose)))

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._topic_or(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        return cast(ApplicationRecorder, self._made(cls(self.store)))

    def tracking_recorder(
        self, tracking_recorder_class: type[MiniesTrackingRecorder] | None = None
    ) -> MiniesTrackingRecorder:
        cls = tracking_recorder_class or self._topic_or(self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class)
        return cast(MiniesTrackingRecorder, self._made(cls(self.store)))

    def process_recorder(self) -> ProcessRecorder:
        cls = self._topic_or(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        return cast(ProcessRecorder, self._made(cls(self.store)))

    def _topic_or(self, key: str, default: type[Any]) -> type[Any]:
        topic = self.env.get(key)
        cls = resolve_topic(topic) if topic else default
        if not (isinstance(cls, type) and issubclass(cls, MiniesRecorder)):
            raise ProgrammingError(f"{key}={topic!r} is not a minies recorder class")
        return cls

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.close()

    def close(self) -> None:
        self.store.close()
