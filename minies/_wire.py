"""What a device and its hub exchange in one round trip, and how it travels as a file.

A sync is one ``Push`` (the device's pending events, from its sequence's first unsettled
entry, and where its confirmed log ends) answered by one ``Reply`` (what the hub settled, and
its log after the device's head). The same two messages travel in-process, over HTTP, or as
bundle files for sneakernet: msgspec's MessagePack, behind a header naming what is inside.
"""

from __future__ import annotations

import os
from typing import Any, Final, TypeVar

import msgspec

from minies._errors import MiniesError

MAGIC: Final = b"minies-sync/1 "


class Pending(msgspec.Struct, frozen=True, array_like=True):
    """One pending event as the device wrote it, with its place in the device's sequence."""

    seq: int
    event_id: str
    aggregate_id: str
    aggregate_type: str
    event_type: str
    schema_version: int
    data: str
    metadata: str
    created_at: str
    expected: int | None  # None: the append expected any version
    base: int  # the last hub position the device had when it wrote it
    batch: int  # the seq of the first event of its append (a batch is placed whole or not at all)
    origin: bytes
    accept: bool = False  # its aggregate type's policy on conflict is to place it anyway

    def written(self) -> tuple[Any, ...]:
        """The event as the device wrote it, in ``_origins.digest``'s order after the seq."""
        return (
            self.event_id, self.aggregate_id, self.aggregate_type, self.event_type, self.schema_version, self.data,
            self.metadata, self.created_at, self.expected, self.base,
        )  # fmt: skip


class Push(msgspec.Struct, frozen=True, tag="push"):
    device: str
    after: int  # the device's confirmed head: the hub answers with its log after it
    after_hash: bytes
    pending: list[Pending]
    keys: list[tuple[Any, ...]]  # the personal-data key rows the pending events need
    types: list[tuple[Any, ...]]  # the event type descriptions they need
    limit: int = 10_000  # events wanted back at most


class Reply(msgspec.Struct, frozen=True, tag="reply"):
    device: str
    after: int  # the rows follow this position
    rows: list[tuple[Any, ...]]  # the hub's rows, as stored (copy's RAW_EVENTS columns)
    keys: list[tuple[Any, ...]]
    types: list[tuple[Any, ...]]
    acknowledged: int  # the device's sequence is settled (placed or rejected) up to here
    head: int  # the hub's head when it answered (more rows follow if the rows end before it)
    head_hash: bytes
    placed: int = 0  # of the pushed events, how many this exchange placed (the rest: rejected, or already in)
    rejected: int = 0


M = TypeVar("M", Push, Reply)
_decoder: Final = msgspec.msgpack.Decoder(Push | Reply)


def encode(message: Push | Reply) -> bytes:
    return MAGIC + msgspec.msgpack.encode(message)


def decode(raw: bytes, expect: type[M], where: str) -> M:
    """A message from bytes; a clear ``MiniesError`` if it is not one, or not whole."""
    if not raw.startswith(MAGIC):
        raise MiniesError(f"{where} is not a minies sync bundle")
    try:
        message = _decoder.decode(memoryview(raw)[len(MAGIC) :])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise MiniesError(f"{where} is damaged or cut short ({e}); nothing was written") from None
    if not isinstance(message, expect):  # (a union of the two is fine too)
        kind = "a device's push" if isinstance(message, Push) else "a hub's reply"
        raise MiniesError(f"{where} is {kind}, not what this side takes")
    return message


def read_bundle(path: str | os.PathLike[str], expect: type[M]) -> M:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise MiniesError(f"cannot read bundle {os.fspath(path)!r}: {e.strerror or e}") from None
    return decode(raw, expect, f"bundle {os.fspath(path)!r}")


def write_bundle(path: str | os.PathLike[str], message: Push | Reply) -> None:
    """Write whole or not at all: a temporary file, synced, then renamed over ``path``."""
    target = os.fspath(path)
    temporary = f"{target}.partial"
    try:
        with open(temporary, "wb") as f:
            f.write(encode(message))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as e:
        raise MiniesError(f"cannot write bundle {target!r}: {e.strerror or e}") from None


class SyncReport(msgspec.Struct, frozen=True):
    """What ``EventStore.sync`` did.

    Attributes:
        pushed: pending events sent to the hub (the ones it had not settled before).
        placed: of those, the ones the hub placed in its log.
        rejected: the ones it recorded as rejected (a conflict, under the *reject* policy).
        retried: rejections a ``retry`` policy answered with a new command.
        pulled: the hub's events this device took in (its own placed ones included).
        head_position: the hub's head after the sync (this device's confirmed log ends there).
        head_hash: its hash, hex: ``verify(expect_head=f"{head_position} {head_hash}")``
            passes on both sides.
        pending: events still pending (written during the sync, or by a retry after its
            last round).
        round_trips: exchanges with the hub.
    """

    pushed: int
    placed: int
    rejected: int
    retried: int
    pulled: int
    head_position: int
    head_hash: str
    pending: int
    round_trips: int
