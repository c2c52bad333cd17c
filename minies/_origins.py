"""Provenance: where each event placed by a hub came from, and the proof that nothing of a
device's sequence was lost, reordered, altered or placed twice on the way.

A device numbers its events 1, 2, 3… (its *sequence*) and chains them: each event's *origin
hash* covers the one before it and the event exactly as the device wrote it (its id, stream,
type, payload, metadata, time, the version it expected and the hub position it had seen).
The hub places each in its log with its origin in the metadata (``minies.origin``), or
records an ``EventRejected`` that carries the whole event. So the hub's log alone holds every
device's sequence: ``check`` walks it and recomputes each chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import msgspec

from minies._events import EventRejected

KEY: Final = "minies.origin"
"""The metadata key of a placed event's origin."""
GENESIS: Final = bytes(32)
_sha256 = hashlib.sha256
_NETSTRINGS: Final = b"%d:%s," * 12


class Origin(msgspec.Struct, frozen=True, omit_defaults=True):
    """A placed event's origin, as the hub stores it in the event's metadata."""

    device: str
    seq: int
    hash: str
    at: str  # when the device wrote it (the log's created_at is when the hub placed it)
    expected: int | None
    base: int
    version: int = 0  # the version it had on the device, when the hub placed it elsewhere (accept)


def digest(
    previous: bytes,
    device: str,
    seq: int,
    event_id: str,
    aggregate_id: str,
    aggregate_type: str,
    event_type: str,
    schema_version: int,
    data: str,
    metadata: str,
    created_at: str,
    expected: int | None,
    base: int,
) -> bytes:
    """An event's origin hash: SHA-256 over the previous one and the event as written, each
    field as a netstring (its length, a colon, its UTF-8 bytes, a comma)."""
    v, i, a, t = device.encode(), event_id.encode(), aggregate_id.encode(), aggregate_type.encode()
    e, d, m, c = event_type.encode(), data.encode(), metadata.encode(), created_at.encode()
    n, s, x, b = b"%d" % seq, b"%d" % schema_version, b"" if expected is None else b"%d" % expected, b"%d" % base
    fields = (len(v), v, len(n), n, len(i), i, len(a), a, len(t), t, len(e), e, len(s), s, len(d), d, len(m), m)
    h = _sha256(previous)
    h.update(_NETSTRINGS % (*fields, len(c), c, len(x), x, len(b), b))
    return h.digest()


def stamped(metadata: str, origin: Origin) -> str:
    """The metadata of a placed event: the device's, byte for byte, with its origin last."""
    tail = b'"' + KEY.encode() + b'":' + msgspec.json.encode(origin) + b"}"
    return metadata[:-1] + ("" if metadata == "{}" else ",") + tail.decode()


def unstamped(metadata: str) -> tuple[str, Origin] | None:
    """(the device's metadata, the origin) of a placed event's metadata; None if it has none."""
    if KEY not in metadata:
        return None
    try:
        origin = msgspec.convert(msgspec.json.decode(metadata)[KEY], Origin)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError):
        return None
    tail = '"' + KEY + '":' + msgspec.json.encode(origin).decode() + "}"
    if not metadata.endswith(tail):
        return None
    head = metadata[: -len(tail)]
    return (head[:-1] if head.endswith(",") else head) + "}", origin


class Claim(msgspec.Struct, frozen=True):
    """One entry of a device's sequence as a log holds it: placed at ``position``, or rejected."""

    device: str
    seq: int
    origin: bytes
    recomputed: bytes  # over the event as the log holds it, on the previous entry's stored hash
    position: int


def claims(rows: Iterable[Sequence[Any]]) -> Iterator[Claim]:
    """The origin entries among stored event rows ``(position, event_id, aggregate_id,
    aggregate_type, event_type, version, data, metadata, created_at, schema_version)``, each
    with its hash recomputed on the previous entry's *stored* hash (which ``check`` links)."""
    last: dict[str, bytes] = {}
    for position, event_id, aggregate_id, aggregate_type, event_type, _, data, metadata, _, schema in rows:
        if event_type == EventRejected.event_type:
            try:
                r = msgspec.json.decode(data, type=EventRejected)
                origin = bytes.fromhex(r.origin)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                continue  # not a rejection's shape: check() finds its sequence short
            fields = (r.event_id, r.aggregate_id, r.aggregate_type, r.rejected_type, r.rejected_schema, r.data)
            device, seq, rest = r.device, r.seq, (*fields, r.metadata, r.created_at, r.expected, r.base)
        else:
            found = unstamped(metadata)
            if found is None:
                continue
            device_meta, o = found
            try:
                origin = bytes.fromhex(o.hash)
            except ValueError:
                origin = b""
            fields = (event_id, aggregate_id, aggregate_type, event_type, schema, data)
            device, seq, rest = o.device, o.seq, (*fields, device_meta, o.at, o.expected, o.base)
        previous = last.get(device, GENESIS)
        yield Claim(device, seq, origin, digest(previous, device, seq, *rest), position)
        last[device] = origin


def check(rows: Iterable[Sequence[Any]]) -> tuple[dict[str, tuple[int, bytes]], tuple[int, str] | None]:
    """Walk a log's origin entries: ``({device: (last seq, last origin hash)}, problem)``, the
    problem as ``(position, what)`` for the first entry that is out of sequence (a gap, a
    repeat, a reorder) or whose hash does not match the event (altered), else None."""
    devices: dict[str, tuple[int, bytes]] = {}
    for claim in claims(rows):
        seq, _ = devices.get(claim.device, (0, GENESIS))
        if claim.seq != seq + 1:
            what = "placed twice" if claim.seq <= seq else f"missing {seq + 1}..{claim.seq - 1}"
            return devices, (claim.position, f"device {claim.device!r}: event {claim.seq} out of sequence ({what})")
        if claim.recomputed != claim.origin:
            return devices, (claim.position, f"device {claim.device!r}: event {claim.seq} differs from what it wrote")
        devices[claim.device] = (claim.seq, claim.origin)
    return devices, None
