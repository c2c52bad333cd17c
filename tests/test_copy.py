"""Copying a log between stores: byte for byte, incremental, refusing a diverged target."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from domain import Account, AccountOpened, Balances, MoneyDeposited

import minies

FIXTURES = Path(__file__).parent / "fixtures"


class Saved(Account):
    snapshot_every: ClassVar[int | None] = 2


def rows(path: str, table: str = "events") -> list[tuple[object, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        con.close()


def fill(path: str, first: int, last: int) -> None:
    with minies.EventStore(path, projections=[Balances()]) as store, minies.metadata_scope(user_id="u"):
        for i in range(first, last):
            store.append(f"acc-{i % 3}", [MoneyDeposited(amount=i)], aggregate_type="Account")


def test_a_copy_is_the_same_log_byte_for_byte(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    fill(source, 0, 30)
    with minies.EventStore(source) as store:
        saved = Saved(id="s")
        saved.record(AccountOpened(owner="o", balance=1))
        saved.deposit(2)
        store.save(saved)
        head = store.head()
    report = minies.copy(source, target)
    assert (report.copied, report.skipped, report.head_position, report.head_hash) == (32, 0, *head)
    assert rows(target) == rows(source)  # positions, ids, timestamps, payloads, hashes, schema versions
    assert rows(target, "minies_snapshots") == rows(source, "minies_snapshots")
    assert rows(target, "minies_event_types") == rows(source, "minies_event_types")
    with minies.EventStore(target, projections=[Balances()]) as copy:  # projections rebuild on the target
        assert copy.head() == head and copy.verify().ok
        with minies.EventStore(source, projections=[Balances()]) as original:  # caught up too
            assert copy.query("SELECT * FROM balances ORDER BY 1") == original.query(
                "SELECT * FROM balances ORDER BY 1"
            )
        assert copy.load(Saved, "s").balance == 3


def test_a_copy_is_incremental_and_refuses_a_target_that_diverged(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    fill(source, 0, 10)
    assert minies.copy(source, target).copied == 10
    fill(source, 10, 25)
    report = minies.copy(source, target)
    assert (report.copied, report.skipped) == (15, 10) and rows(target) == rows(source)
    assert minies.copy(source, target).copied == 0  # nothing new: nothing to do
    other = str(tmp_path / "other.db")
    fill(other, 100, 105)
    before = rows(target)
    with pytest.raises(
        minies.SchemaError, match=r"the target's log is not a prefix of the source's \(they differ at position 1\)"
    ):
        minies.copy(other, target)  # the target holds 25 events; the source 5 others
    diverged, short = str(tmp_path / "diverged.db"), str(tmp_path / "short.db")
    minies.copy(source, diverged)
    fill(diverged, 500, 503)  # the same 25 events, then 3 of its own: it differs from 26 on
    fill(source, 25, 30)
    with pytest.raises(minies.SchemaError, match=r"\(they differ at position 26\); copy to a new store"):
        minies.copy(source, diverged)
    with minies.EventStore(target) as store:  # a true prefix of the target, shorter than it
        store.backup(short)
    fill(target, 600, 602)
    before = rows(target)
    with pytest.raises(minies.SchemaError, match=r"\(the target holds 2 more events\)"):
        minies.copy(short, target)
    assert rows(target) == before


def test_an_old_file_copies_as_it_is(tmp_path: Path) -> None:
    source = tmp_path / "schema_v2.db"
    shutil.copy(FIXTURES / "schema_v2.db", source)
    report = minies.copy(str(source), str(tmp_path / "copy.db"))  # a version 2 source, read as it is
    assert report.copied == 2
    assert source.read_bytes() == (FIXTURES / "schema_v2.db").read_bytes()  # not migrated: not touched
    assert [r[:2] for r in rows(str(tmp_path / "copy.db"), "minies_event_types")] == [("Tagged", 1), ("Tagged", 2)]


def test_progress_is_told_each_chunk_s_last_position_and_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    monkeypatch.setattr(minies._copy, "_CHUNK", 4)
    fill(source, 0, 10)
    told: list[tuple[int, int]] = []
    minies.copy(source, target, progress=lambda position, head: told.append((position, head)))
    assert told == [(4, 10), (8, 10), (10, 10)]
    fill(source, 10, 13)
    minies.copy(source, target, progress=lambda position, head: told.append((position, head)))
    assert told[3:] == [(13, 13)] and rows(target) == rows(source)


def test_a_source_that_grows_during_the_copy_is_copied_up_to_the_head_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    monkeypatch.setattr(minies._copy, "_CHUNK", 4)
    fill(source, 0, 10)
    with minies.EventStore(source) as head_before:
        head = head_before.head()

    def write_meanwhile(position: int, _: int) -> None:
        fill(source, 100 + position, 101 + position)
        with minies.EventStore(source, snapshot_every={Account: 1}) as store:  # a snapshot the copy will not reach
            account = store.load(Account, "acc-0")
            account.deposit(1)
            account.deposit(1)
            store.save(account)

    report = minies.copy(source, target, progress=write_meanwhile)
    assert (report.copied, report.head_position, report.head_hash) == (10, *head)
    with minies.EventStore(target) as copy:
        assert copy.head() == head
        assert copy.load(Account, "acc-0").version == 4 == copy.version("acc-0")  # no snapshot from beyond the head
    assert minies.copy(source, target).copied == 9  # the events written meanwhile, next time
    with minies.EventStore(target) as copy, minies.EventStore(source) as original:
        assert copy.snapshot_stats() == original.snapshot_stats()
        assert copy.load(Account, "acc-0").balance == original.load(Account, "acc-0").balance


def test_a_copy_into_a_target_that_then_does_not_verify_fails(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    fill(source, 0, 10)
    with minies.EventStore(target):
        pass
    con = sqlite3.connect(target)  # a target that silently drops the last event
    con.execute("CREATE TRIGGER drop_it BEFORE INSERT ON events WHEN NEW.position = 10 BEGIN SELECT RAISE(IGNORE); END")
    con.close()
    with pytest.raises(minies.SchemaError) as caught:  # before it appends anything
        minies.copy(source, target)
    assert str(caught.value).startswith(
        f"{target} is not guarded: triggers minies did not create are on the events table: drop_it"
        " (one could drop or change appended events); minies writes nothing to a log whose guards are missing"
    )
    assert rows(target) == []


def test_a_one_event_target_that_differs_is_refused(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    fill(source, 0, 5)
    fill(target, 7, 8)
    with pytest.raises(minies.SchemaError, match=r"\(they differ at position 1\)"):
        minies.copy(source, target)
    assert len(rows(target)) == 1


def test_the_command_line_copies_and_says_what_it_did(tmp_path: Path) -> None:
    source, target = str(tmp_path / "edge.db"), str(tmp_path / "server.db")
    fill(source, 0, 3)
    result = subprocess.run(
        [sys.executable, "-m", "minies", "copy", source, target], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with minies.EventStore(source, readonly=True) as store:
        position, digest = store.head()
    assert result.stdout == f"copied 3 events to {target} (0 already there); head {position} {digest}\n"
    fill(str(tmp_path / "other.db"), 50, 55)
    refused = subprocess.run(
        [sys.executable, "-m", "minies", "copy", str(tmp_path / "other.db"), target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        refused.returncode == 2
        and refused.stderr.startswith("minies: error: cannot copy")
        and len(refused.stderr.splitlines()) == 1
    )
