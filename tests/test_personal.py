"""Personal data: sealed per data subject, forgotten by destroying the subject's key."""

from __future__ import annotations

import binascii
import csv
import enum
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pgserver
import pytest
from conftest import run_python
from hypothesis import given, settings
from hypothesis import strategies as st

import minies
from minies import _personal, _replay


class PersonSignedUp(minies.Event):
    data_subject: ClassVar[str] = "customer_id"
    customer_id: str
    email: minies.Personal[str] = ""
    name: minies.Personal[str] = ""
    plan: str = "free"


class PersonEmailChanged(minies.Event):
    data_subject: ClassVar[str] = "customer_id"
    customer_id: str
    email: minies.Personal[str] = ""


class PatientNoteAdded(minies.Event):  # the subject is the aggregate id
    note: minies.Personal[str] = ""
    ward: int = 0


class Customer(minies.Aggregate):
    snapshot_every: ClassVar[int] = 2
    email: str = ""
    name: str = ""
    changes: int = 0

    def apply(self, event: minies.Event) -> None:
        match event:
            case PersonSignedUp(email=email, name=name):
                self.email, self.name = email, name
            case PersonEmailChanged(email=email):
                self.email = email
                self.changes += 1


class Emails(minies.Projection):
    name = "emails"
    table: ClassVar[str] = "emails"

    def setup(self, db: minies.Database) -> None:
        db.execute(f"CREATE TABLE {self.table} (customer_id TEXT PRIMARY KEY, email TEXT NOT NULL)")

    def on_PersonSignedUp(self, db: minies.Database, r: minies.Recorded) -> None:
        db.execute(f"INSERT INTO {self.table} VALUES (?, ?)", (r.data.customer_id, r.data.email))

    def on_PersonEmailChanged(self, db: minies.Database, r: minies.Recorded) -> None:
        db.execute(f"UPDATE {self.table} SET email = ? WHERE customer_id = ?", (r.data.email, r.data.customer_id))


class EmailsWithHook(Emails):
    """The same read model, cleaned by its own ``forget`` instead of a rebuild."""

    name = "emails_hooked"
    table: ClassVar[str] = "emails_hooked"
    forgotten: ClassVar[list[str]] = []

    def forget(self, db: minies.Database, subject: str) -> bool:
        db.execute("DELETE FROM emails_hooked WHERE customer_id = ?", (subject,))
        EmailsWithHook.forgotten.append(subject)
        return True


class Plans(minies.Projection):  # sees no personal type: not rebuilt by a forget
    name = "plans"
    event_types = ("minies.SubjectForgotten",)

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE plans (n INTEGER)")

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO plans VALUES (1)")


def register(store: minies.EventStore, customer: str, email: str, name: str = "Ann Example") -> None:
    store.append(
        customer,
        [PersonSignedUp(customer_id=customer, email=email, name=name, plan="pro")],
        aggregate_type="Customer",
    )


def stored_data(store: minies.EventStore) -> list[str]:
    return [row[0] for row in store.query("SELECT CAST(data AS TEXT) FROM events ORDER BY position")]


# ---------------------------------------------------------------------------- declaring


def test_a_personal_field_needs_a_default_it_reads_as_once_forgotten() -> None:
    with pytest.raises(
        minies.SchemaError,
        match=r"\.NoDefault.email is personal but has no default: give it one \(e.g. '' or None\), the value every "
        r"read shows once its subject is forgotten$",
    ):

        class NoDefault(minies.Event):
            email: minies.Personal[str]


def test_data_subject_must_name_a_plain_field_of_the_class() -> None:
    with pytest.raises(minies.SchemaError, match=r"data_subject = 'who' does not name a field"):

        class Unknown(minies.Event):
            data_subject: ClassVar[str] = "who"
            email: minies.Personal[str] = ""

    with pytest.raises(minies.SchemaError, match=r"names a personal field; the subject's id must be plain"):

        class Itself(minies.Event):
            data_subject: ClassVar[str] = "email"
            email: minies.Personal[str] = ""

    with pytest.raises(minies.SchemaError, match=r"data_subject is set, but no field is Personal"):

        class Nothing(minies.Event):
            data_subject: ClassVar[str] = "customer_id"
            customer_id: str


def test_the_whole_field_is_personal_not_one_arm_of_a_union() -> None:
    with pytest.raises(
        minies.SchemaError,
        match=r"\.Half.email: write Personal\[X \| None\], not Personal\[X\] \| None \(the whole field is personal\)$",
    ):

        class Half(minies.Event):
            email: minies.Personal[str] | None = None


def test_without_the_crypto_extra_a_personal_class_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(
        minies.PersonalDataError,
        match=r'^personal fields are encrypted with the cryptography package: pip install "minies\[crypto\]"$',
    ):

        class NeedsCrypto(minies.Event):
            email: minies.Personal[str] = ""

    assert "NeedsCrypto" not in minies._events.registry


def test_a_plain_value_shaped_like_a_sealed_one_is_refused(store: minies.EventStore) -> None:
    bad = PersonSignedUp(customer_id="c1", plan="minies-sealed:v1:abc:def")
    with pytest.raises(
        ValueError,
        match=r"^PersonSignedUp holds a string starting with 'minies-sealed:v1:', which minies reserves for sealed personal "
        "data; nothing was written$",
    ):
        store.append("c1", [bad], aggregate_type="Customer")
    assert store.head() == (0, "")


# ---------------------------------------------------------------------------- sealing and reading


@pytest.mark.parametrize("reads", ["upcasting", "plain"])
def test_personal_fields_are_sealed_in_the_file_and_read_back_on_every_path(
    store: minies.EventStore, reads: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("no_upcasting" if reads == "plain" else "upcasting_on")
    assert store._read_view()[0] == (reads == "upcasting")
    register(store, "c1", "ann@example.com")
    store.append("c1", [PersonEmailChanged(customer_id="c1", email="ann@new.example")], aggregate_type="Customer")
    for data in stored_data(store):
        assert "ann@" not in data and "Ann Example" not in data and "minies-sealed:v1:" in data
    # the plain fields stay queryable in SQL
    plan = "SELECT json_extract(data, '$.plan') FROM events WHERE position = 1"
    if store.path.startswith("postgres"):
        plan = "SELECT data::json ->> 'plan' FROM events WHERE position = 1"
    assert store.query(plan) == [("pro",)]

    expected = PersonSignedUp(customer_id="c1", email="ann@example.com", name="Ann Example", plan="pro")
    assert next(iter(store.read("c1"))).data == expected
    assert [r.data for r in store.read_all(limit=1)] == [expected]
    assert [r.data for r in store.read_all(event_types=[PersonSignedUp])] == [expected]
    assert next(iter(store.read_all(raw=True))).data == msgspec.to_builtins(expected)
    customer = store.load(Customer, "c1")
    assert (customer.email, customer.name, customer.changes) == ("ann@new.example", "Ann Example", 1)
    delivered: list[Any] = []
    store.subscription("mailer").poll(lambda r: delivered.append(r.data), limit=10)
    assert delivered[0] == expected
    assert minies.forgotten(delivered[0]) == frozenset()


def test_a_snapshot_and_a_projection_see_the_plaintext(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Emails()]) as store:
        register(store, "c1", "ann@example.com")
        store.append("c1", [PersonEmailChanged(customer_id="c1", email="ann@new.example")], aggregate_type="Customer")
        assert store.query("SELECT email FROM emails") == [("ann@new.example",)]
        customer = store.load(Customer, "c1")
        customer.apply(PersonEmailChanged(customer_id="c1", email="x@y.z"))  # local only
    with minies.EventStore(db_path, projections=[Emails()]) as store:
        store.rebuild("emails")
        assert store.query("SELECT email FROM emails") == [("ann@new.example",)]


def test_the_subject_defaults_to_the_aggregate_id(store: minies.EventStore) -> None:
    store.append("patient-7", [PatientNoteAdded(note="allergic to penicillin", ward=3)], aggregate_type="Patient")
    assert store.query("SELECT subject FROM minies_keys") == [("patient-7",)]
    erasure = store.forget("patient-7")
    assert erasure.keys == 1
    [record, _] = store.read_all()
    assert record.data == PatientNoteAdded(note="", ward=3) and minies.forgotten(record) == {"note"}


def test_each_subject_has_one_key_and_an_empty_subject_is_refused(store: minies.EventStore) -> None:
    register(store, "c1", "a@x")
    register(store, "c2", "b@x")
    store.append("c1", [PersonEmailChanged(customer_id="c1", email="c@x")], aggregate_type="Customer")
    assert sorted(s for (s,) in store.query("SELECT subject FROM minies_keys")) == ["c1", "c2"]
    with pytest.raises(
        ValueError,
        match=r"^PersonSignedUp.customer_id = '' names the data subject: it must be a non-empty str; nothing was written$",
    ):
        store.append("c3", [PersonSignedUp(customer_id="", email="d@x")], aggregate_type="Customer")
    assert store.head()[0] == 3


def test_a_retry_with_the_same_ids_is_idempotent_and_a_different_payload_is_a_duplicate(location: str) -> None:
    ids = [str(uuid.uuid4())]
    event = PersonSignedUp(customer_id="c1", email="ann@example.com")
    with minies.EventStore(location) as store:
        assert store.append("c1", [event], aggregate_type="Customer", event_ids=ids) == 1
        assert store.append("c1", [event], aggregate_type="Customer", event_ids=ids) == 1
    with minies.EventStore(location) as store:  # a retry from another process: the key is read from the log
        assert store.append("c1", [event], aggregate_type="Customer", event_ids=ids) == 1
        other = PersonSignedUp(customer_id="c1", email="bob@example.com")
        with pytest.raises(minies.DuplicateEventError, match=r"by a different event"):
            store.append("c1", [other], aggregate_type="Customer", event_ids=ids)
        assert store.head()[0] == 1


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct, frozen=True):
    x: int
    y: float


class SealedEverything(minies.Event):
    text: minies.Personal[str] = ""
    number: minies.Personal[int] = 0
    real: minies.Personal[float] = 0.0
    flag: minies.Personal[bool] = False
    blob: minies.Personal[bytes] = b""
    maybe: minies.Personal[str | None] = None
    items: minies.Personal[list[int]] = []
    mapping: minies.Personal[dict[str, str]] = {}
    point: minies.Personal[Point | None] = None
    when: minies.Personal[datetime | None] = None
    colour: minies.Personal[Colour] = Colour.RED


@pytest.mark.parametrize(
    ("field", "value", "kind", "expected"),
    [
        ("text", ["Ann Secretname"], TypeError, "Expected `str`, got `array`"),
        ("number", "Ann Secretname", TypeError, "Expected `int`, got `str`"),
        ("mapping", {"Ann Secretname": 7777777}, TypeError, "Expected `str`, got `int`"),
        ("items", ["Ann Secretname"], TypeError, "Expected `int`, got `str`"),
        ("real", float("nan"), ValueError, "would not read back as itself"),
        ("point", {"x": 7777777, "y": 1}, TypeError, "Point"),
    ],
)
def test_an_error_about_a_personal_field_never_shows_its_value(
    minies_store: minies.EventStore, field: str, value: Any, kind: type[Exception], expected: str
) -> None:
    """It names the field and what the class expects (the check runs before any backend)."""
    store = minies_store
    event = SealedEverything(**{field: value})
    with pytest.raises(kind) as caught:
        store.append("p1", [event], aggregate_type="Patient")
    message = str(caught.value)
    assert message.startswith(f"SealedEverything.{field} (personal data, not shown) ") and expected in message
    assert "Secretname" not in message and "nan" not in message and "7777777" not in message
    assert store.head() == (0, "")


def plain_text(max_size: int | None = None) -> st.SearchStrategy[str]:
    """Any text but the shape of a sealed value, which minies refuses (a test below shows it)."""
    return st.text(max_size=max_size).filter(lambda s: not s.startswith(_personal.PREFIX))


everything = st.builds(
    SealedEverything,
    text=plain_text(),
    number=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    real=st.floats(allow_nan=False, allow_infinity=False),
    flag=st.booleans(),
    blob=st.binary(max_size=64),
    maybe=st.none() | plain_text(10),
    items=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
    mapping=st.dictionaries(plain_text(5), plain_text(5), max_size=3),
    point=st.none() | st.builds(Point, x=st.integers(-1000, 1000), y=st.floats(allow_nan=False, allow_infinity=False)),
    when=st.none() | st.datetimes(timezones=st.just(UTC)),
    colour=st.sampled_from(Colour),
)


@settings(max_examples=60, deadline=None)
@given(event=everything)
def test_personal_fields_of_every_type_round_trip_and_forget_to_their_defaults(event: SealedEverything) -> None:
    with minies.EventStore(":memory:") as store:
        store.append("s", [event], aggregate_type="Thing")
        assert "minies-sealed:v1:" in stored_data(store)[0]
        [record] = store.read_all()
        assert record.data == event
        assert next(iter(store.read_all(raw=True))).data == msgspec.to_builtins(event)
        store.forget("s")
        [record, _] = store.read_all()
        assert record.data == SealedEverything()
        assert minies.forgotten(record) == set(SealedEverything.__struct_fields__)
        assert store.verify().ok


# ---------------------------------------------------------------------------- forgetting


class EveryPosition(minies.Projection):
    """Sees every type (``handle_batch``, no ``event_types``) and has no ``forget`` hook, so a
    forget rebuilds it; its primary key refuses an event applied twice."""

    name = "every_position"

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE every_position (position INTEGER PRIMARY KEY)")

    def handle_batch(self, db: minies.Database, events: Sequence[minies.Recorded]) -> None:
        db.executemany("INSERT INTO every_position VALUES (?)", [(e.position,) for e in events])


def test_a_read_model_rebuilt_by_a_forget_holds_each_event_once(location: str) -> None:
    with minies.EventStore(location, projections=[EveryPosition()]) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
        store.forget("c1")  # inline: rebuilt with the erasure event, which is not applied again
        assert store.query("SELECT count(*), min(position), max(position) FROM every_position") == [(3, 1, 3)]
    with minies.EventStore(location) as other:  # meanwhile, a store without the read model forgets
        register(other, "c3", "cy@example.com")
        other.forget("c2")
    with minies.EventStore(location, projections=[EveryPosition()]) as store:  # caught up by a rebuild, once
        assert store.query("SELECT count(*), min(position), max(position) FROM every_position") == [(5, 1, 5)]
        register(store, "c4", "di@example.com")
        assert store.query("SELECT count(*), max(position) FROM every_position") == [(6, 6)]


def test_forget_then_everything_still_works_and_the_history_hashes_the_same(location: str) -> None:
    with minies.EventStore(location, projections=[Emails(), EmailsWithHook(), Plans()]) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com", name="Bob")
        customer = store.load(Customer, "c1")
        customer.record(PersonEmailChanged(customer_id="c1", email="ann@new.example"))
        store.save(customer)  # version 2: a snapshot
        assert store.query("SELECT count(*) FROM minies_snapshots WHERE aggregate_id = 'c1'") == [(1,)]
        head = store.head()
        EmailsWithHook.forgotten.clear()

        erasure = store.forget("c1", reason="GDPR request 17", metadata={"user_id": "dpo"})

        assert (erasure.subject, erasure.keys, erasure.snapshots_dropped) == ("c1", 1, ["c1"])
        assert erasure.projections == ["emails", "emails_hooked"] and erasure.position == head[0] + 1
        assert EmailsWithHook.forgotten == ["c1"]
        assert store.query("SELECT count(*) FROM minies_snapshots WHERE aggregate_id = 'c1'") == [(0,)]
        # the read models: rebuilt (no hook) and hooked; the other subject untouched
        assert sorted(store.query("SELECT customer_id, email FROM emails")) == [("c1", ""), ("c2", "bob@example.com")]
        assert store.query("SELECT customer_id, email FROM emails_hooked") == [("c2", "bob@example.com")]
        assert store.query("SELECT count(*) FROM plans") == [(1,)]  # saw the erasure event, no rebuild
        # reads, loads, verify
        records = list(store.read("c1"))
        assert records[0].data == PersonSignedUp(customer_id="c1", plan="pro")
        assert minies.forgotten(records[0]) == {"email", "name"} and minies.forgotten(records[1]) == {"email"}
        assert minies.forgotten(records[0].data) == {"email", "name"}
        customer = store.load(Customer, "c1")
        assert (customer.email, customer.name, customer.changes) == ("", "", 1)
        assert store.load(Customer, "c2").email == "bob@example.com"
        report = store.verify(expect_head=f"{head[0]} {head[1]}")
        assert report.ok, report.reason
        [erased] = store.read_all(after=head[0])
        assert erased.aggregate_id == minies.ERASURES and erased.metadata == {"user_id": "dpo"}
        assert erased.data == minies.SubjectForgotten(subject="c1", reason="GDPR request 17")
        assert store.info().forgotten_subjects == 1
        # a second forget finds nothing to destroy and writes nothing
        assert store.forget("c1").keys == 0 and store.head()[0] == head[0] + 1
        store.rebuild("emails")
        assert sorted(store.query("SELECT customer_id, email FROM emails")) == [("c1", ""), ("c2", "bob@example.com")]


def test_a_real_empty_value_is_not_reported_as_forgotten(store: minies.EventStore) -> None:
    register(store, "c1", "")
    register(store, "c2", "bob@x")
    store.forget("c2")
    first, second, _ = store.read_all()
    assert first.data.email == second.data.email == ""
    assert minies.forgotten(first) == frozenset() and minies.forgotten(second) == {"email", "name"}


def test_new_personal_data_of_a_forgotten_subject_gets_a_new_key(store: minies.EventStore) -> None:
    register(store, "c1", "old@x")
    store.forget("c1")
    store.append("c1", [PersonEmailChanged(customer_id="c1", email="new@x")], aggregate_type="Customer")
    customer = store.load(Customer, "c1")
    assert customer.email == "new@x"
    assert store.query("SELECT count(*), count(key) FROM minies_keys WHERE subject = 'c1'") == [(2, 1)]


def test_read_models_of_another_store_clean_themselves_when_they_next_open(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Emails()]) as store:
        register(store, "c1", "ann@example.com")
    with minies.EventStore(db_path) as bare:  # as `minies forget` does: no projections
        bare.forget("c1")
    with minies.EventStore(db_path, projections=[Emails()]) as store:
        assert store.query("SELECT email FROM emails") == [("",)]


class CountedEmails(Emails):
    """``Emails`` (cleaned by a rebuild), counting its rebuilds."""

    setups: ClassVar[int] = 0

    def setup(self, db: minies.Database) -> None:
        CountedEmails.setups += 1
        super().setup(db)


@pytest.mark.parametrize("forgotten_by", ["this store", "another store"])
def test_a_store_left_open_cleans_its_read_models_of_a_subject_another_store_forgot(
    location: str, forgotten_by: str
) -> None:
    """Its next append catches up over the erasure: it must clean, not just replay past it."""
    EmailsWithHook.forgotten.clear()
    with minies.EventStore(location, projections=[EmailsWithHook(), Emails()]) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
        if forgotten_by == "this store":
            store.forget("c1")
        else:
            with minies.EventStore(location) as other:
                other.forget("c1")
        register(store, "c3", "cy@example.com")
        assert store.query("SELECT customer_id, email FROM emails_hooked ORDER BY 1") == [
            ("c2", "bob@example.com"),
            ("c3", "cy@example.com"),
        ]
        assert store.query("SELECT customer_id, email FROM emails ORDER BY 1") == [
            ("c1", ""),
            ("c2", "bob@example.com"),
            ("c3", "cy@example.com"),
        ]
    assert EmailsWithHook.forgotten == ["c1"]


def test_catch_up_on_open_does_not_repeat_an_erasure_at_a_checkpoint(db_path: str) -> None:
    """A ``SubjectForgotten`` at a read model's checkpoint was applied: opening again runs no
    hook and no rebuild for it, whether more events followed or not."""
    EmailsWithHook.forgotten.clear()
    models = [EmailsWithHook(), CountedEmails()]
    with minies.EventStore(db_path, projections=models) as store:
        register(store, "c1", "ann@example.com")
        at = store.forget("c1").position
        assert store.info().projections[0][2] == at
    setups = CountedEmails.setups
    with minies.EventStore(db_path, projections=models):
        pass
    with minies.EventStore(db_path) as bare:
        register(bare, "c2", "bob@example.com")
    with minies.EventStore(db_path, projections=models) as store:
        assert store.query("SELECT customer_id FROM emails ORDER BY 1") == [("c1",), ("c2",)]
    assert EmailsWithHook.forgotten == ["c1"] and CountedEmails.setups == setups


FORGET_ELSEWHERE = """
import sys, minies
with minies.EventStore(sys.argv[1]) as store:
    store.forget("c1")
"""


def test_a_store_left_open_stops_opening_a_subject_that_another_process_forgot(location: str) -> None:
    with minies.EventStore(location) as store:
        store.append("c1", [PersonSignedUp(customer_id="c1", email="ann@example.com")], aggregate_type="Customer")
        for _ in range(2):  # (twice: the key is cached after the first read)
            assert [r.data.email for r in store.read_all()] == ["ann@example.com"]
        run_python(FORGET_ELSEWHERE, location)
        assert [r.data.email for r in store.read_all(event_types=[PersonSignedUp])] == [""]
        assert [r.data.email for r in store.read("c1")] == [""]


def test_a_forget_inside_a_transaction_that_fails_changes_nothing(store: minies.EventStore) -> None:
    register(store, "c1", "ann@example.com")
    with pytest.raises(RuntimeError, match="changed my mind"), store.transaction():
        store.forget("c1")
        raise RuntimeError("changed my mind")
    assert next(iter(store.read("c1"))).data.email == "ann@example.com"
    assert store.info().forgotten_subjects == 0 and store.head()[0] == 1


class BrokenHook(Emails):
    """A read model whose ``forget`` hook runs SQL that fails."""

    name = "broken_hook"
    table: ClassVar[str] = "broken_hook"

    def forget(self, db: minies.Database, subject: str) -> bool:
        db.execute("DELETE FROM no_such_table WHERE customer_id = ?", (subject,))
        return True


def test_a_forget_hook_that_fails_names_its_read_model_and_changes_nothing(location: str) -> None:
    with minies.EventStore(location, projections=[BrokenHook()]) as store:
        register(store, "c1", "ann@example.com")
        with pytest.raises(
            minies.ProjectionError,
            match=r"^projection 'broken_hook': forget\('c1'\) failed: (SQLError: no such table: no_such_table"
            r"|UndefinedTable: relation \"no_such_table\" does not exist)",
        ) as caught:
            store.forget("c1")
        assert caught.value.projection == "broken_hook"
        assert next(iter(store.read("c1"))).data.email == "ann@example.com"
        assert store.info().forgotten_subjects == 0 and store.head()[0] == 1
        assert store.query("SELECT * FROM broken_hook") == [("c1", "ann@example.com")]


def _scan(paths: list[Path], secrets: list[bytes]) -> list[tuple[str, bytes]]:
    found = []
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # (a file another test's server session just dropped)
            continue
        found += [(path.name, s) for s in secrets if s in data]
    return found


def test_after_forget_neither_the_key_nor_any_plaintext_is_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    email, old_email, name = b"ann.secret@example.com", b"ann.older@example.com", b"Annabel Secretname"
    with minies.EventStore(str(path), projections=[Emails(), EmailsWithHook()]) as store:
        store.append(
            "c1",
            [PersonSignedUp(customer_id="c1", email=old_email.decode(), name=name.decode())],
            aggregate_type="Customer",
        )
        for i in range(6):  # snapshots written and pruned, read-model rows updated in place
            customer = store.load(Customer, "c1")
            customer.record(PersonEmailChanged(customer_id="c1", email=f"{i}{email.decode()}"[1 if i == 5 else 0 :]))
            store.save(customer)
        assert store.query("SELECT count(*) FROM minies_snapshots") == [(3,)]
        register(store, "c2", "bob@example.com")
        store.backup(str(tmp_path / "before.db"))
        [(key,)] = store.query("SELECT key FROM minies_keys WHERE subject = 'c1'")
        secrets = [bytes(key), email, old_email, name, b"older@example"]
        wal = Path(str(path) + "-wal")
        assert _scan([path, wal], [bytes(key)]) and _scan([path, wal], [email])  # the key, the read model
        assert not any(email.decode() in data for data in stored_data(store))  # the log: sealed from the start

        erasure = store.forget("c1")
        assert erasure.purged

        assert _scan([path, wal], secrets) == []
        store.backup(str(tmp_path / "after.db"))
        assert _scan([tmp_path / "after.db"], secrets) == []
        assert _scan([tmp_path / "before.db"], [bytes(key)])  # what the README warns about
        assert store.load(Customer, "c1").email == "" and store.verify().ok
    assert _scan([path, wal], secrets) == []
    with sqlite3.connect(path) as con:  # the stock module sees a consistent file
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT count(*) FROM minies_keys WHERE key IS NULL").fetchone() == (1,)


# ---------------------------------------------------------------------------- key-encryption key

KEK = bytes(range(32))
WRAPPED = (
    r"^this log's personal data keys are wrapped by a key-encryption key; open it with key_encryption_key= to read "
    r"or write personal fields$"
)


def test_with_a_key_encryption_key_the_file_alone_reveals_no_personal_field(db_path: str) -> None:
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        register(store, "c1", "ann@example.com")
        assert next(iter(store.read("c1"))).data.email == "ann@example.com"
        [(key,)] = store.query("SELECT key FROM minies_keys")
        assert len(key) == 12 + 32 + 16  # wrapped: nonce, key, tag
    with minies.EventStore(db_path, readonly=True) as thief:
        assert thief.verify().ok  # an auditor needs no key
        [record] = thief.read_all()  # and reads the plain fields
        assert (record.data.plan, record.data.email, minies.sealed(record)) == ("pro", "", {"email", "name"})
    with minies.EventStore(db_path) as without:
        with pytest.raises(minies.PersonalDataError, match=WRAPPED):
            register(without, "c2", "bob@example.com")
        assert without.forget("c1").keys == 1  # destroying a key needs no key-encryption key
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        assert next(iter(store.read("c1"))).data.email == ""
        register(store, "c3", "cy@example.com")
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:  # c3's key read back from the file
        store.append("c3", [PersonEmailChanged(customer_id="c3", email="cy@new.example")], aggregate_type="Customer")
        assert store.load(Customer, "c3").email == "cy@new.example"


def _sealed_log(location: str) -> None:
    """A log whose keys are wrapped: c1's fields sealed, c2 forgotten, a patient's note sealed."""
    with minies.EventStore(location, key_encryption_key=KEK) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
        store.forget("c2")
        store.append("p1", [PatientNoteAdded(note="Ann's note", ward=4)], aggregate_type="Patient")


NEEDS_KEK = (
    "aggregate 'c1' cannot be loaded: its event 1 holds personal fields this store cannot open (email, name); "
    "open the store with key_encryption_key="
)


def test_without_the_key_encryption_key_plain_fields_read_and_sealed_ones_are_named(location: str) -> None:
    _sealed_log(location)
    with minies.EventStore(location) as auditor:
        c1, c2, erasure, note = auditor.read_all()
        assert (c1.data.customer_id, c1.data.plan, c1.data.email, c1.data.name) == ("c1", "pro", "", "")
        assert minies.sealed(c1) == {"email", "name"} and minies.forgotten(c1) == set()
        assert minies.sealed(c2) == set() and minies.forgotten(c2) == {"email", "name"}  # no key needed
        assert minies.sealed(erasure) == set() and erasure.data.subject == "c2"
        assert (note.data.ward, note.data.note, minies.sealed(note.data)) == (4, "", {"note"})
        raw = next(iter(auditor.read("c1", raw=True))).data
        assert raw == {"customer_id": "c1", "email": "<sealed>", "name": "<sealed>", "plan": "pro"}
        assert minies.sealed(raw) == {"email", "name"}
        forgotten_raw = next(iter(auditor.read("c2", raw=True))).data
        assert forgotten_raw == {"customer_id": "c2", "plan": "pro"} and minies.sealed(forgotten_raw) == set()
        assert [r.data for r in auditor.read_all(event_types=[PatientNoteAdded])] == [note.data]
        with pytest.raises(minies.PersonalDataError) as caught:
            auditor.load(Customer, "c1")
        assert str(caught.value) == NEEDS_KEK
        assert auditor.load(Customer, "c2").email == ""  # forgotten: nothing to open
        assert auditor.verify().ok and auditor.info().forgotten_subjects == 1
        with pytest.raises(minies.PersonalDataError, match=WRAPPED):  # writing one needs the key
            register(auditor, "c3", "cy@example.com")
    with minies.EventStore(location, key_encryption_key=KEK) as store:
        first = next(iter(store.read("c1")))
        assert first.data.email == "ann@example.com" and minies.sealed(first) == set()
        assert store.load(Customer, "c1").email == "ann@example.com"


def test_a_read_model_is_never_built_from_values_its_store_cannot_open(db_path: str) -> None:
    _sealed_log(db_path)
    with pytest.raises(minies.ProjectionError, match="personal fields this store cannot open"):
        minies.EventStore(db_path, projections=[Emails()])
    with minies.EventStore(db_path, projections=[Emails()], key_encryption_key=KEK) as store:
        assert store.query("SELECT * FROM emails ORDER BY 1") == [("c1", "ann@example.com"), ("c2", "")]


def test_a_wrong_key_encryption_key_is_refused_on_open_and_nothing_is_written(db_path: str) -> None:
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        register(store, "c1", "ann@example.com")
    before = Path(db_path).read_bytes()
    with pytest.raises(
        minies.PersonalDataError,
        match=r"^the key_encryption_key does not open this log's keys \(a wrong key, nothing was written\)$",
    ):
        minies.EventStore(db_path, key_encryption_key=bytes(32))
    assert Path(db_path).read_bytes() == before and not Path(db_path + "-wal").exists()
    with pytest.raises(ValueError, match=r"key_encryption_key must be 32 bytes"):
        minies.EventStore(db_path, key_encryption_key=b"short")


def test_a_key_encryption_key_for_a_file_whose_keys_are_plain_is_refused(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        register(store, "c1", "ann@example.com")
    with pytest.raises(
        minies.PersonalDataError,
        match=r"^this log's personal data keys are not wrapped, but a key_encryption_key was given; open it "
        r"without one \(keys cannot be wrapped in place\)$",
    ):
        minies.EventStore(db_path, key_encryption_key=KEK)


# ---------------------------------------------------------------------------- tampering and crashes


def _untriggered(path: str, sql: str, params: tuple[Any, ...]) -> None:
    """Tamper with the file as its owner could: the guard dropped, the change made, the guard put back."""
    with sqlite3.connect(path) as con:
        [(guard,)] = con.execute("SELECT sql FROM sqlite_master WHERE name = 'events_no_update'")
        con.execute("DROP TRIGGER events_no_update")
        con.execute(sql, params)
        con.execute(guard)


def test_a_tampered_ciphertext_is_caught_by_verify_and_by_decryption(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
        [data] = [d for d in stored_data(store)[:1]]
    token = json.loads(data)["email"]
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    _untriggered(db_path, "UPDATE events SET data = ? WHERE position = 1", (data.replace(token, flipped),))
    with minies.EventStore(db_path) as store:
        report = store.verify()
        assert not report.ok and report.first_bad_position == 1
        with pytest.raises(
            minies.PersonalDataError, match=r"event at position 1: the personal field 'email' does not decrypt"
        ):
            list(store.read_all())


def test_a_ciphertext_moved_to_another_event_or_field_does_not_decrypt(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        register(store, "c1", "ann@example.com")
        store.append("c1", [PersonEmailChanged(customer_id="c1", email="x@y")], aggregate_type="Customer")
        first, second = stored_data(store)
    token = json.loads(first)["email"]
    moved = json.dumps({**json.loads(second), "email": token}, separators=(",", ":"))
    _untriggered(db_path, "UPDATE events SET data = ? WHERE position = 2", (moved,))
    with (
        minies.EventStore(db_path) as store,
        pytest.raises(minies.PersonalDataError, match=r"moved from another event"),
    ):
        list(store.read("c1"))
    swapped = json.loads(first)
    swapped["email"], swapped["name"] = swapped["name"], swapped["email"]
    _untriggered(
        db_path, "UPDATE events SET data = ? WHERE position = 1", (json.dumps(swapped, separators=(",", ":")),)
    )
    with minies.EventStore(db_path) as store, pytest.raises(minies.PersonalDataError, match=r"field 'email' does not"):
        list(store.read_all(limit=1))


def test_a_sealed_value_whose_key_row_is_missing_is_named(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        register(store, "c1", "ann@example.com")
    with sqlite3.connect(db_path) as con:
        con.execute("DELETE FROM minies_keys")
    with (
        minies.EventStore(db_path) as store,
        pytest.raises(
            minies.PersonalDataError,
            match=r"^event at position 1 is sealed with key '[\w-]+', which this log does not hold",
        ),
    ):
        list(store.read_all())


_SLOW_FORGET = """
import sys, time, minies
from typing import ClassVar

class PersonSignedUp(minies.Event):
    data_subject: ClassVar[str] = "customer_id"
    customer_id: str
    email: minies.Personal[str] = ""

class Slow(minies.Projection):
    name = "slow"
    def setup(self, db):
        db.execute("CREATE TABLE slow (customer_id TEXT PRIMARY KEY, email TEXT NOT NULL)")
    def on_PersonSignedUp(self, db, r):
        db.execute("INSERT INTO slow VALUES (?, ?)", (r.data.customer_id, r.data.email))
    def forget(self, db, subject):
        db.execute("DELETE FROM slow WHERE customer_id = ?", (subject,))
        print("forgetting", flush=True)
        time.sleep(60)
        return True

with minies.EventStore(sys.argv[1], projections=[Slow()]) as store:
    if sys.argv[2] == "fill":
        store.append("c1", [PersonSignedUp(customer_id="c1", email="ann@example.com")], aggregate_type="Customer")
    else:
        store.forget("c1")
"""


def test_kill_9_in_the_middle_of_forget_changes_nothing(db_path: str) -> None:
    run_python(_SLOW_FORGET, db_path, "fill")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_FORGET, db_path, "forget"], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        assert line == "forgetting\n" and time.monotonic() < deadline
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    with minies.EventStore(db_path) as store:
        assert next(iter(store.read("c1"))).data.email == "ann@example.com"
        assert store.info().forgotten_subjects == 0 and store.head()[0] == 1
        assert store.query("SELECT email FROM slow") == [("ann@example.com",)]
        assert store.verify().ok


# ---------------------------------------------------------------------------- copies, CLI, PostgreSQL


def test_a_copy_keeps_the_keys_and_the_head_hash(tmp_path: Path, location: str) -> None:
    source = str(tmp_path / "src.db")
    with minies.EventStore(source) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
        store.forget("c2")
        head = store.head()
    report = minies.copy(source, location)
    assert report.head_hash == head[1]
    with minies.EventStore(location) as copy:
        first, second, _ = copy.read_all()
        assert first.data.email == "ann@example.com" and minies.forgotten(second) == {"email", "name"}
        assert copy.info().forgotten_subjects == 1


def test_the_cli_forgets_with_confirmation_and_info_counts(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.db")
    with minies.EventStore(path) as store:
        register(store, "c1", "ann@example.com")
    cli = [sys.executable, "-m", "minies"]
    refused = subprocess.run([*cli, "forget", path, "c1"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "cannot be undone; add --yes to confirm" in refused.stderr
    events = subprocess.run([*cli, "events", path, "--json"], capture_output=True, text=True, check=True)
    assert "ann@example.com" in events.stdout  # keys stored plainly: the CLI opens sealed fields
    done = subprocess.run(
        [*cli, "forget", path, "c1", "--yes", "--reason", "request 9"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "forgot 'c1': 1 key destroyed, recorded at position 2" in done.stdout
    info = subprocess.run([*cli, "info", path], capture_output=True, text=True, check=True)
    assert "forgotten       1 data subject\n" in info.stdout
    events = subprocess.run([*cli, "events", path, "--json"], capture_output=True, text=True, check=True)
    assert "ann@example.com" not in events.stdout and '"reason":"request 9"' in events.stdout
    export = subprocess.run([*cli, "export", path, "--format", "csv"], capture_output=True, text=True, check=True)
    assert "ann@example.com" not in export.stdout and "minies.SubjectForgotten" in export.stdout
    verify = subprocess.run([*cli, "verify", path], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_cli_reads_wrapped_keys_with_the_key_from_the_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "kek.db")
    with minies.EventStore(path, key_encryption_key=KEK) as store:
        register(store, "c1", "ann@example.com")
    cli = [sys.executable, "-m", "minies", "events", path, "--json"]
    without = subprocess.run(cli, capture_output=True, text=True, check=True)
    assert '"email":"<sealed>"' in without.stdout and "ann@example.com" not in without.stdout
    env = {**os.environ, "MINIES_KEY_ENCRYPTION_KEY": KEK.hex()}
    with_key = subprocess.run(cli, capture_output=True, text=True, env=env, check=True)
    assert "ann@example.com" in with_key.stdout


# An auditor's machine: the cryptography package cannot be imported.
WITHOUT_CRYPTOGRAPHY = """
import sys
sys.modules["cryptography"] = None
from minies._cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("keys", "cryptography"), [("wrapped", True), ("wrapped", False), ("plain", False)])
def test_an_auditor_without_the_key_lists_exports_and_verifies(tmp_path: Path, keys: str, cryptography: bool) -> None:
    """Plain fields print, sealed ones print ``<sealed>``, forgotten ones are absent; without the
    key-encryption key, and without even the cryptography package (then plain keys cannot be
    used either)."""
    path = str(tmp_path / "audit.db")
    if keys == "wrapped":
        _sealed_log(path)
    else:
        with minies.EventStore(path) as store:
            register(store, "c1", "ann@example.com")
            register(store, "c2", "bob@example.com")
            store.forget("c2")
            store.append("p1", [PatientNoteAdded(note="Ann's note", ward=4)], aggregate_type="Patient")

    def cli(*args: str) -> str:
        if cryptography:
            command = [sys.executable, "-m", "minies", *args]
        else:
            command = [sys.executable, "-c", WITHOUT_CRYPTOGRAPHY, *args]
        env = {k: v for k, v in os.environ.items() if k != "MINIES_KEY_ENCRYPTION_KEY"}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout

    listed = cli("events", path, "--json")
    c1, c2, _, note = (json.loads(line)["data"] for line in listed.splitlines())
    assert c1 == {"customer_id": "c1", "plan": "pro", "email": "<sealed>", "name": "<sealed>"}
    assert c2 == {"customer_id": "c2", "plan": "pro"}  # forgotten: absent, as ever
    assert note == {"ward": 4, "note": "<sealed>"}
    table = cli("events", path)
    assert '{"ward":4,"note":"<sealed>"}' in table and table.count("<sealed>") == 2
    exported = cli("export", path)
    assert exported == listed
    rows = list(csv.DictReader(io.StringIO(cli("export", path, "--format", "csv"))))
    assert [json.loads(row["data"]) for row in rows] == [c1, c2, json.loads(rows[2]["data"]), note]
    assert cli("verify", path).startswith("ok: 4 events verified")
    assert "forgotten       1 data subject" in cli("info", path)
    if cryptography:  # the classes imported: the fields print <sealed> all the same, not the default ""
        imported = cli("events", path, "--json", "--import", "test_personal")
        assert json.loads(imported.splitlines()[0])["data"] == c1
    for output in (listed, table, exported):
        assert "ann@example.com" not in output and "Ann's note" not in output


def test_postgres_forgets_and_vacuums_the_keys(pg_url: str) -> None:
    with minies.EventStore(pg_url, projections=[Emails()]) as store:
        register(store, "c1", "ann@example.com")
        erasure = store.forget("c1")
        assert erasure.purged and erasure.projections == ["emails"]
        assert store.query("SELECT count(*) FROM minies_keys WHERE key IS NULL") == [(1,)]
        assert store.query("SELECT email FROM emails") == [("",)]
        assert store.verify().ok


def test_a_version_4_postgres_log_stops_sampling_keys_and_snapshots_into_statistics(pg_url: str) -> None:
    statistics = (
        "SELECT attname, attstattarget FROM pg_attribute WHERE (attrelid, attname) IN"
        " (('minies_keys'::regclass, 'key'), ('minies_snapshots'::regclass, 'state')) ORDER BY 1"
    )
    with minies.EventStore(pg_url) as store:
        raw = store._backend.conn.raw  # as minies 0.2 left it: statistics on, no guards on the keys
        assert raw.execute(statistics).fetchall() == [("key", 0), ("state", 0)]
        raw.execute("DROP TRIGGER minies_keys_guard ON minies_keys")
        raw.execute("DROP TRIGGER minies_keys_no_truncate ON minies_keys")
        raw.execute("ALTER TABLE minies_keys ALTER COLUMN key SET STATISTICS -1")
        raw.execute("ALTER TABLE minies_snapshots ALTER COLUMN state SET STATISTICS -1")
        raw.execute("UPDATE minies_schema SET version = 4")
        assert raw.execute(statistics).fetchall() != [("key", 0), ("state", 0)]
    with minies.EventStore(pg_url) as store:
        assert store._backend.conn.raw.execute(statistics).fetchall() == [("key", 0), ("state", 0)]


def test_a_version_3_postgres_log_gains_the_keys_table(pg_url: str) -> None:
    with minies.EventStore(pg_url) as store:
        store.append("a", [PatientNoteAdded(ward=1)], aggregate_type="Patient")
        raw = store._backend.conn.raw  # as minies 0.2 left it: no keys table, schema version 3
        raw.execute("DROP TABLE minies_keys")
        raw.execute("UPDATE minies_schema SET version = 3")
        assert store._backend.schema_version() == 3
    with minies.EventStore(pg_url) as store:
        assert store.info().schema_version == 5
        store.append("p", [PatientNoteAdded(note="secret")], aggregate_type="Patient")
        assert next(iter(store.read("p"))).data.note == "secret"


def test_a_read_only_store_on_a_version_3_file_reads_and_never_looks_for_keys(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with minies.EventStore(str(path)) as store:
        store.append("a", [PatientNoteAdded(ward=1)], aggregate_type="Patient")
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE minies_keys")
        con.execute("PRAGMA user_version = 3")
    with minies.EventStore(str(path), readonly=True) as store:
        assert [r.data.ward for r in store.read_all()] == [1] and store.info().forgotten_subjects == 0
        assert store.forget("a") == minies.Erasure("a", 0, [], [], 0, False)


def test_personal_is_a_plain_annotation_to_msgspec() -> None:
    assert _personal.SEALED[PersonSignedUp].fields == (("email", "email"), ("name", "name"))
    assert msgspec.json.decode(b'{"customer_id":"c","email":"e"}', type=PersonSignedUp).email == "e"


class Failing(minies.Projection):
    name = "failing"
    fail: ClassVar[bool] = True

    def on_PersonSignedUp(self, db: minies.Database, r: minies.Recorded) -> None:
        if Failing.fail:
            raise RuntimeError("read model refused")


def test_a_rolled_back_append_takes_its_new_key_with_it(db_path: str) -> None:
    with minies.EventStore(db_path, projections=[Failing()]) as store:
        Failing.fail = True
        with pytest.raises(RuntimeError, match="read model refused"):
            register(store, "c1", "ann@example.com")
        assert store.query("SELECT count(*) FROM minies_keys") == [(0,)]
        Failing.fail = False
        register(store, "c1", "ann@example.com")  # a new key, written this time
        assert next(iter(store.read("c1"))).data.email == "ann@example.com"
    with minies.EventStore(db_path) as again:
        assert next(iter(again.read("c1"))).data.email == "ann@example.com"


def test_a_subject_forgotten_by_another_store_is_forgotten_here_too(location: str) -> None:
    with minies.EventStore(location) as mine, minies.EventStore(location) as theirs:
        register(mine, "c1", "ann@example.com")
        customer = mine.load(Customer, "c1")  # this store has the key cached now
        assert customer.email == "ann@example.com"
        theirs.forget("c1")
        assert mine.load(Customer, "c1").email == ""
        assert minies.forgotten(next(iter(mine.read("c1")))) == {"email", "name"}
        customer.record(PersonEmailChanged(customer_id="c1", email="new@example.com"))
        mine.save(customer)  # sealed under a new key, not the destroyed one
        assert theirs.load(Customer, "c1").email == "new@example.com"


def test_with_a_key_encryption_key_snapshots_are_sealed_too(db_path: str) -> None:
    email = "snapshot.secret@example.com"
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        customer = Customer(id="c1")
        customer.record(PersonSignedUp(customer_id="c1", email=email, name="Snap Shot"))
        customer.record(PersonEmailChanged(customer_id="c1", email=email))
        store.save(customer)  # version 2: a snapshot, holding the plaintext state
        [(state,)] = store.query("SELECT state FROM minies_snapshots")
        assert state.startswith('"minies-sealed:v1:') and email not in state
        assert store.load(Customer, "c1") == customer
        account = Wallet(id="w1")
        account.record(Deposited(amount=5))
        account.record(Deposited(amount=7))
        store.save(account)
    with sqlite3.connect(db_path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert email.encode() not in Path(db_path).read_bytes()
    with minies.EventStore(db_path, readonly=True) as without:  # a sealed snapshot it cannot open: replay
        assert without.load(Wallet, "w1").total == 12
        with pytest.raises(minies.PersonalDataError, match=r"open the store with key_encryption_key=$"):
            without.load(Customer, "c1")


class Deposited(minies.Event):
    event_type: ClassVar[str] = "personal_test.Deposited"
    amount: int


class Wallet(minies.Aggregate):
    snapshot_every: ClassVar[int] = 2
    total: int = 0

    def apply(self, event: minies.Event) -> None:
        if isinstance(event, Deposited):
            self.total += event.amount


def test_a_sealed_snapshot_is_what_load_uses(db_path: str) -> None:
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        wallet = Wallet(id="w1")
        wallet.record(Deposited(amount=5))
        wallet.record(Deposited(amount=7))
        store.save(wallet)
        [(state,)] = store.query("SELECT state FROM minies_snapshots")
        opened = store._keys.open_state(store._conn, state, "w1/2")
        assert opened is not None and msgspec.json.decode(opened)["total"] == 12
        assert store._keys.open_state(store._conn, state, "w1/3") is None  # bound to where it was written
        # a snapshot sealed with another total: load shows it, so load opened it
        forged = store._keys.seal_state(store._conn, opened.replace('"total":12', '"total":99'), "w1/2", "now")
    with sqlite3.connect(db_path) as con:
        con.execute("UPDATE minies_snapshots SET state = ?", (forged,))
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        assert store.load(Wallet, "w1").total == 99


def test_a_processor_and_the_async_store_see_the_plaintext(db_path: str) -> None:
    import asyncio

    seen: list[str] = []

    def welcome(record: minies.Recorded, store: minies.EventStore) -> None:
        seen.append(record.data.email)

    with minies.EventStore(db_path) as store:
        register(store, "c1", "ann@example.com")
        assert store.processor("welcome", welcome, event_types=[PersonSignedUp]).run() == 1
    assert seen == ["ann@example.com"]

    async def main() -> list[str]:
        async with minies.AsyncEventStore(db_path) as store:
            return [r.data.email async for r in store.read("c1")]

    assert asyncio.run(main()) == ["ann@example.com"]

    async def forget() -> minies.Erasure:
        async with minies.AsyncEventStore(db_path) as store:
            return await store.forget("c1", reason="asked")

    assert asyncio.run(forget()).keys == 1
    with minies.EventStore(db_path) as store:
        assert next(iter(store.read("c1"))).data.email == ""


class CamelCased(minies.Event, rename="camel"):
    home_address: minies.Personal[str] = ""
    plain_value: int = 0


def test_a_renamed_personal_field_is_sealed_under_its_stored_name_and_forgotten_by_its_attribute(
    store: minies.EventStore,
) -> None:
    store.append("r1", [CamelCased(home_address="1 Secret Lane", plain_value=3)], aggregate_type="R")
    [data] = stored_data(store)
    assert '"homeAddress":"minies-sealed:v1:' in data and '"plainValue":3' in data
    assert next(iter(store.read("r1"))).data.home_address == "1 Secret Lane"
    store.forget("r1")
    record = next(iter(store.read("r1")))
    assert record.data == CamelCased(plain_value=3) and minies.forgotten(record) == {"home_address"}
    assert minies.forgotten(next(iter(store.read("r1", raw=True)))) == {"homeAddress"}


@pytest.mark.parametrize(("answer", "forgotten_subjects"), [("n", 0), ("y", 1)])
def test_the_cli_asks_on_a_terminal_before_forgetting(tmp_path: Path, answer: str, forgotten_subjects: int) -> None:
    import pty

    path = str(tmp_path / "tty.db")
    with minies.EventStore(path) as store:
        register(store, "c1", "ann@example.com")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "minies", "forget", path, "c1"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == (1 if answer == "n" else 0), err
    assert ("nothing was changed" in out) == (answer == "n")
    with minies.EventStore(path) as store:
        assert store.info().forgotten_subjects == forgotten_subjects


def test_a_forward_reference_is_fine_unless_personal_fields_hide_behind_it() -> None:
    namespace: dict[str, Any] = {"minies": minies, "ClassVar": ClassVar}
    exec(
        "from __future__ import annotations\nclass LaterPlain(minies.Event):\n    item: DefinedLater | None = None\n",
        namespace,
    )
    with pytest.raises(
        minies.SchemaError,
        match=r"^LaterPersonal may declare personal fields, but its annotations cannot be resolved yet; define the types "
        r"it refers to before it$",
    ):
        exec(
            "from __future__ import annotations\n"
            "class LaterPersonal(minies.Event):\n"
            "    item: minies.Personal[DefinedLater | None] = None\n",
            namespace,
        )


def test_what_forgotten_remembers_goes_with_the_events(store: minies.EventStore) -> None:
    import gc

    register(store, "c1", "ann@example.com")
    store.forget("c1")
    gc.collect()  # (what earlier tests left in reference cycles)
    before = len(_personal._forgotten)
    records = list(store.read_all()) + list(store.read_all(raw=True))
    assert len(_personal._forgotten) == before + 2
    assert minies.forgotten(records[0]) == minies.forgotten(records[2]) == {"email", "name"}
    del records
    gc.collect()
    assert len(_personal._forgotten) == before


def test_a_declaration_is_read_from_the_class_when_it_is_defined(store: minies.EventStore) -> None:
    class Visit(minies.Event, rename="camel"):
        data_subject: ClassVar[str] = "patient_id"
        patient_id: str
        doctor_note: minies.Personal[str] = ""
        ward: int = 0
        allergies: minies.Personal[list[str]] = []

    class PlainVisit(minies.Event):
        ward: int = 0

    spec = _personal.Spec((("doctor_note", "doctorNote"), ("allergies", "allergies")), "patient_id")
    assert _personal.SEALED[Visit] == spec and PlainVisit not in _personal.SEALED
    assert Visit.__struct_config__.weakref and not PlainVisit.__struct_config__.weakref
    store.append("visit-1", [Visit(patient_id="p1", doctor_note="x", allergies=["nuts"])], aggregate_type="Visit")
    assert store.query("SELECT subject FROM minies_keys") == [("p1",)]
    [data] = stored_data(store)
    assert '"doctorNote":"minies-sealed:v1:' in data and '"ward":0' in data and '"patientId":"p1"' in data
    assert next(iter(store.read("visit-1"))).data.allergies == ["nuts"]


def test_which_annotations_may_declare_personal_fields() -> None:
    assert _personal.may_declare({"a": minies.Personal[str]})
    assert _personal.may_declare({"a": list[minies.Personal[str]]})  # refused later, but seen
    assert _personal.may_declare({"a": "minies.Personal[str]"}) and _personal.may_declare({"a": "Annotated[str, x]"})
    assert not _personal.may_declare({"a": int, "b": "list[str]", "c": list[int]})


def test_a_damaged_wrapped_key_is_named_as_such_when_it_is_needed(db_path: str) -> None:
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        register(store, "c1", "ann@example.com")
        register(store, "c2", "bob@example.com")
    with sqlite3.connect(db_path) as con:  # the second key's last byte flipped
        [(key,)] = con.execute("SELECT key FROM minies_keys WHERE subject = 'c2'")
        con.execute("UPDATE minies_keys SET key = ? WHERE subject = 'c2'", (key[:-1] + bytes([key[-1] ^ 1]),))
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:  # opens: the first key unwraps
        assert next(iter(store.read("c1"))).data.email == "ann@example.com"
        with pytest.raises(
            minies.PersonalDataError,
            match=r"^the key_encryption_key does not open this log's keys \(a wrong key, or a damaged key row\)$",
        ):
            list(store.read("c2"))


def test_every_sealed_value_of_a_batch_has_its_own_nonce_and_plain_events_stay_plain(store: minies.EventStore) -> None:
    batch: list[minies.Event] = [Deposited(amount=1)]  # a plain event first, then sealed ones
    batch += [PatientNoteAdded(note=f"note {i}", ward=i) for i in range(50)]
    batch += [PersonSignedUp(customer_id=f"c{i}", email="same@example.com", name="Same") for i in range(3)]
    store.append("patient-1", batch, aggregate_type="Patient")
    tokens = [value for data in stored_data(store) for value in json.loads(data).values()]
    sealed = [t.rsplit(":", 1)[1] for t in tokens if isinstance(t, str) and t.startswith("minies-sealed:v1:")]
    assert len(sealed) == 50 + 3 * 2
    nonces = [binascii.a2b_base64(box)[:12] for box in sealed]
    assert len(set(nonces)) == len(nonces)
    assert stored_data(store)[0] == '{"amount":1}'
    assert [r.data for r in store.read("patient-1")] == batch


def _nonce(token: str) -> bytes:
    return binascii.a2b_base64(token.strip('"').rsplit(":", 1)[1])[:12]


def test_every_nonce_is_fresh_for_sealed_values_wrapped_keys_and_sealed_snapshots(db_path: str) -> None:
    """A reused AES-GCM nonce under one key leaks both plaintexts (and the authentication key),
    and no round trip notices it: the nonces themselves are compared, each kind under its keys."""
    states: set[str] = set()
    with minies.EventStore(db_path, key_encryption_key=KEK) as store:
        for i in range(12):
            register(store, f"c{i}", "same@example.com", "Same Name")  # two values sealed per event
            store.append("p1", [PatientNoteAdded(note="same note")], aggregate_type="Patient")  # one key, many appends
            wallet = Wallet(id=f"w{i % 3}") if i < 3 else store.load(Wallet, f"w{i % 3}")
            wallet.record(Deposited(amount=1))
            wallet.record(Deposited(amount=1))
            store.save(wallet)  # a snapshot of the same state, sealed under the one snapshot key
            states |= {state for (state,) in store.query("SELECT state FROM minies_snapshots")}
        values = [
            _nonce(value)
            for data in stored_data(store)
            for value in json.loads(data).values()
            if isinstance(value, str) and value.startswith(_personal.PREFIX)
        ]
        keys = [bytes(key)[:12] for (key,) in store.query("SELECT key FROM minies_keys")]
    snapshots = [_nonce(state) for state in states]
    assert (len(values), len(keys), len(snapshots)) == (12 * 3, 12 + 1 + 1, 12)
    for nonces in (values, keys, snapshots):
        assert len(set(nonces)) == len(nonces)


def test_forgotten_subjects_counts_subjects_not_keys(location: str) -> None:
    with minies.EventStore(location) as store:
        register(store, "c1", "ann@example.com")
        store.forget("c1")
        store.append("c1", [PersonEmailChanged(customer_id="c1", email="ann@example.org")], aggregate_type="Customer")
        assert store.forget("c1").keys == 1  # its second key
        assert store.info().forgotten_subjects == 1
        register(store, "c2", "bob@example.com")
        store.forget("c2")
        assert store.info().forgotten_subjects == 2
        assert store.query("SELECT count(*) FROM minies_keys WHERE key IS NULL") == [(3,)]


def test_a_process_without_personal_classes_opens_sealed_fields_only_where_the_file_has_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed, plain = str(tmp_path / "sealed.db"), str(tmp_path / "plain.db")
    with minies.EventStore(sealed) as store:
        register(store, "c1", "ann@example.com")
    with minies.EventStore(plain) as store:
        store.append("w1", [Deposited(amount=1)], aggregate_type="Wallet")
    monkeypatch.setattr(_personal, "SEALED", {})  # as in `minies events FILE`, which imports no class
    with minies.EventStore(sealed, readonly=True) as store:
        assert next(iter(store.read_all(raw=True))).data["email"] == "ann@example.com"
    with minies.EventStore(plain, readonly=True) as store:
        with store._tx.lock:
            assert store._read_view()[1] is None  # no key, no class: reads never look for sealed values
        assert [r.data for r in store.read_all()] == [Deposited(amount=1)]


def _pg_files(store: minies.EventStore) -> list[Path]:
    """Every file of the store's PostgreSQL database (tables, indexes, TOAST, the catalogs), as
    of a ``CHECKPOINT`` taken now (the tests run as root, so they can read the cluster's files)."""
    raw = store._backend.conn.raw
    raw.execute("CHECKPOINT")
    directory, relation = raw.execute(
        "SELECT current_setting('data_directory'), pg_relation_filepath('minies_keys')"
    ).fetchone()
    return sorted(p for p in Path(directory, relation).parent.iterdir() if p.is_file())


def test_postgres_keeps_no_destroyed_key_in_the_database_files(pg_url: str) -> None:
    """The destroyed key's row is the last on a full page and its new version lands on the next
    one: a plain ``VACUUM`` then frees the old row without moving anything over its bytes, so
    only a rewrite (``VACUUM FULL``) takes the key out of the table's file."""
    with minies.EventStore(pg_url) as store:
        raw = store._backend.conn.raw
        block = "SELECT (ctid::text::point)[0] FROM minies_keys WHERE subject = ?"
        n = 0
        while n == 0 or store.query(block, (f"s{n - 1:08d}",)) == [(0,)]:
            register(store, f"s{n:08d}", f"{uuid.uuid4()}@example.com")
            n += 1
        last = f"s{n - 2:08d}"  # the last row on page 0
        [(key,)] = store.query("SELECT key FROM minies_keys WHERE subject = ?", (last,))
        raw.execute("ANALYZE")  # as autovacuum does: no key may reach pg_statistic
        assert _scan(_pg_files(store), [bytes(key)])
        purge, pages = store._backend.purge, []

        def purging(snapshots: bool = False) -> bool:
            pages.append(store.query(block, (last,)))  # where the key's row went, before the rewrite
            return purge(snapshots)

        store._backend.purge = purging
        assert store.forget(last).purged
        assert pages == [[(1,)]]  # the layout this test needs: nothing moves over the old row
        assert _scan(_pg_files(store), [bytes(key)]) == []
        assert next(iter(store.read(f"s{n - 1:08d}"))).data.email.endswith("@example.com")
        assert raw.execute("SELECT count(*) FROM minies_keys WHERE key IS NULL").fetchone() == (1,)


def test_postgres_keeps_no_dropped_snapshot_in_the_database_files(pg_url: str) -> None:
    email = f"{uuid.uuid4()}@example.com".encode()
    with minies.EventStore(pg_url) as store:
        _customer(store, "c1", email.decode())
        _customer(store, "c2", "bob@example.com")
        assert store.query("SELECT aggregate_id FROM minies_snapshots ORDER BY 1") == [("c1",), ("c2",)]
        assert _scan(_pg_files(store), [email])  # the snapshot's state holds the plaintext
        store._backend.conn.raw.execute("ANALYZE")  # as autovacuum does: no state may reach pg_statistic
        erasure = store.forget("c1")
        assert erasure.snapshots_dropped == ["c1"] and erasure.purged
        assert _scan(_pg_files(store), [email]) == []
        assert store.load(Customer, "c1").email == "" and store.load(Customer, "c2").email == "new.bob@example.com"


def test_a_key_made_in_a_rolled_back_block_is_not_used_after_it(location: str) -> None:
    """A subject's first personal event makes its key; if that block rolls back, the key's row
    is gone, and the next event of the subject must make (and store) a new one."""
    with minies.EventStore(location) as store:
        with store.transaction():
            with pytest.raises(ValueError, match="^refused$"), store.transaction():
                register(store, "c9", "first@example.com")
                raise ValueError("refused")
            register(store, "c9", "second@example.com")
        assert store.query("SELECT count(*) FROM minies_keys WHERE subject = 'c9'") == [(1,)]
        assert [r.data.email for r in store.read("c9")] == ["second@example.com"]
    with minies.EventStore(location, readonly=True) as reader:  # from the file alone, no cache
        assert [r.data.email for r in reader.read("c9")] == ["second@example.com"]


def test_forget_while_a_reader_holds_old_pages_says_they_were_not_purged_yet(db_path: str) -> None:
    import apsw

    with minies.EventStore(db_path, timeout=0.2) as store:
        register(store, "c1", "ann@example.com")
        reader = apsw.Connection(db_path)  # another connection, mid-read: its snapshot needs the WAL
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").get == 1
        register(store, "c2", "bob@example.com")
        erasure = store.forget("c1")
        assert (erasure.keys, erasure.purged) == (1, False)
        assert os.path.getsize(db_path + "-wal") > 0
        reader.execute("COMMIT")
        reader.close()
        assert store.forget("c2").purged
        assert os.path.getsize(db_path + "-wal") == 0
    with minies.EventStore(":memory:") as store:  # no file: nothing to purge
        register(store, "c1", "ann@example.com")
        assert store.forget("c1").purged is False


def test_personal_fields_hidden_behind_an_alias_in_string_annotations_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aliased_events.py").write_text(
        "from __future__ import annotations\n"
        "import minies\n"
        "Secret = minies.Personal\n"
        "class Aliased(minies.Event):\n"
        "    code: Secret[str] = ''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        minies.SchemaError,
        match=r"^Aliased declares personal fields through an alias minies cannot see; use minies.Personal\[...\]$",
    ):
        __import__("aliased_events")


def test_a_ciphertext_that_is_not_base64_is_named_as_such(db_path: str) -> None:
    ids = [str(uuid.uuid4())]
    event = PersonSignedUp(customer_id="c1", email="ann@example.com")
    with minies.EventStore(db_path) as store:
        store.append("c1", [event], aggregate_type="Customer", event_ids=ids)
        [data] = stored_data(store)
    token = json.loads(data)["email"]
    broken = token[:-10] + "!" + token[-9:]
    _untriggered(db_path, "UPDATE events SET data = ? WHERE position = 1", (data.replace(token, broken),))
    with minies.EventStore(db_path) as store:
        with pytest.raises(
            minies.PersonalDataError,
            match=r"^event at position 1: the personal field 'email' does not decrypt \(altered, or moved from "
            r"another event or field\): Error$",
        ):
            list(store.read_all())
        with pytest.raises(minies.PersonalDataError, match=rf"^event {ids[0]}: the personal field 'email' does not"):
            store.append("c1", [event], aggregate_type="Customer", event_ids=ids)  # a retry opens what is stored


def test_a_load_takes_the_fast_path_until_a_chunk_holds_sealed_fields(
    store: minies.EventStore, monkeypatch: pytest.MonkeyPatch, no_upcasting: None
) -> None:
    monkeypatch.setattr(_replay, "_LOAD_CHUNK", 2)  # chunks: two plain events, then two sealed ones
    events = [
        Deposited(amount=1),
        Deposited(amount=2),
        PersonSignedUp(customer_id="c9", email="first@example.com"),
        PersonEmailChanged(customer_id="c9", email="second@example.com"),
        Deposited(amount=3),
    ]
    store.append("c9", events, aggregate_type="Customer")
    customer = store.load(Customer, "c9")
    assert (customer.version, customer.email, customer.changes) == (5, "second@example.com", 1)
    assert store.fold("c9", lambda n, e: n + 1, 0) == (5, 5)
    assert store.load(Customer, "c9", upto=3).email == "first@example.com"
    # sealed values first, then plain ones; and a plain stream of three chunks
    store.append("c8", [*events[2:4], Deposited(amount=1), Deposited(amount=2)], aggregate_type="Customer")
    assert store.load(Customer, "c8").email == "second@example.com"
    store.append("w8", [Deposited(amount=i) for i in range(5)], aggregate_type="Wallet")
    assert store.fold("w8", lambda n, e: n + e.amount, 0) == (10, 5)


def test_forget_checks_its_arguments_and_says_when_there_was_nothing_to_forget(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        with pytest.raises(TypeError, match=r"^subject must be a str, got int: 7$"):
            store.forget(7)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^subject must not be empty$"):
            store.forget("")
        with pytest.raises(TypeError, match=r"^reason must be a str, got bytes$"):
            store.forget("c1", reason=b"why")  # type: ignore[arg-type]
        assert store.forget("nobody") == minies.Erasure("nobody", 0, [], [], 0, False)
        register(store, "c1", "ann@example.com")
        store.forget("c1")
        [(key, forgotten_at, created_at)] = store.query("SELECT key, forgotten_at, created_at FROM minies_keys")
        assert key is None and forgotten_at >= created_at
        assert store.forget("c1") == minies.Erasure("c1", 0, [], [], 0, False)
        [erasure] = store.read_all(event_types=[minies.SubjectForgotten])
        assert erasure.data == minies.SubjectForgotten(subject="c1")
    with minies.EventStore(db_path, readonly=True) as store:
        assert store.forget("c1") == minies.Erasure("c1", 0, [], [], 0, False)  # nothing live: nothing to write
    with minies.EventStore(db_path) as store:
        register(store, "c2", "bob@example.com")
    with (
        minies.EventStore(db_path, readonly=True) as store,
        pytest.raises(
            minies.StorageError,
            match=r"^cannot forget 'c2': this store was opened with readonly=True; open it without to write$",
        ),
    ):
        store.forget("c2")


def test_a_load_that_switches_to_records_still_refuses_another_aggregate_type(
    db_path: str, monkeypatch: pytest.MonkeyPatch, no_upcasting: None
) -> None:
    monkeypatch.setattr(_replay, "_LOAD_CHUNK", 2)
    with minies.EventStore(db_path) as store:
        store.append(
            "c7",
            [PersonSignedUp(customer_id="c7", email="a@x"), Deposited(amount=1), Deposited(amount=2)],
            aggregate_type="Customer",
        )
    _untriggered(db_path, "UPDATE events SET aggregate_type = 'Other' WHERE position = 3", ())
    with (
        minies.EventStore(db_path) as store,
        pytest.raises(
            minies.SchemaError,
            match=r"^aggregate 'c7' holds Other events, not Customer; load it with the matching class$",
        ),
    ):
        store.load(Customer, "c7")


# ---------------------------------------------------------------------------- erasure travels with the log
def _ends(request: pytest.FixtureRequest, tmp_path: Path, route: str) -> tuple[str, str]:
    """The source and the target of a ``route`` such as ``"file->postgres"``."""

    def end(kind: str, name: str) -> str:
        return str(tmp_path / name) if kind == "file" else pgserver.fresh_schema(request.getfixturevalue("pg_dsn"))

    source, target = route.split("->")
    return end(source, "source.db"), end(target, "target.db")


def _customer(store: minies.EventStore, customer: str, email: str) -> None:
    """A customer whose aggregate has a snapshot (which holds the plaintext when keys are not wrapped)."""
    register(store, customer, email)
    c = store.load(Customer, customer)
    c.record(PersonEmailChanged(customer_id=customer, email="new." + email))
    store.save(c)


@pytest.mark.parametrize("route", ["file->file", "file->postgres", "postgres->file"])
def test_an_incremental_copy_applies_the_erasure_it_carries(
    request: pytest.FixtureRequest, tmp_path: Path, route: str
) -> None:
    source, target = _ends(request, tmp_path, route)
    with minies.EventStore(source) as store:
        _customer(store, "c1", "ann@example.com")
        _customer(store, "c2", "bob@example.com")
    minies.copy(source, target)
    with minies.EventStore(target) as copy:
        assert copy.load(Customer, "c1").email == "new.ann@example.com"
        assert copy.snapshot_stats() == [("Customer", 2, copy.snapshot_stats()[0][2])]
    with minies.EventStore(source) as store:
        store.forget("c1")
        store.append("c1", [PersonEmailChanged(customer_id="c1", email="ann@example.org")], aggregate_type="Customer")
        head = store.head()
    assert minies.copy(source, target).copied == 2  # c1 written again, under a new key
    with minies.EventStore(target) as copy:
        assert copy.head() == head
        first = next(iter(copy.read("c1")))
        assert first.data.email == "" and minies.forgotten(first) == {"email", "name"}
        assert copy.load(Customer, "c1").email == "ann@example.org"
        assert copy.load(Customer, "c2").email == "new.bob@example.com"
        assert copy.info().forgotten_subjects == 1
        assert copy.query("SELECT aggregate_id FROM minies_snapshots") == [("c2",)]
        assert copy.query("SELECT subject FROM minies_keys WHERE key IS NULL") == [("c1",)]
        assert copy.verify().ok


@pytest.mark.parametrize("route", ["file->file", "file->postgres"])
def test_a_copy_keeps_the_targets_read_models_and_cleans_them_with_the_erasure(
    request: pytest.FixtureRequest, tmp_path: Path, route: str
) -> None:
    source, target = _ends(request, tmp_path, route)
    email = f"{uuid.uuid4()}@example.com"
    models = [Emails(), EmailsWithHook()]
    with minies.EventStore(source) as store:
        register(store, "c1", email)
        register(store, "c2", "bob@example.com")
    minies.copy(source, target, projections=models)
    with minies.EventStore(target) as copy:
        assert copy.query("SELECT * FROM emails_hooked ORDER BY 1") == [("c1", email), ("c2", "bob@example.com")]
    with minies.EventStore(source) as store:
        store.forget("c1")
        key = store.query("SELECT key_id FROM minies_keys WHERE subject = 'c1'")
    EmailsWithHook.forgotten.clear()
    minies.copy(source, target, projections=models)
    assert EmailsWithHook.forgotten == ["c1"]  # in the copy's transaction
    with minies.EventStore(target) as copy:
        assert copy.query("SELECT * FROM emails_hooked") == [("c2", "bob@example.com")]
        assert copy.query("SELECT * FROM emails ORDER BY 1") == [("c1", ""), ("c2", "bob@example.com")]
        assert [p[2] for p in copy.info().projections] == [copy.head()[0]] * 2
        assert copy.query("SELECT key_id FROM minies_keys WHERE key IS NULL") == key
        if route == "file->file":
            assert _scan([p for p in tmp_path.iterdir() if p.name.startswith("target")], [email.encode()]) == []


def test_a_copy_one_event_per_chunk_reads_the_same_after_every_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk commits with the keys its events need, after its erasures: every prefix reads."""
    from minies import _copy

    source, target = str(tmp_path / "source.db"), str(tmp_path / "target.db")
    with minies.EventStore(source) as store:
        _customer(store, "c1", "ann@example.com")
        store.forget("c1")
        store.append("c1", [PersonEmailChanged(customer_id="c1", email="ann@example.org")], aggregate_type="Customer")
        _customer(store, "c2", "bob@example.com")
        expected = [(r.position, r.data, minies.forgotten(r)) for r in store.read_all()]
    seen: list[int] = []

    def check(position: int, head: int) -> None:
        with minies.EventStore(target, readonly=True) as copy:
            assert [(r.position, r.data, minies.forgotten(r)) for r in copy.read_all()] == expected[:position]
        seen.append(position)

    monkeypatch.setattr(_copy, "_CHUNK", 1)
    minies.copy(source, target, progress=check)
    assert seen == list(range(1, len(expected) + 1))
    with minies.EventStore(target) as copy:
        assert copy.load(Customer, "c1").email == "ann@example.org" and copy.info().forgotten_subjects == 1


def test_a_copy_repairs_a_target_that_holds_an_erasure_but_not_its_effect(tmp_path: Path) -> None:
    """As an older minies left it: the ``SubjectForgotten`` event copied, the key still live."""
    source, target = str(tmp_path / "source.db"), str(tmp_path / "target.db")
    with minies.EventStore(source) as store:
        _customer(store, "c1", "ann@example.com")
    minies.copy(source, target)
    with minies.EventStore(source) as store:
        store.forget("c1")
        rows = store._conn.execute(store._sql.RAW_EVENTS, (2, 10)).fetchall()
    with minies.EventStore(target) as old:  # what the old copy did: the rows alone
        with old._tx.lock, old._tx.write():
            old._conn.executemany(old._sql.INSERT_EVENT, rows)
        assert next(iter(old.read("c1"))).data.email == "ann@example.com"
    assert minies.copy(source, target).copied == 0
    with minies.EventStore(target) as copy:
        assert next(iter(copy.read("c1"))).data.email == "" and copy.info().forgotten_subjects == 1
        assert copy.query("SELECT count(*) FROM minies_snapshots") == [(0,)]
    assert _scan([p for p in tmp_path.iterdir() if p.name.startswith("target")], [b"ann@example.com"]) == []


def _reads(store: minies.EventStore) -> list[Any]:
    """Everything a reader of the log sees: each event as read, what was forgotten, the keys'
    states, the count of forgotten subjects and every customer as loaded."""
    events = [
        (r.position, r.event_id, r.aggregate_id, r.version, r.timestamp, r.data, r.metadata, minies.forgotten(r))
        for r in store.read_all()
    ]
    keys = store.query("SELECT key_id, subject, key IS NULL FROM minies_keys ORDER BY key_id")
    customers = [
        store.load(Customer, c)
        for (c,) in store.query("SELECT DISTINCT aggregate_id FROM events ORDER BY 1")
        if c != minies.ERASURES
    ]
    return [store.head(), events, keys, store.info().forgotten_subjects, customers]


def test_a_log_moved_file_to_server_to_file_carries_every_erasure_and_leaves_no_byte_of_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Erasures before, between and after copies, file -> PostgreSQL -> file, with snapshots
    and read models: every copy reads the same, and no plaintext or destroyed key of a
    forgotten subject is left in any file but where the README says (PostgreSQL's WAL, and a
    copy's read models until a store with their projections opens it)."""
    edge, hub, office = (
        str(tmp_path / "edge.db"),
        pgserver.fresh_schema(request.getfixturevalue("pg_dsn")),
        str(tmp_path / "office.db"),
    )
    people = {f"c{i}": (f"{uuid.uuid4()}@example.com", f"Name {uuid.uuid4()}") for i in range(1, 7)}
    secrets: dict[str, list[bytes]] = {}

    def join(store: minies.EventStore, customer: str) -> None:
        email, name = people[customer]
        register(store, customer, email, name)
        c = store.load(Customer, customer)
        c.record(PersonEmailChanged(customer_id=customer, email="new." + email))
        store.save(c)  # a snapshot that holds "new." + email
        [(key,)] = store.query("SELECT key FROM minies_keys WHERE subject = ? AND key IS NOT NULL", (customer,))
        secrets[customer] = [bytes(key), email.encode(), name.encode()]

    def files() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.is_file()]

    def left(forgotten: list[str]) -> list[tuple[str, bytes]]:
        with minies.EventStore(hub) as server:
            on_server = _pg_files(server)
        return _scan([*files(), *on_server], [s for c in forgotten for s in secrets[c]])

    models = [Emails(), EmailsWithHook()]
    with minies.EventStore(edge, projections=models) as store:
        for customer in ("c1", "c2", "c3"):
            join(store, customer)
        store.forget("c1")  # before any copy
    minies.copy(edge, hub)
    with minies.EventStore(edge, projections=models) as store:
        join(store, "c4")
        store.forget("c2")  # between copies
        again = f"again.{uuid.uuid4()}@example.com"  # written again: a new key, which stays
        store.append("c2", [PersonEmailChanged(customer_id="c2", email=again)], aggregate_type="Customer")
    minies.copy(edge, hub)
    minies.copy(hub, office)
    with minies.EventStore(office, projections=models):  # the office's read models hold c3's data
        pass
    assert _scan(files(), secrets["c3"][1:])
    with minies.EventStore(edge, projections=models) as store:
        store.forget("c3")  # after
        join(store, "c5")
        store.forget("c5")
    minies.copy(edge, hub)
    minies.copy(hub, office)

    assert left(["c1", "c2", "c5"]) == []
    # the README says so: the office's read models hold c3's e-mail (they keep no name) until they next open
    assert _scan(files(), secrets["c3"]) == [("office.db", secrets["c3"][1])]
    with minies.EventStore(office, projections=models) as store:  # now they clean themselves
        assert store.query("SELECT customer_id FROM emails WHERE email != '' ORDER BY 1") == [("c2",), ("c4",)]
        assert _scan(files(), secrets["c3"]) == []  # and the old pages are gone from the files at once
    assert left(["c1", "c3", "c5"]) == []
    assert left(["c2"]) == []  # its first key; the data recorded later under a new key is live
    assert _scan(files(), [people["c4"][0].encode(), again.encode()])  # live data is still there (the scan works)

    with minies.EventStore(edge) as a, minies.EventStore(hub) as b, minies.EventStore(office) as c:
        assert _reads(a) == _reads(b) == _reads(c)
        assert a.info().forgotten_subjects == 4 and a.load(Customer, "c4").email == "new." + people["c4"][0]
        assert all(store.verify().ok for store in (a, b, c))
