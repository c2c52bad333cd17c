"""The hash chain that makes the file tamper-evident, and ``verify``.

The canonical encoding (stable across versions; docs/how-to/audit-a-file.md repeats it for auditors)::

    hash(n) = SHA-256( hash(n-1) || netstring(position) || netstring(event_id)
                       || netstring(aggregate_id) || netstring(aggregate_type)
                       || netstring(event_type) || netstring(version) || netstring(data)
                       || netstring(metadata) || netstring(created_at) )

    hash(0)      = 32 zero bytes
    netstring(s) = <byte length of UTF-8(s), decimal ASCII> ":" UTF-8(s) ","
    integers (position, version) are written in decimal ASCII; data, metadata and created_at
    are the exact column text. An event whose schema_version is not 1 appends one more
    netstring(schema_version) after created_at (so files written before schema versions
    existed keep their hashes).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import msgspec

from minies import _origins, _personal
from minies._backends import Connection, has_table, is_url, open_backend
from minies._errors import StorageError
from minies._transactions import Transactions

GENESIS: Final = bytes(32)
_sha256 = hashlib.sha256


def _net(text: str) -> bytes:
    raw = text.encode()
    return b"%d:%s," % (len(raw), raw)


def chain_batch(
    previous: bytes,
    position: int,
    event_ids: list[str],
    aggregate_id: str,
    aggregate_type: str,
    event_types: list[str],
    version: int,
    datas: list[str],
    metadata: str,
    created_at: str,
    schema_versions: list[int],
) -> list[bytes]:
    """``hash(n)`` for a batch of one aggregate's events (positions and versions counting up
    from the given ones), encoding the fields the batch shares once.

    The ``event_ids`` must be canonical UUID strings (36 ASCII characters), as ``append``
    guarantees. ``verify`` computes the same encoding in SQL (see ``conn.sql.CHAIN``).
    """
    shared = _net(aggregate_id) + _net(aggregate_type)
    tail = _net(metadata) + _net(created_at)
    sha256 = _sha256
    digests = []
    last_type, typed = "", b""
    for event_id, event_type, data, schema_version in zip(event_ids, event_types, datas, schema_versions, strict=True):
        if event_type != last_type:
            last_type, typed = event_type, _net(event_type)
        p = b"%d" % position
        v = b"%d" % version
        raw = data.encode()
        h = sha256(previous)
        h.update(
            b"%d:%s,36:%s,%s%s%d:%s,%d:%s,%s"
            % (len(p), p, event_id.encode(), shared, typed, len(v), v, len(raw), raw, tail)
        )
        if schema_version != 1:
            h.update(_net(str(schema_version)))
        previous = h.digest()
        digests.append(previous)
        position += 1
        version += 1
    return digests


def chain_row(previous: bytes, row: Sequence[Any]) -> bytes:
    """``hash(n)`` of one stored row (``INSERT_EVENT``'s columns; its own hash not read): the
    same bytes ``chain_batch`` hashes, for rows that share nothing (a hub's, a sync's)."""
    position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created, _, schema = row
    p, v = b"%d" % position, b"%d" % version
    i, a, t, e = event_id.encode(), aggregate_id.encode(), aggregate_type.encode(), event_type.encode()
    d, m, c = data.encode(), metadata.encode(), created.encode()
    h = _sha256(previous)
    h.update(
        b"%d:%s,%d:%s,%d:%s,%d:%s,%d:%s,%d:%s,%d:%s,%d:%s,%d:%s,"
        % (len(p), p, len(i), i, len(a), a, len(t), t, len(e), e, len(v), v, len(d), d, len(m), m, len(c), c)
    )
    if schema != 1:
        h.update(_net(str(schema)))
    return h.digest()


class VerifyReport(msgspec.Struct, frozen=True):
    """What ``EventStore.verify`` found.

    Attributes:
        ok: True if every check passed.
        events_checked: how many events were re-hashed.
        first_bad_position: the first position that failed a check; None when all is well, or
            when what is wrong is the file or its guards, not one event (``reason`` says what).
        reason: why the file failed, or "" when ok.
        head_position: the last position checked (0 for an empty log).
        head_hash: that event's hash in hex ("" for an empty log); publish it, then
            ``verify(expect_head=...)`` later proves the file still extends that history.
        snapshots_checked: with ``verify(snapshots=True)``: snapshots compared with a replay.
        snapshots_unchecked: snapshots whose aggregate class was not imported.
        seals: with ``verify(trust=...)``: the seals checked (each by a trusted key, its
            signature good, the hash it signed the chain's).
        sealed_position: the head position the last good seal signed (0: none).
        sealed_by: that seal's key fingerprint (SHA-256 of the raw public key, hex).
        sealed_at: when it was sealed (``2026-03-04T15:23:47.123456Z``).
        unsealed: events after the last seal (no seal vouches for them: they could be changed
            or cut off without a trace).
        devices: with ``verify(origins=True)``: the devices whose sequences were checked.
    """

    ok: bool
    events_checked: int
    first_bad_position: int | None
    reason: str
    head_position: int
    head_hash: str
    snapshots_checked: int = 0
    snapshots_unchecked: int = 0
    seals: int = 0
    sealed_position: int = 0
    sealed_by: str = ""
    sealed_at: str = ""
    unsealed: int = 0
    devices: int = 0

    def __bool__(self) -> bool:
        return self.ok


_CHUNK: Final = 4096


def verify(
    conn: Connection,
    backend_check: Callable[[], tuple[int | None, str | None]],
    *,
    expect_head: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Re-check the whole file. Streams the log in chunks, so memory stays constant.

    ``backend_check`` gives the storage's own verdict (see ``Backend.check_structure``; it may
    be running on another thread and connection meanwhile: it does not depend on the chain).
    """
    total: int = conn.execute(conn.sql.HEAD_POSITION).get
    expected_at, expected_hash = parse_head(expect_head) if expect_head is not None else (None, None)
    matches = 0
    sha256 = _sha256
    previous = GENESIS
    position = 0
    bad: tuple[int | None, str] | None = None  # (no position: a finding about the file, not one event)
    seen_expected = expected_hash is None
    mark = _personal.MARK_BYTES
    sealed: dict[str, int] = {}  # each key that sealed a value, and the first event it sealed
    for rows in _chunks(conn):
        for pos, stored, canonical in rows:
            if pos != position + 1:
                bad = (position + 1, f"position {position + 1} is missing (next stored is {pos})")
                break
            digest = sha256(previous + canonical).digest()
            if digest != stored:
                bad = (pos, f"event at position {pos} does not match its hash (altered, inserted or reordered)")
                break
            at_expected = expected_at is None or expected_at == pos
            if expected_hash is not None and at_expected and digest.hex().startswith(expected_hash):
                seen_expected = True
                matches += 1
            if mark in canonical:  # a personal field: its key must be there, or forgotten
                for key_id in _personal.key_ids(_data(canonical)):
                    sealed.setdefault(key_id, pos)
            previous = digest
            position = pos
        if bad:
            break
        if progress:
            progress(position, total)
    retyped, problem = backend_check()
    if retyped is not None and retyped <= total and (bad is None or retyped <= (bad[0] or total)):
        # the chain verified every event before it, so their stored hashes are the chain's
        bad = (retyped, f"event at position {retyped} has a column of the wrong type (altered)")
        position = retyped - 1
        previous = conn.execute(conn.sql.HASH_AT, (position,)).get  # (None before position 1: unused)
    if bad is None:
        bad = _structure(conn, position, problem)
    if bad is None and sealed:
        bad = _lost_keys(conn, sealed)
    if bad is None and not seen_expected:
        bad = (position + 1, f"the expected head {expect_head} is not in this history (rewritten or truncated)")
    if bad is None and matches > 1:
        bad = (position, f"the expected head {expect_head} matches {matches} events; give more of the hash")
    first, reason = bad if bad else (None, "")
    return VerifyReport(
        ok=bad is None,
        events_checked=position,
        first_bad_position=first,
        reason=reason,
        head_position=position,
        head_hash=previous.hex() if position else "",
    )


def verify_store(
    tx: Transactions, expect_head: str | None, progress: Callable[[int, int], None] | None
) -> VerifyReport:
    """``verify`` on a store's connection, in one read transaction (a consistent view while
    others append); a damaged file is a report, not an error."""
    with tx.lock:
        conn = tx.open()
        try:
            with tx.backend.reading():
                check = tx.backend.check_structure()
                return verify(conn, check, expect_head=expect_head, progress=progress)
        except conn.Error as e:
            damage = tx.backend.damage(e)
            if damage is None:
                tx.raise_error(e, "cannot verify")
            return VerifyReport(False, 0, None, f"the file is damaged: {damage}", 0, "")


def repair(path: str | os.PathLike[str], *, timeout: float = 30.0) -> list[str]:
    """Guard a log again: re-create minies' own triggers (those missing or altered, say by a
    tool that rebuilt the table) if the log still verifies, in one write transaction.

    A store refuses to write to a log whose guards are missing or overridden; this is how it
    gets them back. It drops nothing minies did not create.

    Returns:
        The names of the triggers re-created (empty: none was missing).

    Raises:
        SchemaError: the log does not verify (restore it from a backup), or triggers minies did
            not create are on the log or its tables (drop them first); nothing was changed.
        StorageError: the file cannot be opened or written.
    """
    if not is_url(path) and not os.path.isfile(path):  # (opening it for writing would create it)
        raise StorageError(f"cannot repair {os.fspath(path)!r}: no such file")
    backend = open_backend(path, durability="full", timeout=timeout, readonly=False)
    try:
        return backend.repair(_problem)
    finally:
        backend.close()


def _problem(conn: Connection, check: Callable[[], tuple[int | None, str | None]]) -> str | None:
    report = verify(conn, check)
    if report.ok:
        return None
    return (
        report.reason if report.first_bad_position is None else f"position {report.first_bad_position}: {report.reason}"
    )


def _data(canonical: bytes) -> str:
    """The payload in an event's canonical encoding: its seventh netstring."""
    at = 0
    for _ in range(6):
        colon = canonical.index(b":", at)
        at = colon + 1 + int(canonical[at:colon]) + 1
    colon = canonical.index(b":", at)
    return canonical[colon + 1 : colon + 1 + int(canonical[at:colon])].decode()


def _lost_keys(conn: Connection, sealed: dict[str, int]) -> tuple[int, str] | None:
    """The first event sealed with a key the log lost other than by ``forget``: a key that is
    missing, or destroyed with no ``SubjectForgotten`` event for its subject."""
    keys = {key_id: (subject, key) for key_id, subject, key, _, _ in conn.execute(conn.sql.KEY_ROWS)}
    erased = {msgspec.json.decode(data)["subject"] for (data,) in conn.execute(conn.sql.ERASED_AFTER, (0,))}
    for key_id, position in sorted(sealed.items(), key=lambda item: item[1]):
        subject, key = keys.get(key_id, (None, None))
        if subject is None:
            return position, (
                f"event at position {position} holds personal data sealed with key {key_id}, which the log does "
                "not hold (deleted outside forget: those fields can never be read again)"
            )
        if key is None and subject not in erased:
            return position, (
                f"event at position {position} holds personal data sealed with key {key_id}, which was destroyed "
                "with no SubjectForgotten event for its subject (outside forget)"
            )
    return None


def _chunks(conn: Connection) -> Iterator[list[Any]]:
    after = 0
    while True:
        rows: list[Any] = conn.execute(conn.sql.CHAIN, (after, _CHUNK)).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _structure(conn: Connection, head: int, problem: str | None) -> tuple[int | None, str] | None:
    """Checks beyond the chain: version continuity, then the backend's own (immutability
    guards, storage integrity). These are findings about the file, not about one event: no
    position (the chain of every event up to ``head`` verified)."""
    gap = conn.execute(conn.sql.VERSION_GAPS).fetchone()
    if gap:
        aggregate_id, count, low, high = gap
        return (
            None,
            f"aggregate {aggregate_id!r} has {count} events with versions {low}..{high}: not contiguous",
        )
    return None if problem is None else (None, problem)


_HEAD = re.compile(r"(?:(\d+)\s+)?([0-9a-fA-F]{12,64})")


def parse_head(text: str) -> tuple[int | None, str]:
    """``(position or None, lowercase hex hash or prefix)`` from what ``head`` printed
    (``"POSITION HASH"``), or a hash alone, or at least 12 hex digits of one.

    Raises:
        ValueError: anything else.
    """
    found = _HEAD.fullmatch(text.strip()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(
            f"expect_head must be what `minies head` prints (POSITION HASH), or a chain hash "
            f"(at least 12 of its 64 hex digits), got {text!r:.100}"
        )
    return (int(found.group(1)) if found.group(1) else None, found.group(2).lower())


ORIGIN_ROWS: Final = (
    "SELECT position, CAST(event_id AS TEXT), aggregate_id, aggregate_type, event_type, version, CAST(data AS TEXT),"
    " CAST(metadata AS TEXT), NULL, schema_version FROM events WHERE position > ?"
    " AND (event_type = 'minies.EventRejected' OR CAST(metadata AS TEXT) LIKE '%\"minies.origin\"%')"
    " ORDER BY position LIMIT ?"
)
_HUB_CURSORS: Final = "SELECT device, seq, origin FROM minies_origins"


def verify_origins(tx: Transactions, report: VerifyReport, device: tuple[str, list[Any], Any] | None) -> VerifyReport:
    """``verify(origins=True)``: every device's sequence in the log is complete, in order, each
    event as its device wrote it and settled once (placed, or recorded as rejected); a hub's
    cursors agree with its log; a device's pending tail continues its own sequence.

    ``device``: on a device, ``(its id, its pending rows, its (seq, origin) state)``."""

    def rows() -> Iterator[Any]:
        after = 0
        while True:
            with tx.lock:
                page: list[Any] = tx.open().execute(ORIGIN_ROWS, (after, _CHUNK)).fetchall()
            yield from page
            if len(page) < _CHUNK:
                return
            after = page[-1][0]

    devices, found = _origins.check(rows())
    problem: tuple[int | None, str] | None = found
    if problem is None:
        with tx.lock:
            conn = tx.open()
            cursors: list[Any] = conn.execute(_HUB_CURSORS).fetchall() if has_table(conn, "minies_origins") else []
        for name, seq, origin in cursors:
            if devices.get(name, (0, _origins.GENESIS)) != (seq, bytes.fromhex(origin)):
                held = devices.get(name, (0,))[0]
                problem = (None, f"device {name!r}: the hub settled its events up to {seq}, the log holds {held}")
                break
    if problem is None and device is not None:
        problem = _pending_problem(devices, *device)
    counted = len(devices)
    if problem is None:
        return msgspec.structs.replace(report, devices=counted)
    position, what = problem
    return msgspec.structs.replace(report, ok=False, first_bad_position=position, reason=what, devices=counted)


def _pending_problem(
    devices: dict[str, tuple[int, bytes]], name: str, pending: list[Any], settled: Any
) -> tuple[int | None, str] | None:
    """A device's pending tail must continue its sequence from where its log says the hub
    settled it, each event as the device wrote it."""
    seq, origin = devices.get(name, (0, _origins.GENESIS))
    if (seq, origin) != (settled[0], bytes(settled[1])):
        return None, f"this device's sequence was settled up to event {settled[0]}; its log holds {seq}"
    for row in pending:
        _, event_id, aggregate_id, aggregate_type, event_type, _, data, meta, created, _, schema = row[:11]
        if row[11] != seq + 1:
            return None, f"this device's pending event {row[11]} does not follow {seq} (one was lost or reordered)"
        origin = _origins.digest(
            origin,
            name,
            row[11],
            event_id,
            aggregate_id,
            aggregate_type,
            event_type,
            schema,
            data,
            meta,
            created,
            row[13],
            row[14],
        )
        if origin != bytes(row[12]):
            return None, f"this device's pending event {row[11]} differs from what it wrote"
        seq += 1
    return None
