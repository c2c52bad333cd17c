"""Snapshots: an aggregate's encoded state at a version, kept beside the log.

A snapshot is trusted only if it was written for the same class shape. The shape's
fingerprint is derived from the class's msgspec JSON Schema (every field and type) plus its
``snapshot_version``, and is compared *before* decoding; a mismatch or a failed decode means
"no snapshot", never a half-decoded state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import msgspec

from minies import _codec, _events, _personal, _upcasters
from minies._aggregate import Aggregate
from minies._audit import VerifyReport
from minies._backends import Connection
from minies._keyring import Keyring
from minies._replay import Replayer
from minies._transactions import Transactions

A = TypeVar("A", bound=Aggregate)

KEEP: Final = 3
"""Snapshots kept per aggregate; older ones are pruned when a new one is written."""

_fingerprints: dict[tuple[type[Aggregate], int], str] = {}
_unsnapshottable: set[type[Aggregate]] = set()


def fingerprint(cls: type[Aggregate]) -> str:
    """A short hash of what a snapshot depends on: the class's qualified name, fields, types
    and snapshot_version, and the event schema (versions and renames) its events read with.

    Cached until an event class, upcaster or rename is registered.
    """
    key = (cls, _events.generation)
    value = _fingerprints.get(key)
    if value is None:
        value = _fingerprints[key] = shape_hash(cls, _upcasters.signature())
    return value


def shape_hash(cls: type[Aggregate], event_schema: list[object]) -> str:
    """The fingerprint's recipe (part of the file format: snapshots of older files depend on it)."""
    shape = msgspec.json.encode(
        [cls.__module__, cls.__qualname__, cls.snapshot_version, msgspec.json.schema(cls), event_schema],
        order="sorted",
    )
    return hashlib.sha256(shape).hexdigest()[:32]


def write(conn: Connection, aggregate: Aggregate, seal: Callable[[str, str], str] | None = None) -> str | None:
    """Store ``aggregate``'s state at its version and prune older snapshots.

    Only a state that decodes back to an equal aggregate is stored (an untyped ``dict`` with
    int keys, a NaN, a tuple in a ``list`` field would not): loading from a snapshot must give
    exactly what a full replay gives. Otherwise nothing is stored, that class is not
    snapshotted again, and the first time the reason is returned (the caller warns).
    ``seal(state, where)``, if given, encrypts the state (a store with a key-encryption key).
    """
    cls = type(aggregate)
    if cls in _unsnapshottable:
        return None
    state = _codec.encode(aggregate)
    try:
        decoded = msgspec.json.decode(state, type=cls)
        field = next((f for f in cls.__struct_fields__ if getattr(decoded, f) != getattr(aggregate, f)), None)
    except msgspec.ValidationError as e:
        field = _codec.field_named(str(e), cls)
    if field is not None:
        _unsnapshottable.add(cls)
        return (
            f"{cls.__qualname__} is not snapshotted: its field {field!r} = {getattr(aggregate, field)!r:.80} "
            "would not read back as itself (give it a precise type, e.g. dict[int, int]); loads replay instead"
        )
    conn.execute(
        conn.sql.SAVE_SNAPSHOT,
        (
            aggregate.id,
            aggregate.version,
            cls.aggregate_type,
            fingerprint(cls),
            state.decode() if seal is None else seal(state.decode(), f"{aggregate.id}/{aggregate.version}"),
            _codec.now_text(),
        ),
    )
    conn.execute(conn.sql.PRUNE_SNAPSHOTS, (aggregate.id, aggregate.id, KEEP))
    return None


def latest(
    conn: Connection, cls: type[A], aggregate_id: str, upto: int, open_state: Callable[[str, str], str | None]
) -> A | None:
    """The newest usable snapshot at or below ``upto``, decoded, or None. ``open_state(state,
    where)`` decrypts a sealed state (None if it cannot: then the snapshot is not usable)."""
    wanted = fingerprint(cls)
    for version, stored_fingerprint, state in conn.execute(conn.sql.LATEST_SNAPSHOT, (aggregate_id, upto, KEEP)):
        if stored_fingerprint != wanted:
            continue
        if state.startswith(_personal.MARK):
            state = open_state(state, f"{aggregate_id}/{version}")
            if state is None:
                continue
        try:
            aggregate = msgspec.json.decode(state, type=cls)
        except msgspec.DecodeError:
            continue
        if aggregate.id == aggregate_id and aggregate.version == version:
            return aggregate
    return None


def stats(conn: Connection) -> list[tuple[str, int, int]]:
    """(aggregate_type, snapshot count, bytes of state) per aggregate type."""
    rows: list[tuple[str, int, int]] = conn.execute(conn.sql.SNAPSHOT_STATS).fetchall()
    return rows


def drop(conn: Connection, aggregate_type: str) -> int:
    """Delete every snapshot of one aggregate type; return how many were deleted."""
    conn.execute(conn.sql.DROP_SNAPSHOTS, (aggregate_type,))
    return conn.changes()


def classes() -> Iterator[type[Aggregate]]:
    """Every Aggregate subclass imported in this process."""
    todo = list(Aggregate.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        yield cls


def check_all(
    rows: list[tuple[str, int, str, str]],
    stored: Callable[[type[Aggregate], str, int], Aggregate | None],
    replayed: Callable[[type[Aggregate], str, int], Aggregate],
) -> tuple[int, int, str]:
    """Compare every snapshot (``rows``: aggregate id, version, aggregate type, fingerprint)
    whose class is imported with a replay of its events: ``(checked, unchecked, the first
    difference or "")``. ``stored(cls, id, version)`` reads a snapshot, ``replayed(cls, id,
    version)`` folds the log up to that version.

    Snapshots are outside the hash chain, so a file edited by hand can hold a forged state
    that ``load`` would return; this is the check that finds it."""
    by_fingerprint: dict[str, type[Aggregate]] = {}
    for known in classes():
        with contextlib.suppress(Exception):  # a class msgspec cannot describe has no snapshots
            by_fingerprint.setdefault(fingerprint(known), known)
    checked = unchecked = 0
    for aggregate_id, version, aggregate_type, stored_fingerprint in rows:
        cls = by_fingerprint.get(stored_fingerprint)
        snapped = None if cls is None or cls.aggregate_type != aggregate_type else stored(cls, aggregate_id, version)
        if cls is None or snapped is None or snapped.version != version:
            unchecked += 1  # no class here, or sealed by a key this store cannot open: never used either
            continue
        checked += 1
        if _codec.encode(replayed(cls, aggregate_id, version)) != _codec.encode(snapped):
            return (
                checked,
                unchecked,
                f"the snapshot of aggregate {aggregate_id!r} at version {version} differs from a replay of its "
                "events (edited outside minies, or apply() changed meaning without a snapshot_version bump); "
                f"drop it with `minies snapshots --drop {aggregate_type}`",
            )
    return checked, unchecked, ""


def verify(tx: Transactions, keys: Keyring, replayer: Replayer, report: VerifyReport) -> VerifyReport:
    """``verify(snapshots=True)``: ``report`` with every snapshot compared with a replay."""
    with tx.lock, tx.translate("cannot read the snapshots"):
        rows: list[Any] = tx.open().execute(tx.sql.ALL_SNAPSHOTS).fetchall()

    def stored(cls: type[Aggregate], aggregate_id: str, version: int) -> Aggregate | None:
        with tx.lock, tx.translate("cannot read the snapshots"):
            conn = tx.open()
            return latest(conn, cls, aggregate_id, version, functools.partial(keys.open_state, conn))

    def replayed(cls: type[Aggregate], aggregate_id: str, version: int) -> Aggregate:
        aggregate = cls(id=aggregate_id)
        aggregate.version = replayer.replay(aggregate_id, cls.aggregate_type, 0, version, aggregate.apply)
        return aggregate

    checked, unchecked, problem = check_all(rows, stored, replayed)
    if problem:
        return msgspec.structs.replace(
            report, ok=False, reason=problem, snapshots_checked=checked, snapshots_unchecked=unchecked
        )
    return msgspec.structs.replace(report, snapshots_checked=checked, snapshots_unchecked=unchecked)
