"""Damaged files and media: a clear error, never a crash or a silent wrong answer."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from domain import MoneyDeposited, OrderPlaced, SnappedAccount

import minies


def fill(path: str, n: int = 50) -> str:
    with minies.EventStore(path) as store:
        for i in range(n):
            store.append(f"a{i % 5}", [MoneyDeposited(amount=i)], aggregate_type="Account")
        return store.head()[1]


def test_a_db_copied_without_its_wal_is_caught_by_the_published_head(tmp_path: Path) -> None:
    path = str(tmp_path / "live.db")
    head = fill(path)
    store = minies.EventStore(path)  # a process still running: its last commits sit in the -wal
    store._conn.pragma("wal_autocheckpoint", 0)
    for i in range(20):
        store.append("late", [MoneyDeposited(amount=i)], aggregate_type="Account")
    late_head = store.head()[1]
    copy = str(tmp_path / "copy.db")
    shutil.copy(path, copy)  # the careless copy: no -wal
    with minies.EventStore(copy, readonly=True) as copied:
        assert copied.head()[0] == 50  # the unflushed events are simply not in the copy
        assert copied.verify(expect_head=head).ok
        assert not copied.verify(expect_head=late_head).ok  # and the published head says so
    backup = str(tmp_path / "backup.db")
    store.backup(backup)  # the right way
    store.close()
    with minies.EventStore(backup, readonly=True) as copied:
        assert copied.head() == (70, late_head) and copied.verify().ok


def test_a_wal_from_another_file_is_a_clear_error_not_a_wrong_answer(tmp_path: Path) -> None:
    one, two = str(tmp_path / "one.db"), str(tmp_path / "two.db")
    fill(one, 30)
    fill(two, 10)
    writer = minies.EventStore(two)
    writer._conn.pragma("wal_autocheckpoint", 0)
    writer.append("x", [OrderPlaced(customer_id="c", total=1.0)], aggregate_type="Order")
    shutil.copy(two + "-wal", one + "-wal")  # the wrong -wal next to a database
    writer.close()
    try:
        with minies.EventStore(one) as store:
            report = store.verify()
            events = [(r.aggregate_id, r.data) for r in store.read_all()] if report.ok else []
    except minies.StorageError as e:  # SQLite replayed the foreign frames: the file says it is damaged
        assert "damaged" in str(e)
        return
    assert not report.ok or (report.events_checked == 30 and len(events) == 30)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_files_are_a_clear_error(tmp_path: Path, cut: float) -> None:
    path = str(tmp_path / "cut.db")
    fill(path, 3000)
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * cut))
    with pytest.raises(minies.StorageError, match="the file is damaged .database disk image is malformed.; restore it"):
        minies.EventStore(path)


def test_cli_says_damaged(tmp_path: Path) -> None:
    path = str(tmp_path / "cut.db")
    fill(path, 3000)
    with open(path, "r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xa5" * 4096 * 4)
    result = subprocess.run([sys.executable, "-m", "minies", "verify", path], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == "NOT OK: the file is damaged: database disk image is malformed\n"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills up (needs root, as CI has)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk(tiny_disk: Path) -> None:
    path = str(tiny_disk / "full.db")
    ballast = tiny_disk / "ballast"
    with minies.EventStore(path) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        ballast.write_bytes(b"\0" * (1024 * 1024 - 200 * 1024))  # leave ~200 KiB free
        big = [OrderPlaced(customer_id="x" * 1000, total=1.0) for _ in range(100)]
        failures = 0
        for i in range(20):
            try:
                store.append(f"o{i}", big, aggregate_type="Order")
            except minies.StorageError as e:
                assert (
                    "the disk is full (or the file reached its size limit); nothing from this call was written"
                    in str(e)
                )
                failures += 1
                break
        assert failures == 1
        assert store.version(f"o{i}") == 0 and store.version("a") == 1
        ballast.unlink()  # space freed: usable again
        assert store.append(f"o{i}", big, aggregate_type="Order") == 100
        assert store.verify().ok


def test_read_only_media(tiny_disk: Path) -> None:
    path = str(tiny_disk / "ro.db")
    fill(path, 5)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with (
        pytest.raises(minies.StorageError, match="the file or its directory is read-only"),
        minies.EventStore(path) as store,
    ):
        store.append("a0", [MoneyDeposited(amount=1)], aggregate_type="Account")
    with minies.EventStore(path, readonly=True) as store:  # an auditor's copy on read-only media
        assert store.head()[0] == 5 and store.verify().ok


def unprivileged(call: Callable[[], str]) -> str:
    """``call()`` as a user without root's powers: directly when not root; as root, in a forked
    child that drops to ``nobody`` (so permission bits bind, as they do for most users)."""
    if os.geteuid() != 0:
        return call()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        status = 1
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, call().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    return said


def test_a_folder_a_user_cannot_write_is_read_only_to_them() -> None:
    """The non-root version of the read-only media test: permission bits, not a mount."""
    folder = Path(tempfile.mkdtemp())  # the system's temporary folder: nobody can reach it
    try:
        path = str(folder / "shop.db")
        head = fill(path, 5)
        folder.chmod(0o555)  # the file is root's (or the user's) 0644: the folder refuses -wal and -shm

        def open_and_append() -> str:
            try:
                with minies.EventStore(path) as store:
                    store.append("a0", [MoneyDeposited(amount=1)], aggregate_type="Account")
            except minies.StorageError as e:
                return str(e)
            return "appended"

        def read() -> str:
            with minies.EventStore(path, readonly=True) as store:
                return f"{store.head()} {store.verify().ok}"

        assert unprivileged(open_and_append) == (
            f"cannot open {path!r}: the file or its directory is read-only; open it with readonly=True to read it"
        )
        assert unprivileged(read) == f"(5, {head!r}) True"
        new = str(folder / "new.db")

        def create() -> str:
            try:
                minies.EventStore(new).close()
            except minies.StorageError as e:
                return str(e)
            return "created"

        assert unprivileged(create) == (
            f"cannot open {new!r}: the file cannot be opened (missing, a directory, or no permission)"
        )
        assert sorted(os.listdir(folder)) == ["shop.db"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` and what it holds unwritable: a read-only bind mount as root (root
    ignores permission bits), permission bits otherwise."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


def test_a_leftover_wal_on_read_only_media(tmp_path: Path) -> None:
    """An empty -wal left beside the file (no -shm) is nothing to read: the file opens as it
    is. A -wal that still holds commits cannot be read without a -shm: one clear message."""
    folder = tmp_path / "media"
    folder.mkdir()
    path = str(folder / "shop.db")
    head = fill(path, 5)
    Path(path + "-wal").touch()
    with read_only(folder), minies.EventStore(path, readonly=True) as store:
        assert store.head() == (5, head) and store.verify().ok
    writer = minies.EventStore(path)
    writer._conn.pragma("wal_autocheckpoint", 0)
    writer.append("late", [MoneyDeposited(amount=1)], aggregate_type="Account")
    shutil.copy(path + "-wal", tmp_path / "wal")
    writer.close()
    shutil.copy(tmp_path / "wal", path + "-wal")  # a copy taken while the writer ran
    assert os.path.getsize(path + "-wal") > 0 and not os.path.exists(path + "-shm")
    with (
        read_only(folder),
        pytest.raises(
            minies.StorageError,
            match=rf"^cannot open {re.escape(repr(path))}: its -wal holds commits not yet in the file, which SQLite "
            r"reads only with a -shm beside them, and none can be made here \(read-only media\?\); "
            "copy the file and its -wal to a writable folder$",
        ),
    ):
        minies.EventStore(path, readonly=True)
    with minies.EventStore(path, readonly=True) as store:  # writable media: SQLite recovers the -wal
        assert store.head()[0] == 6 and store.verify().ok


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


READ_ONLY_COMMANDS = [["verify"], ["info"], ["head"], ["events"], ["export"], ["types"], ["snapshots"], ["check"]]


@pytest.mark.parametrize("writable", [False, True], ids=["read-only folder", "writable folder"])
def test_auditors_read_a_closed_file_and_leave_the_folder_as_they_found_it(tmp_path: Path, writable: bool) -> None:
    folder = tmp_path / "evidence"
    folder.mkdir()
    path = str(folder / "shop.db")
    head = fill(path, 20)
    before = listing(folder)
    assert before.keys() == {"shop.db"}
    with contextlib.nullcontext() if writable else read_only(folder):
        if not writable:
            with pytest.raises(OSError, match="Read-only file system|Permission denied"):
                (folder / "probe").write_text("x")
        with minies.EventStore(path, readonly=True) as store:
            assert store.head() == (20, head) and store.verify().ok
            assert len(list(store.read_all())) == 20
        for command in READ_ONLY_COMMANDS:
            result = subprocess.run(
                [sys.executable, "-m", "minies", *command, path], capture_output=True, text=True, timeout=60
            )
            expected = 1 if command == ["check"] else 0  # check without --import checks nothing: says so
            assert result.returncode == expected, (command, result.stderr)
            assert "Traceback" not in result.stderr
        assert listing(folder) == before


def test_every_read_of_a_damaged_file_says_so_in_one_message(tmp_path: Path, no_upcasting: None) -> None:
    path = str(tmp_path / "scratched.db")
    with minies.EventStore(path) as store:
        for i in range(60):
            store.append(f"a{i % 5}", [MoneyDeposited(amount=j) for j in range(50)], aggregate_type="Account")
    with open(path, "r+b") as f:  # scratches across the events' pages; the schema (page 1) intact
        for page in range(10, os.path.getsize(path) // 4096 - 2, 3):
            f.seek(4096 * page + 100)
            f.write(b"\xff" * 200)
    damaged = r"^cannot read: the file is damaged \(database disk image is malformed\); restore it from a backup$"
    with minies.EventStore(path, readonly=True) as store:
        for read in (
            store.info,
            store.event_types,
            store.aggregates,
            store.check_events,
            lambda: store.fold("a1", lambda n, e: n + 1, 0),
            lambda: list(store.read_all()),
        ):
            with pytest.raises(minies.StorageError, match=damaged):
                read()
        with pytest.raises(minies.StorageError, match=damaged.replace("cannot read", "cannot query")):
            store.query("SELECT sum(length(data)) FROM events")


@pytest.mark.parametrize(
    ("scratched", "reads"),
    [
        ("minies_snapshots", ["snapshot_stats", "load"]),
        ("events", ["head"]),  # the table itself (its root page): the head is its last row
        ("sqlite_autoindex_events_2", ["version"]),  # UNIQUE (aggregate_id, version)
    ],
)
def test_a_damaged_table_or_index_is_one_message_for_each_read_through_it(
    tmp_path: Path, scratched: str, reads: list[str]
) -> None:
    path = str(tmp_path / "scratched.db")
    with minies.EventStore(path) as store:
        account = SnappedAccount(id="s")
        for _ in range(80):
            account.deposit(1)
        store.save(account)
        assert store.snapshot_stats()[0][:2] == ("Account", 1)
    con = sqlite3.connect(path)
    (root,) = con.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (scratched,)).fetchone()
    con.close()
    with open(path, "r+b") as f:  # scratch one root page: only the reads through it see it
        f.seek(4096 * (root - 1))
        f.write(b"\xff" * 64)
    damaged = r"^cannot read: the file is damaged \(database disk image is malformed\); restore it from a backup$"
    calls = {
        "snapshot_stats": lambda store: store.snapshot_stats(),
        "load": lambda store: store.load(SnappedAccount, "s"),
        "head": lambda store: store.head(),
        "version": lambda store: store.version("s"),
    }
    with minies.EventStore(path, readonly=True) as store:
        for read in reads:
            with pytest.raises(minies.StorageError, match=damaged):
                calls[read](store)
