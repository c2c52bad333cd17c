"""Copying a log to another store, exactly: the same positions, ids, timestamps and hashes.

A copy is incremental: if the target already holds a prefix of the source (the same hash at
its head position), only the rest is copied, so an edge device can ship its new events
again and again; a target that diverged is refused. Each chunk commits on its own, so an
interrupted copy leaves a valid prefix, and the next copy goes on from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from minies import _hub, _personal
from minies._backends import shown, swallowed
from minies._errors import SchemaError, StorageError, SyncError
from minies._projections import Projection
from minies._store import EventStore

_CHUNK: Final = 5_000


class CopyReport(msgspec.Struct, frozen=True):
    """What ``copy`` did: ``copied`` events after ``skipped`` ones the target already held."""

    copied: int
    skipped: int
    head_position: int
    head_hash: str


def copy(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    projections: Iterable[Projection] = (),
) -> CopyReport:
    """Copy the event log (events, event type schemas, snapshots, personal data keys, and a
    hub's record of its devices' sequences) from ``source`` to ``target``.

    Positions, event ids, timestamps, payloads, metadata, schema versions and hashes are kept
    byte for byte, so both have the same head hash. Projections are not copied: a store
    opened on the target with them rebuilds them from the log.

    The erasures among the copied events are applied on the target as ``forget`` applied them
    on the source, in the same transaction: their keys destroyed, the snapshots holding their
    data dropped, the bytes purged. The target's read models clean themselves when a store
    with their projections next opens it, or at once with ``projections``.

    Args:
        source: the store to read (opened read-only).
        target: the store to append to (created if missing).
        progress: called as ``progress(position, head)`` after every chunk.
        projections: the target's read models, kept up to date in every chunk's transaction
            (the target is opened with them).

    Raises:
        SchemaError: the target's log is not a prefix of the source's (they diverged).
        StorageError: either cannot be opened or written, or the copy does not verify.
        ProjectionError: one of ``projections`` failed; the chunk it failed in was not copied.
    """
    with EventStore(source, readonly=True) as src, EventStore(target, projections=projections) as dst:
        if dst._device is not None:
            raise SyncError(f"{shown(target)!r} is a device: it takes in a hub's log by sync, not by copy")
        # the side tables as of the head: an erasure after it comes next time
        with src._tx.lock, src._backend.reading():
            conn = src._tx.open()
            head, head_hash = src.head()
            types: list[Any] = conn.execute(src._sql.EVENT_TYPE_ROWS[src._file_version]).fetchall()
            snapshots: list[Any] = conn.execute(src._sql.SNAPSHOT_ROWS, (head,)).fetchall()
            keys: list[Any] = conn.execute(src._sql.KEY_ROWS).fetchall() if src._file_version >= 4 else []
            cursors = _hub.cursors(conn)  # a hub's: how far it settled each device's sequence
        at = dst.head()[0]
        differs = _first_difference(src, dst, min(at, head))
        if differs is not None or at > head:
            where = f"they differ at position {differs}" if differs else f"the target holds {at - head} more events"
            raise SchemaError(
                f"cannot copy {shown(source)!r} to {shown(target)!r}: the target's log is not a prefix "
                f"of the source's ({where}); copy to a new store"
            )
        skipped, after = at, at
        by_id = {row[0]: row for row in keys}
        while after < head:
            with src._tx.lock:
                # up to the head read above (the source may grow meanwhile; positions have no gaps)
                chunk = (after, min(_CHUNK, head - after))
                rows: list[Any] = src._tx.open().execute(src._sql.RAW_EVENTS, chunk).fetchall()
            with dst._tx.lock, dst._tx.write():
                dst._conn.executemany(dst._sql.INSERT_EVENT, rows)
                stored = dst._conn.execute(dst._sql.STORED_AFTER, (after,)).get  # none swallowed on the way
                if stored != len(rows):
                    raise StorageError(swallowed(stored, len(rows)))
                # with the keys they need (so an interrupted copy leaves a prefix that reads), and
                # the erasures among them applied as their source applied them
                needed = {key_id for row in rows for key_id in _personal.key_ids(row[6])}
                erased = dst._eraser.received(rows, [by_id[k] for k in needed if k in by_id])
            if erased:
                dst._backend.purge(snapshots=True)
            after = rows[-1][0]
            if progress is not None:
                progress(after, head)
        with dst._tx.lock, dst._tx.write():
            # A key destroyed there but live here (a target an older minies copied to): destroyed too.
            live = {row[0] for row in dst._conn.execute(dst._sql.KEY_ROWS).fetchall() if row[2] is not None}
            stale = [(row[0], row[4]) for row in keys if row[2] is None and row[0] in live]
            for key_id, forgotten_at in stale:
                dst._keys.destroy(dst._conn, [key_id], forgotten_at)
            dropped = dst._eraser.drop_sealed_snapshots([key_id for key_id, _ in stale])
            dst._conn.executemany(dst._sql.COPY_KEY, keys)  # the rest: the key that seals snapshots
            dst._conn.executemany(dst._sql.COPY_EVENT_TYPE, types)
            dst._conn.execute(dst._sql.NOTE_EVENT_TYPES, (skipped,))  # versions the source never described
            dst._conn.executemany(dst._sql.COPY_SNAPSHOT, snapshots)
            _hub.keep_cursors(dst._conn, cursors)
        if stale:
            dst._backend.purge(snapshots=bool(dropped))
        report = dst.verify(expect_head=f"{head} {head_hash}" if head else None)
        if not report.ok:
            raise StorageError(f"the copy in {shown(target)!r} does not verify: {report.reason}")
    return CopyReport(head - skipped, skipped, head, head_hash)


def _first_difference(src: EventStore, dst: EventStore, upto: int) -> int | None:
    """The first position in 1..``upto`` where two logs differ, or None if they agree.

    Each hash covers the whole history before it, so a binary search over positions finds it.
    """

    def same(position: int) -> bool:
        with src._tx.lock, dst._tx.lock:
            return bool(
                src._tx.open().execute(src._sql.HASH_AT, (position,)).get
                == dst._tx.open().execute(dst._sql.HASH_AT, (position,)).get
            )

    if upto == 0 or same(upto):
        return None
    low, high = 1, upto
    while low < high:
        middle = (low + high) // 2
        if same(middle):
            low = middle + 1
        else:
            high = middle
    return low
