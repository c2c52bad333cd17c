"""The `eventsourcing` library's own test cases for a persistence module, run on minies.

Each case is subclassed unmodified, on a file and on PostgreSQL, with UUID and text
originator ids where the case allows. After every test, every log it wrote must verify.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pgserver
import pytest
from eventsourcing.persistence import (
    ApplicationRecorder,
    DataError,
    IntegrityError,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.tests import application, persistence, projection  # (modules: pytest collects only ours)
from eventsourcing.utils import Environment

import minies
from minies import MiniesError
from minies.eventsourcing import (
    Factory,
    MiniesAggregateRecorder,
    MiniesApplicationRecorder,
    MiniesProcessRecorder,
    MiniesRecordsRecorder,
    MiniesTrackingRecorder,
)


def verified(location: str) -> None:
    """The log verifies, if the test wrote one there."""
    if not location.startswith("postgresql:") and not Path(location).exists():
        return
    try:
        store = minies.EventStore(location, readonly=True)
    except minies.SchemaError as e:
        assert "holds no minies log" in str(e)  # a schema the test never wrote to
        return
    with store:
        report = store.verify()
    assert report.ok, (location, report)


class OnMinies:
    """Each test gets an empty log (a file, or a fresh PostgreSQL schema), verified after."""

    __test__ = False
    on: ClassVar[str] = "sqlite"
    location: str
    locations: list[str]

    @pytest.fixture(autouse=True)
    def _log(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
        self._request = request
        self.tmp = tmp_path
        self.locations = []
        self.location = self.new_location()
        yield
        for location in self.locations:
            verified(location)

    def new_location(self) -> str:
        if self.on == "postgres":
            location = pgserver.fresh_schema(self._request.getfixturevalue("pg_dsn"))
        else:
            location = str(self.tmp / f"log{len(self.locations)}.db")
        self.locations.append(location)
        return location


class Recorders(OnMinies):
    factories: list[Factory]

    def factory(self, **env: str) -> Factory:
        factory = Factory(Environment(env={"MINIES_PATH": self.location, **env}))
        self.factories.append(factory)
        return factory

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.factories = []

    def tearDown(self) -> None:
        for factory in self.factories:
            factory.close()
        super().tearDown()  # type: ignore[misc]


class TextIds:
    def new_originator_id(self) -> UUID | str:
        return f"account-{uuid4().hex}"


class UUIDIds:
    def new_originator_id(self) -> UUID | str:
        return uuid4()


# ---------------------------------------------------------------------------- recorders
class AggregateRecorderCase(Recorders, persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().aggregate_recorder()


class SnapshotRecorderCase(Recorders, persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> Any:
        recorder = self.factory().aggregate_recorder("snapshots")
        assert isinstance(recorder, MiniesRecordsRecorder)
        return recorder


class ApplicationRecorderCase(Recorders, persistence.ApplicationRecorderTestCase[ApplicationRecorder]):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TrackingRecorderCase(Recorders, persistence.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory().tracking_recorder()


class ProcessRecorderCase(Recorders, persistence.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory().process_recorder()


class NonInterleavingCase(Recorders, persistence.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()


class TrackingRecorderSubclass(MiniesTrackingRecorder):
    pass


class FactoryCase(OnMinies, persistence.InfrastructureFactoryTestCase[Factory]):
    def setUp(self) -> None:
        self.env = Environment("TestCase", {"PERSISTENCE_MODULE": "minies.eventsourcing", "MINIES_PATH": self.location})
        super().setUp()

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[Any]:
        return MiniesAggregateRecorder

    def expected_application_recorder_class(self) -> type[Any]:
        return MiniesApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[Any]:
        return MiniesTrackingRecorder

    def tracking_recorder_subclass(self) -> type[Any]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[Any]:
        return MiniesProcessRecorder


# ---------------------------------------------------------------------------- applications
class InEnvironment(OnMinies):
    """The library reads its settings from os.environ: set them for one test."""

    extra: ClassVar[dict[str, str]] = {}

    def setUp(self) -> None:
        self.saved = dict(os.environ)
        os.environ["PERSISTENCE_MODULE"] = "minies.eventsourcing"
        os.environ["MINIES_PATH"] = self.location
        for key, name in self.extra.items():
            os.environ[key] = getattr(self, name)()
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        os.environ.clear()
        os.environ.update(self.saved)


class ApplicationCase(InEnvironment, application.ApplicationTestCase):
    # test_application_log records a DeprecationWarning, which this suite otherwise raises.
    pytestmark = pytest.mark.filterwarnings("always::DeprecationWarning")


class ExampleApplicationCase(InEnvironment, application.ExampleApplicationTestCase):
    expected_factory_topic = "minies.eventsourcing:Factory"


class EventSourcedProjectionCase(InEnvironment, projection.EventSourcedProjectionTestCase):
    # The projection is an application of its own: its own log.
    extra: ClassVar[dict[str, str]] = {"COUNTERS_MINIES_PATH": "new_location"}


# ---------------------------------------------------------------------------- the matrix
def _cases() -> dict[str, type]:
    made: dict[str, type] = {}
    with_ids = (
        AggregateRecorderCase,
        SnapshotRecorderCase,
        ApplicationRecorderCase,
        ProcessRecorderCase,
        NonInterleavingCase,
    )
    without = (TrackingRecorderCase, FactoryCase, ApplicationCase, ExampleApplicationCase, EventSourcedProjectionCase)
    for on, suffix in (("sqlite", "OnFile"), ("postgres", "OnPostgres")):
        for case in with_ids:
            for ids in (UUIDIds, TextIds):
                name = f"Test{case.__name__.removesuffix('Case')}{ids.__name__}{suffix}"
                made[name] = type(name, (ids, case), {"on": on, "__test__": True})
        for case in without:
            name = f"Test{case.__name__.removesuffix('Case')}{suffix}"
            made[name] = type(name, (case,), {"on": on, "__test__": True})
    return made


globals().update(_cases())


# ---------------------------------------------------------------------------- minies' own promises
def _recorder(location: str) -> tuple[Factory, Any]:
    factory = Factory(Environment(env={"MINIES_PATH": location}))
    return factory, factory.process_recorder()


STATES = [
    b'{"name":"Alice","balance":{"_type_":"decimal_str","_data_":"10.00"}}',
    b'{"$bytes":"not a wrapped state"}',  # a JSON object that looks like minies' wrapping
    b"state1",
    zlib.compress(b'{"name":"Alice"}'),
    b'{"a":1} trailing',
    b"\xff\xfe{}",
    b"",
    b"[1,2]",
    b'{"a":"\\u0000"}',
]


def test_states_round_trip_byte_for_byte_and_json_states_stay_queryable(location: str) -> None:
    factory, recorder = _recorder(location)
    with factory:
        originator = uuid4()
        events = [StoredEvent(originator, k + 1, "bank:Account.Changed", state) for k, state in enumerate(STATES)]
        assert recorder.insert_events(events) == list(range(1, len(STATES) + 1))
        assert [e.state for e in recorder.select_events(originator)] == STATES
        assert [n.state for n in recorder.select_notifications(None, 100)] == STATES
    if location.startswith("postgresql:"):
        return
    with contextlib.closing(sqlite3.connect(location)) as db:  # the stock module reads the file
        assert db.execute("SELECT json_extract(data, '$.name') FROM events WHERE version = 1").fetchone() == ("Alice",)
        wrapped = db.execute("SELECT json_extract(data, '$.\"$bytes\"') FROM events WHERE version = 3").fetchone()[0]
        assert base64.b64decode(wrapped) == b"state1"
        assert db.execute("SELECT DISTINCT schema_version FROM events").fetchall() == [(1,)]  # never upcast
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            db.execute("UPDATE events SET data = '{}' WHERE version = 1")


def test_version_gaps_are_refused_and_nothing_is_written(location: str) -> None:
    factory, recorder = _recorder(location)
    with factory:
        originator = uuid4()
        recorder.insert_events([StoredEvent(originator, 0, "t", b"{}")])
        with pytest.raises(DataError, match="is at version 0: version 2 would leave a gap, which minies refuses"):
            recorder.insert_events([StoredEvent(uuid4(), 1, "t", b"{}"), StoredEvent(originator, 2, "t", b"{}")])
        consecutive = (
            f"originator '{originator}': version 3 follows 1 in one batch; versions must be consecutive; nothing"
        )
        with pytest.raises(DataError, match=consecutive):
            recorder.insert_events([StoredEvent(originator, 1, "t", b"{}"), StoredEvent(originator, 3, "t", b"{}")])
        with pytest.raises(
            IntegrityError, match=r"is at version 0: version 0 is already recorded; nothing was written"
        ):
            recorder.insert_events([StoredEvent(originator, 0, "t", b"{}")])
        assert recorder.max_notification_id() == 1
        assert recorder.insert_events([StoredEvent(originator, 1, "t", b"{}")]) == [2]
        assert [e.originator_version for e in recorder.select_events(originator)] == [0, 1]
        assert [e.originator_version for e in recorder.select_events(originator, gt=0)] == [1]
        assert [e.originator_version for e in recorder.select_events(originator, lte=0)] == [0]
        from_one = uuid4()
        recorder.insert_events([StoredEvent(from_one, 1, "t", b"{}")])
        with pytest.raises(IntegrityError, match="begins at version 1: version 0 is before it; nothing was written$"):
            recorder.insert_events([StoredEvent(from_one, 0, "t", b"{}")])
        with pytest.raises(DataError, match="is at version 1: version 3 would leave a gap"):
            recorder.insert_events([StoredEvent(from_one, 3, "t", b"{}")])
        for bad in (True, 1.0, "2"):
            with pytest.raises(DataError, match=f"originator_version must be an int, got {bad!r}"):
                recorder.insert_events([StoredEvent(from_one, bad, "t", b"{}")])  # type: ignore[arg-type]
        # minies numbers the stream from 1; its type records where the library's versions began.
        assert [(v, t) for _, _, t, v in _rows(factory.store)] == [
            (1, "eventsourcing:uuid:0"),
            (2, "eventsourcing:uuid:0"),
            (1, "eventsourcing:uuid:1"),
        ]


def test_snapshots_live_in_their_side_table(location: str) -> None:
    factory, _ = _recorder(location)
    with factory:
        snapshots = factory.aggregate_recorder("snapshots")
        snapshot = StoredEvent(uuid4(), 7, "bank:Account.Snapshot", b"state")
        snapshots.insert_events([snapshot])
        with pytest.raises(IntegrityError, match="eventsourcing_snapshots already holds one of these records"):
            snapshots.insert_events([StoredEvent(uuid4(), 1, "t", b""), snapshot])
        assert snapshots.select_events(snapshot.originator_id, desc=True, limit=1) == [snapshot]
        assert factory.store.head()[0] == 0  # not in the log
    if not location.startswith("postgresql:"):
        with contextlib.closing(sqlite3.connect(location)) as db:
            assert db.execute("SELECT originator_version, state FROM eventsourcing_snapshots").fetchall() == [
                (7, b"state")
            ]


def _rows(store: minies.EventStore) -> list[tuple[int, str, str, int]]:
    return [(r.position, r.aggregate_id, r.aggregate_type, r.version) for r in store.read_all(raw=True)]


def test_ids_come_back_with_the_type_they_went_in_as(location: str) -> None:
    factory, recorder = _recorder(location)
    with factory:
        as_uuid, as_text = uuid4(), str(uuid4())  # text that looks like a UUID stays text
        recorder.insert_events([StoredEvent(as_uuid, 1, "t", b"{}"), StoredEvent(as_text, 1, "t", b"{}")])
        got = [n.originator_id for n in recorder.select_notifications(None, 10)]
        assert got == [as_uuid, as_text] and [type(i) for i in got] == [UUID, str]
        assert recorder.select_events(as_text)[0].originator_id == as_text
        assert recorder.select_events(as_uuid, gt=0, lte=1)[0].originator_id == as_uuid


def test_a_batch_across_originators_is_atomic_and_positions_follow_the_input(location: str) -> None:
    factory, recorder = _recorder(location)
    with factory:
        a, b = uuid4(), uuid4()
        recorder.insert_events([StoredEvent(b, 1, "t", b"{}")])
        with pytest.raises(IntegrityError, match="already recorded"):
            recorder.insert_events([StoredEvent(a, 1, "t", b"{}"), StoredEvent(b, 1, "t", b"{}")])
        assert recorder.select_events(a) == [] and recorder.max_notification_id() == 1
        ids = recorder.insert_events(
            [StoredEvent(a, 1, "t", b"{}"), StoredEvent(b, 2, "t", b"{}"), StoredEvent(a, 2, "t", b"{}")],
            tracking=Tracking("upstream", 7),
        )
        assert ids == [2, 3, 4] and recorder.max_tracking_id("upstream") == 7
        with pytest.raises(IntegrityError, match="already tracked"):  # events and tracking: all or nothing
            recorder.insert_events([StoredEvent(a, 3, "t", b"{}")], tracking=Tracking("upstream", 7))
        assert len(recorder.select_events(a)) == 2


WRITER = """
import sys, uuid
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment
from minies.eventsourcing import Factory
with Factory(Environment(env={"MINIES_PATH": sys.argv[1]})) as factory:
    factory.application_recorder().insert_events([StoredEvent(uuid.uuid4(), 1, "from.another:Process", b"{}")])
"""


def test_a_subscription_is_woken_by_another_process(location: str) -> None:
    factory, recorder = _recorder(location)
    with factory, recorder.subscribe(gt=None) as subscription:
        subprocess.run([sys.executable, "-c", WRITER, location], check=True, timeout=60)
        deadline = time.monotonic() + 30
        for notification in subscription:  # blocks until the other process's commit is seen
            assert notification.topic == "from.another:Process" and time.monotonic() < deadline
            break


def test_a_subscription_whose_store_fails_raises_instead_of_ending_quietly(tmp_path: Path) -> None:
    factory, recorder = _recorder(str(tmp_path / "a.db"))
    with recorder.subscribe(gt=None) as subscription:
        factory.close()  # the watcher's next look at the log fails
        with pytest.raises((MiniesError, DataError), match="the store is closed"):  # (the watcher's, or the puller's)
            next(subscription)


def test_settings_are_checked_with_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(
        OSError, match="PostgreSQL URL\\) in the environment, with one of: BANK_MINIES_PATH, MINIES_PATH$"
    ):
        Factory(Environment("Bank", {}))
    with pytest.raises(OSError, match="MINIES_DURABILITY: durability must be 'full' or 'normal'"):
        Factory(Environment(env={"MINIES_PATH": str(tmp_path / "a.db"), "MINIES_DURABILITY": "fast"}))
    (tmp_path / "other.db").write_bytes(b"not a database, just bytes" * 200)
    with pytest.raises(OperationalError, match="it is not a SQLite database"):
        Factory(Environment(env={"MINIES_PATH": str(tmp_path / "other.db")}))
    with Factory(Environment(env={"MINIES_PATH": str(tmp_path / "a.db")})) as factory:
        with pytest.raises(ProgrammingError, match="purpose must be a lowercase SQL name"):
            factory.aggregate_recorder("snapshots; DROP TABLE events")
        for bad_topic in ("a,b", "a\x00b", "", 5):
            with pytest.raises(DataError, match="topic must be a non-empty str without NUL or commas, got "):
                factory.application_recorder().insert_events([StoredEvent("a", 1, bad_topic, b"{}")])  # type: ignore[arg-type]
        for bad_id in (42, "", "a\x00b"):
            with pytest.raises(DataError, match="originator_id must be a UUID or a non-empty str"):
                factory.application_recorder().insert_events([StoredEvent(bad_id, 1, "t", b"{}")])  # type: ignore[arg-type]


def test_the_cli_verifies_an_application_s_file(tmp_path: Path) -> None:
    path = str(tmp_path / "bank.db")
    os.environ["MINIES_PATH"] = path  # the example application reads its settings from here
    try:
        with application.BankAccounts(env={"PERSISTENCE_MODULE": "minies.eventsourcing"}) as app:
            account = app.open_account("Alice", "alice@example.com")
            app.credit_account(account, Decimal("10.00"))
    finally:
        del os.environ["MINIES_PATH"]
    done = subprocess.run([sys.executable, "-m", "minies", "verify", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ok: 2 events verified"), done.stdout + done.stderr
    for command in ("info", "events"):
        done = subprocess.run(
            [sys.executable, "-m", "minies", command, path], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and "eventsourcing.tests.doma" in done.stdout, done.stdout  # (events cuts it)


def test_settings_choose_the_side_tables_and_the_recorder_classes(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    with Factory(Environment(env={"MINIES_PATH": path, "CREATE_TABLE": "no"})) as factory:
        factory.tracking_recorder()
        factory.aggregate_recorder("snapshots")
        factory.application_recorder().insert_events([StoredEvent(uuid4(), 1, "t", b"{}")])
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "events" in tables and not {"eventsourcing_tracking", "eventsourcing_snapshots"} & tables
    env = {"MINIES_PATH": ":memory:", "APPLICATION_RECORDER_TOPIC": "eventsourcing.sqlite:SQLiteApplicationRecorder"}
    with (
        Factory(Environment(env=env)) as factory,
        pytest.raises(ProgrammingError, match="APPLICATION_RECORDER_TOPIC=.* is not a minies recorder class"),
    ):
        factory.application_recorder()
    with Factory(Environment(env={"MINIES_PATH": ":memory:"})) as factory:
        assert factory.application_recorder().insert_events([StoredEvent("a", 1, "t", b"{}")]) == [1]
