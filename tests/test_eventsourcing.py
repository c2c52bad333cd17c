"""The `eventsourcing` library's own test cases for a persistence module, run on minies.

Each case is subclassed unmodified, on a file and on PostgreSQL, with UUID and text
originator ids where the case allows. After every test, every log it wrote must verify.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pgserver
import pytest
from eventsourcing.persistence import ApplicationRecorder, ProcessRecorder, TrackingRecorder
from eventsourcing.tests import application, persistence, projection  # (modules: pytest collects only ours)
from eventsourcing.utils import Environment

import minies
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
