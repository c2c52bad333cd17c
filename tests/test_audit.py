from __future__ import annotations

import collections
import hashlib
import os
import re
import sqlite3

import pytest
from domain import MoneyDeposited, OrderPlaced

import minies


def build(path: str, n: int = 30) -> str:
    with minies.EventStore(path) as store:
        with minies.metadata_scope(user_id="ünïcødé"):
            for i in range(n):
                store.append(f"acc-{i % 3}", [MoneyDeposited(amount=i)], aggregate_type="Account")
        store.append("o1", [OrderPlaced(customer_id="c-€", total=1.5)], aggregate_type="Order")
        return store.head()[1]


def spec_hash(previous: bytes, fields: tuple[object, ...]) -> bytes:
    """Straight from the canonical encoding in docs/how-to/audit-a-file.md."""

    def net(value: object) -> bytes:
        raw = str(value).encode("utf-8")
        return str(len(raw)).encode() + b":" + raw + b","

    return hashlib.sha256(previous + b"".join(net(v) for v in fields)).digest()


def independent_chain_check(path: str) -> tuple[bool, int | None]:
    """The chain check re-implemented with the stock sqlite3 module."""

    con = sqlite3.connect(path)
    previous = bytes(32)
    expected_position = 1
    for row in con.execute(
        "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata,"
        " created_at, hash, schema_version FROM events ORDER BY position"
    ):
        if row[0] != expected_position:
            return False, expected_position
        digest = spec_hash(previous, row[:9] if row[10] == 1 else (*row[:9], row[10]))
        if digest != row[9]:
            return False, row[0]
        previous = digest
        expected_position += 1
    con.close()
    return True, None


def tamper(path: str, *statements: str) -> None:
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()


def report(path: str, **kwargs: object) -> minies.VerifyReport:
    with minies.EventStore(path) as store:
        return store.verify(**kwargs)  # type: ignore[arg-type]


def test_intact_file_verifies_and_matches_the_independent_check(db_path: str) -> None:
    build(db_path)
    result = report(db_path)
    assert result.ok and result.events_checked == 31 and result.first_bad_position is None and result.reason == ""
    assert independent_chain_check(db_path) == (True, None)


DROP = "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete; DROP TRIGGER events_append_only"
RESTORE = [
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'x'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'x'); END",
    "CREATE TRIGGER events_append_only BEFORE INSERT ON events WHEN 0 BEGIN SELECT 1; END",
]


@pytest.mark.parametrize(
    ("edit", "bad_position", "reason"),
    [
        (["UPDATE events SET data = '{\"amount\":1000}' WHERE position = 7"], 7, "does not match its hash"),
        (["UPDATE events SET event_type = 'MoneyWithdrawn' WHERE position = 4"], 4, "does not match its hash"),
        (["UPDATE events SET metadata = '{}' WHERE position = 2"], 2, "does not match its hash"),
        (["UPDATE events SET created_at = '2000-01-01T00:00:00.000000Z' WHERE position = 9"], 9, "does not match"),
        (["UPDATE events SET schema_version = 2 WHERE position = 8"], 8, "does not match its hash"),
        (["UPDATE events SET data = CAST(data AS BLOB) WHERE position = 10"], 10, "has a column of the wrong type"),
        (["DELETE FROM events WHERE position = 12"], 12, "position 12 is missing"),
        (["DELETE FROM events WHERE position = 31"], None, ""),  # dropping the tail: see expect_head
        (
            [
                "INSERT INTO events SELECT 32, 'x', aggregate_id, aggregate_type, event_type, 99, data, metadata,"
                " created_at, hash, schema_version FROM events WHERE position = 31"
            ],
            32,
            "does not match its hash",
        ),
        (
            [
                "UPDATE events SET position = 1000 WHERE position = 5",
                "UPDATE events SET position = 5 WHERE position = 6",
                "UPDATE events SET position = 6 WHERE position = 1000",
            ],
            5,
            "does not match its hash",
        ),
    ],
)
def test_every_kind_of_tampering_is_detected(
    db_path: str, edit: list[str], bad_position: int | None, reason: str
) -> None:
    head = build(db_path)
    tamper(db_path, *DROP.split("; "), *edit, *RESTORE)
    if bad_position is None:
        assert not report(db_path, expect_head=head).ok  # a truncated tail breaks the published head
        return
    result = report(db_path)
    assert not result.ok
    assert result.first_bad_position == bad_position
    assert reason in result.reason
    assert independent_chain_check(db_path) == (False, bad_position)


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        (
            [
                "DROP TRIGGER events_append_only",
                "CREATE TRIGGER events_append_only BEFORE INSERT ON events WHEN 0 BEGIN SELECT 1; END",
            ],
            "the immutability trigger events_append_only was altered",
        ),
        (
            [
                "DROP TRIGGER events_no_update",
                "CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN 0"
                " BEGIN SELECT RAISE(ABORT, 'minies: events are immutable; UPDATE is refused'); END",
            ],
            "the immutability trigger events_no_update was altered",
        ),
        (
            [
                "DROP TRIGGER events_no_delete",
                "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT 1; END",
            ],
            "the immutability trigger events_no_delete was altered",
        ),
        (
            ["CREATE TRIGGER drop_it BEFORE INSERT ON events WHEN NEW.version > 1 BEGIN SELECT RAISE(IGNORE); END"],
            "triggers minies did not create are on the events table: drop_it (one could drop or change appended events)",
        ),
        (
            [
                "CREATE TRIGGER drop_it BEFORE INSERT ON events WHEN NEW.version > 1 BEGIN SELECT RAISE(IGNORE); END",
                "CREATE TRIGGER audit_copy AFTER INSERT ON events BEGIN SELECT 1; END",
            ],
            "triggers minies did not create are on the events table: audit_copy, drop_it"
            " (one could drop or change appended events)",
        ),
    ],
)
def test_a_weakened_or_foreign_trigger_is_reported(db_path: str, edits: list[str], reason: str) -> None:
    build(db_path)
    tamper(db_path, *edits)
    result = report(db_path)
    assert not result.ok and result.reason == reason
    assert (result.first_bad_position, result.events_checked) == (None, 31)  # the file, not an event: the chain is intact


def test_missing_triggers_are_reported(db_path: str) -> None:
    build(db_path)
    tamper(db_path, "DROP TRIGGER events_no_update", "DROP TRIGGER events_no_delete")
    result = report(db_path)
    assert not result.ok and result.reason == "immutability triggers are missing: events_no_delete, events_no_update"


def test_version_gaps_are_reported(db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="A")
        # A forged but correctly chained event that skips a version.
        position, previous = store.head()
        digest = spec_hash(bytes.fromhex(previous), (2, "id-2", "a", "A", "MoneyDeposited", 5, "{}", "{}", "t"))
        store._conn.execute(
            "INSERT INTO events VALUES (2, 'id-2', 'a', 'A', 'MoneyDeposited', 5, '{}', '{}', 't', ?, 1)", (digest,)
        )
        result = store.verify()
    assert not result.ok and "not contiguous" in result.reason


def test_expect_head_proves_append_only_growth(location: str) -> None:
    head = build(location)
    assert report(location, expect_head=head).ok
    with minies.EventStore(location) as store:
        store.append("acc-9", [MoneyDeposited(amount=1)], aggregate_type="Account")
    assert report(location, expect_head=head).ok  # growth is fine
    assert not report(location, expect_head="ab" * 32).ok
    with pytest.raises(ValueError, match="expect_head must be what `minies head` prints"):
        report(location, expect_head="nothex")


def test_flipped_bytes_in_a_page(db_path: str) -> None:
    build(db_path, 2000)
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as f:
        f.seek(size - 4096 * 3 + 200)
        f.write(bytes(range(64)))
    result = report(db_path)  # the read failed part-way: nothing is vouched for
    assert result == minies.VerifyReport(False, 0, None, "the file is damaged: database disk image is malformed", 0, "")


def test_truncated_file(db_path: str) -> None:
    build(db_path, 2000)
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(minies.StorageError, match="the file is damaged .database disk image is malformed.; restore it"):
        report(db_path)


def test_verify_progress(location: str) -> None:
    build(location, 10_000)
    calls: list[tuple[int, int]] = []
    with minies.EventStore(location) as store:
        assert store.verify(progress=lambda done, total: calls.append((done, total))).ok
    assert calls[-1] == (10_001, 10_001) and len(calls) > 1


def test_close_leaves_one_complete_file(db_path: str, tmp_path: object) -> None:
    head = build(db_path)
    assert not os.path.exists(db_path + "-wal") or os.path.getsize(db_path + "-wal") == 0
    copy = str(db_path) + ".shipped"
    with open(db_path, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    with minies.EventStore(copy, readonly=True) as store:
        assert store.head()[1] == head and store.verify().ok


def test_backup_while_another_process_writes(db_path: str) -> None:
    import subprocess
    import sys

    build(db_path)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, minies\nfrom domain import MoneyDeposited\n"
            "with minies.EventStore(sys.argv[1], durability='normal') as s:\n"
            "    for i in range(400): s.append('busy', [MoneyDeposited(amount=i)], aggregate_type='A')\n",
            db_path,
        ],
        env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},
    )
    copies = []
    with minies.EventStore(db_path) as store:
        for k in range(5):
            target = f"{db_path}.backup{k}"
            store.backup(target)
            copies.append(target)
        with pytest.raises(minies.StorageError, match="already exists"):
            store.backup(copies[0])
    writer.wait(60)
    for copy in copies:
        assert not os.path.exists(copy + "-wal")
        with minies.EventStore(copy, readonly=True) as backup:
            assert backup.verify().ok


def test_a_backup_that_cannot_be_written_is_one_clear_message(db_path: str) -> None:
    build(db_path, 3)
    target = os.path.join(db_path + ".nowhere", "copy.db")
    with minies.EventStore(db_path) as store:
        with pytest.raises(
            minies.StorageError,
            match=rf"^cannot back up to {re.escape(repr(target))}: the file cannot be opened \(missing, a directory",
        ):
            store.backup(target)
        assert store.head()[0] == 4 and not os.path.exists(target)


def test_verify_of_a_store_in_memory_reports_a_dropped_trigger() -> None:
    with minies.EventStore(":memory:") as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
        assert store.verify().ok
        store._conn.execute("DROP TRIGGER events_no_delete")
        report = store.verify()
        assert not report.ok and report.reason == "immutability triggers are missing: events_no_delete"


def test_damage_only_the_integrity_check_can_see_fails_verify_with_that_reason(db_path: str) -> None:
    """One event id is changed inside the event_id index's page only: every read of the log
    (by position) is untouched, the chain still verifies, and only SQLite's own check sees
    that the index no longer matches the table."""
    build(db_path, 50)
    con = sqlite3.connect(db_path)
    event_ids = [i for (i,) in con.execute("SELECT event_id FROM events WHERE position BETWEEN 20 AND 23 ORDER BY 1")]
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_events_1'").fetchone()
    (page_size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with open(db_path, "r+b") as f:
        data = f.read()
        start = (root - 1) * page_size
        for event_id in event_ids:  # four entries: the report shows the first three problems
            offset = data.index(event_id.encode(), start, start + page_size)
            f.seek(offset + len(event_id) - 1)
            f.write(("0" if event_id[-1] != "0" else "1").encode())  # the same place in index order
    result = report(db_path)
    assert not result.ok
    assert result.reason == "SQLite integrity check failed: " + "; ".join(
        f"row {p} missing from index sqlite_autoindex_events_1" for p in (20, 21, 22)
    ), result.reason
    assert result.events_checked == 51  # the chain itself was intact
    assert independent_chain_check(db_path) == (True, None)


def test_expect_head_takes_what_head_prints_a_hash_or_a_prefix(location: str) -> None:
    build(location)
    with minies.EventStore(location) as store:
        position, digest = store.head()
        for accepted in (f"{position} {digest}", digest, digest[:12], f" {position}  {digest.upper()[:20]} \n"):
            assert store.verify(expect_head=accepted).ok, accepted
        earlier = store.verify(expect_head=f"{position - 1} {digest}")  # the right hash, at the wrong position
        assert (
            not earlier.ok
            and earlier.first_bad_position == position + 1  # not found in the whole history
            and earlier.reason
            == f"the expected head {position - 1} {digest} is not in this history (rewritten or truncated)"
        )
        for refused in (digest[:11], f"x {digest}", f"{position} {digest} extra", 12345):
            with pytest.raises(ValueError, match="expect_head must be what `minies head` prints"):
                store.verify(expect_head=refused)  # type: ignore[arg-type]


def test_a_hash_prefix_that_several_events_share_is_refused_as_ambiguous(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve hex digits are 48 bits: no two events of a real log share them. With one or two
    digits allowed, several do, and verify asks for more rather than pick one."""
    build(db_path, n=200)
    monkeypatch.setattr(minies._audit, "_HEAD", re.compile(r"(?:(\d+)\s+)?([0-9a-fA-F]{1,64})"))
    con = sqlite3.connect(db_path)
    hashes = [bytes(h).hex() for (h,) in con.execute("SELECT hash FROM events")]
    con.close()
    # 201 hashes: some first digit starts at least 13 of them; some two first digits exactly two
    # (about 35 pairs of digits do, on average; none would, once in ~10^15 runs)
    by_two = collections.Counter(h[:2] for h in hashes)
    pair = next(prefix for prefix, n in by_two.items() if n == 2)
    digit, count = collections.Counter(h[0] for h in hashes).most_common(1)[0]
    for prefix, n in ((digit, count), (pair, 2)):
        result = report(db_path, expect_head=prefix)
        assert (
            not result.ok and result.reason == f"the expected head {prefix} matches {n} events; give more of the hash"
        )
        assert result.first_bad_position == 201


@pytest.mark.parametrize(
    ("edits", "first_bad", "reason"),
    [
        (["UPDATE events SET data = CAST(data AS BLOB) WHERE position = 10"], 10, "has a column of the wrong type"),
        (["UPDATE events SET hash = hex(hash) WHERE position = 10"], 10, "has a column of the wrong type"),
        (  # the retyped column comes first, whichever check sees its problem first
            [
                "UPDATE events SET metadata = CAST(metadata AS BLOB) WHERE position = 10",
                "UPDATE events SET data = '{\"amount\":1}' WHERE position = 20",
            ],
            10,
            "has a column of the wrong type",
        ),
        (
            [
                "UPDATE events SET data = '{\"amount\":1}' WHERE position = 7",
                "UPDATE events SET event_id = CAST(event_id AS BLOB) WHERE position = 10",
            ],
            7,
            "does not match its hash",
        ),
        (
            [
                "DELETE FROM events WHERE position = 4",
                "UPDATE events SET data = CAST(data AS BLOB) WHERE position = 10",
            ],
            4,
            "missing",
        ),
        (["UPDATE events SET version = CAST(version AS BLOB) WHERE position = 1"], 1, "has a column of the wrong type"),
        (
            ["UPDATE events SET created_at = CAST(created_at AS BLOB) WHERE position = 31"],
            31,
            "has a column of the wrong type",
        ),
    ],
)
def test_a_report_names_the_first_bad_event_and_the_verified_head_before_it(
    db_path: str, edits: list[str], first_bad: int, reason: str
) -> None:
    build(db_path)
    con = sqlite3.connect(db_path)
    hashes = dict(con.execute("SELECT position, hex(hash) FROM events"))
    con.close()
    tamper(db_path, *DROP.split("; "), *edits, *RESTORE)
    result = report(db_path)
    assert (result.ok, result.first_bad_position, result.events_checked) == (False, first_bad, first_bad - 1)
    assert reason in result.reason and f"position {first_bad}" in result.reason
    assert result.head_position == first_bad - 1
    assert result.head_hash == (hashes[first_bad - 1].lower() if first_bad > 1 else "")
