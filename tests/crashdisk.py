"""A simulated disk for power-cut and I/O-error tests, the way SQLite tests itself.

``CrashDisk`` is an apsw VFS that inherits the real unix VFS by name: locking, reads and the
WAL's shared memory are the real ones (the ``xShm*`` methods are inherited, not wrapped).
It overrides ``xWrite``, ``xTruncate`` and ``xSync`` of every file SQLite opens (the main
file, the WAL, journals, a backup's target) and keeps, per file, what a sync has made
durable and what was written since. Every write also reaches the real file, so the workload
runs as usual.

At a chosen operation the **power goes out**: each file is rebuilt, in a fresh folder, from
what was durable plus a part of what was not, according to a mode:

- ``lost``: every unsynced write is lost;
- ``subset``: each unsynced write survives or not, at random (the disk reordered them);
- ``torn``: unsynced writes are torn into 512-byte sectors, each surviving or not;
- ``garbage``: as ``torn``, but a sector that did not survive holds garbage, not old data.

The operation at the cut raises ``PowerCut``, so the workload stops there as a process would;
anything the dead process still does (closing, rolling back) is ignored, and ``alive`` tells
the workload whether an acknowledgement it got could have been seen by anyone. The rebuilt
folder is then opened with the normal VFS and checked.

The same VFS **injects I/O errors**: the n-th write, sync or truncate on files whose name
ends with a given suffix fails once (``SQLITE_IOERR``), and the disk goes on working.

What is not modelled: a file's directory entry is taken as durable once the file exists (SQLite
syncs the directory when it creates a journal or WAL, with ``SQLITE_OPEN_..`` dirsync), and a
deleted file is gone at once (SQLite deletes the WAL only after a checkpoint synced the
database, so nothing depends on the WAL afterwards).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import apsw

SECTOR: Final = 512
MODES: Final = ("lost", "subset", "torn", "garbage")


class PowerCut(Exception):
    """Raised from the disk once the power is out: the workload stops here."""


@dataclass
class _File:
    """One file as the disk sees it: durable content and the operations since the last sync."""

    durable: bytearray
    pending: list[tuple[str, int, bytes]] = field(
        default_factory=list
    )  # ("write", offset, data) | ("truncate", size, b"")

    def sync(self) -> None:
        self.durable = _apply(self.durable, self.pending)
        self.pending = []


def _apply(content: bytearray, operations: list[tuple[str, int, bytes]]) -> bytearray:
    result = bytearray(content)
    for kind, where, data in operations:
        if kind == "truncate":
            del result[where:]
        else:
            if len(result) < where:
                result.extend(bytes(where - len(result)))
            result[where : where + len(data)] = data
    return result


class CrashDisk(apsw.VFS):
    """The simulated disk. Use it as a context manager: it is the default VFS inside.

    Args:
        cut_at: the 1-based number of the write/truncate/sync at which the power goes out
            (None: never; ``operations`` then counts them, for choosing a cut point).
        mode: one of ``MODES``.
        seed: makes the choice of surviving writes and sectors replayable.
        fail: ``(suffix, kind, n)``: the n-th ``kind`` ("write", "sync" or "truncate") on a
            file whose name ends with ``suffix`` raises an I/O error, once.
        sync_seconds: every sync also sleeps this long (a slow disk, on which the writes of
            many threads queue behind each commit and share the next one).
        fail_every: ``(suffix, kind, n)``: every n-th ``kind`` on such a file fails (a flaky
            disk, for the concurrent histories).
    """

    def __init__(
        self,
        *,
        cut_at: int | None = None,
        mode: str = "lost",
        seed: int = 0,
        fail: tuple[str, str, int] | None = None,
        sync_seconds: float = 0.0,
        fail_every: tuple[str, str, int] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.cut_at = cut_at
        self.mode = mode
        self.random = random.Random(seed)
        self.fail = fail
        self.failed = False
        self.sync_seconds = sync_seconds
        self.fail_every = fail_every
        self.counted = 0  # operations fail_every has counted
        self.operations = 0
        self.files: dict[str, _File] = {}
        self.out = False  # the power is out
        self.rebuilt: dict[str, bytes] | None = None
        super().__init__("crashdisk", "unix", makedefault=True)

    def __enter__(self) -> CrashDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()
        apsw.set_default_vfs("unix")

    # ------------------------------------------------------------------ what SQLite calls
    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if isinstance(path, str) and path not in self.files:
            content = b""
            if os.path.exists(path):
                with open(path, "rb") as f:
                    content = f.read()
            self.files[path] = _File(bytearray(content))
        return _CrashFile(self, path, name, flags)

    @property
    def alive(self) -> bool:
        return not self.out

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if self.out:
            return
        super().xDelete(filename, syncdir)
        self.files.pop(filename, None)

    def operation(self, path: str | None, kind: str) -> bool:
        """Count one write/truncate/sync; cut the power or fail as planned. False: ignore it
        (the power is out)."""
        if self.out:
            return False
        self.operations += 1
        if self.cut_at is not None and self.operations >= self.cut_at:
            self.cut()
            raise PowerCut("the power went out")
        every = self.fail_every
        if every is not None and path is not None and path.endswith(every[0]) and kind == every[1]:
            self.counted += 1
            if self.counted % every[2] == 0:
                raise apsw.IOError(f"injected {kind} error on {os.path.basename(path)}")
        if self.fail is not None and not self.failed and path is not None and path.endswith(self.fail[0]):
            suffix, wanted, n = self.fail
            if kind == wanted:
                self.fail = (suffix, wanted, n - 1)
                if n <= 1:
                    self.failed = True
                    raise apsw.IOError(f"injected {kind} error on {os.path.basename(path)}")
        return True

    def cut(self) -> None:
        """Take the power away: decide what each file holds now."""
        self.out = True
        self.rebuilt = {path: bytes(self._survivor(f)) for path, f in self.files.items()}

    def _survivor(self, f: _File) -> bytearray:
        if self.mode == "lost" or not f.pending:
            return bytearray(f.durable)
        coin = self.random.random
        if self.mode == "subset":
            return _apply(f.durable, [op for op in f.pending if coin() < 0.5])
        kept: list[tuple[str, int, bytes]] = []
        for kind, where, data in f.pending:
            if kind == "truncate":
                if coin() < 0.5:
                    kept.append((kind, where, data))
                continue
            for start in range(0, len(data), SECTOR):
                sector = data[start : start + SECTOR]
                if coin() < 0.5:
                    kept.append(("write", where + start, sector))
                elif self.mode == "garbage":
                    kept.append(("write", where + start, self.random.randbytes(len(sector))))
        return _apply(f.durable, kept)

    def write_rebuilt(self, folder: str, rename: Callable[[str], str] = os.path.basename) -> None:
        """Write the files as the power cut left them into ``folder``."""
        assert self.rebuilt is not None, "the power never went out"
        os.makedirs(folder, exist_ok=True)
        for path, content in self.rebuilt.items():
            if os.path.exists(path) or content:
                with open(os.path.join(folder, rename(path)), "wb") as f:
                    f.write(content)


class _CrashFile(apsw.VFSFile):
    def __init__(self, disk: CrashDisk, path: str | None, name: Any, flags: list[int]) -> None:
        self.disk = disk
        self.path = path
        self.model = disk.files.get(path) if path is not None else None
        super().__init__("unix", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if not self.disk.operation(self.path, "write"):
            return
        super().xWrite(data, offset)
        if self.model is not None:
            self.model.pending.append(("write", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:
        if not self.disk.operation(self.path, "truncate"):
            return
        super().xTruncate(newsize)
        if self.model is not None:
            self.model.pending.append(("truncate", newsize, b""))

    def xSync(self, flags: int) -> None:
        if not self.disk.operation(self.path, "sync"):
            return
        super().xSync(flags)
        if self.model is not None:
            self.model.sync()
        if self.disk.sync_seconds:
            time.sleep(self.disk.sync_seconds)  # releases the GIL, as a real fsync's wait does
