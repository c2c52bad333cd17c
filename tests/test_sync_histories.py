"""Devices that write offline and sync through a hub, recorded and checked (see ``sync_history``):
the promises of sync, tested by five devices at once, killed, cut off from power, and fed
bundles duplicated, out of order, cut short and forged.

CI runs one history of over 10,000 device events through a hub file, two seeds of dense
faults through a hub file, through PostgreSQL and through a hub served over HTTP (one seed on
PostgreSQL), five devices syncing at once on PostgreSQL, the checker's bug hunt, a power cut
at every write of a sync, and the forgeries of hub logs and bundles;
``MINIES_STRESS=1`` runs 20 seeds of each history (and a longer big one),
``MINIES_SYNC_SEED=N`` one chosen seed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sync_history as sh

import minies
from minies import _audit, _sync, _wire

STRESS = os.environ.get("MINIES_STRESS") == "1"
SEEDS = (
    [int(os.environ["MINIES_SYNC_SEED"])] if os.environ.get("MINIES_SYNC_SEED") else list(range(20 if STRESS else 2))
)
THIS = "tests/test_sync_histories.py"


def history(plan: sh.Plan, test: str) -> tuple[dict[str, int], sh.Run]:
    with sh.replayable(plan, f"{THIS} -k '{test}'"):
        ops, run = sh.run(plan)
    return history_checked(plan, ops, run, test)


def history_checked(plan: sh.Plan, ops: list[sh.Op], run: sh.Run, test: str) -> tuple[dict[str, int], sh.Run]:
    with sh.replayable(plan, f"{THIS} -k '{test}'"):
        counts = sh.check(plan, ops)
    print(plan.describe(), run, counts)  # the numbers, with -s
    return counts, run


# ------------------------------------------------------------------ the histories


def test_ten_thousand_device_events_through_a_hub_file(tmp_path: Path) -> None:
    """Five devices, over 10,000 events between them, each synced at its own pace, killed now
    and then (mid-command, at the hub's door, after the hub settled, inside the reply's
    transaction), and losing power during syncs; one syncs by bundle files."""
    seed = SEEDS[0]
    plan = sh.Plan(
        seed,
        str(tmp_path / "hub.db"),
        str(tmp_path),
        commands=4000 if STRESS else 2300,
        shared=12,
        kills=0.003,
        power=0.02,
        audits=0.002,
        bundles=True,
    )
    counts, run = history(plan, "ten_thousand")
    with sh.replayable(plan, f"{THIS} -k ten_thousand"):
        assert counts["device_events"] >= 10_000, counts
        assert counts["rejections"] > 0 and counts["redos"] > 0 and counts["accepted_conflicts"] > 0, counts
        assert run.kills > 0 and run.power_cuts > 0, run
        assert counts["bundle_syncs"] > 0, counts


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_faults_through_a_hub_file(tmp_path: Path, seed: int) -> None:
    plan = sh.Plan(
        seed, str(tmp_path / "hub.db"), str(tmp_path), commands=200, kills=0.05, power=0.1, bundles=True, audits=0.2
    )
    counts, run = history(plan, f"dense_faults_through_a_hub_file and {seed}")
    with sh.replayable(plan, f"{THIS} -k 'dense_faults_through_a_hub_file and {seed}'"):
        assert run.kills > 0 and counts["rejections"] > 0, (run, counts)


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_faults_through_postgres(pg_url: str, tmp_path: Path, seed: int) -> None:
    """The hub a PostgreSQL log, five processes settling their pushes at once (before a97e0ca
    two syncs at once took the same positions, and one failed)."""
    plan = sh.Plan(seed, pg_url, str(tmp_path), commands=150, kills=0.04, power=0.1, bundles=True, audits=0.2)
    counts, run = history(plan, f"dense_faults_through_postgres and {seed}")
    with sh.replayable(plan, f"{THIS} -k 'dense_faults_through_postgres and {seed}'"):
        assert run.kills > 0 and counts["rejections"] > 0, (run, counts)


@pytest.mark.parametrize(
    ("backend", "seed"),
    [("sqlite", seed) for seed in SEEDS] + [("postgres", seed) for seed in SEEDS[: 20 if STRESS else 1]],
)
def test_dense_faults_through_a_served_hub(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, seed: int
) -> None:
    """The hub served over HTTP (``minies serve``, each device with its token): devices killed
    after the server settled a push and before the reply arrived, among the other faults, and
    the server itself killed (-9) and started again every few tenths of a second."""
    hub = str(tmp_path / "hub.db") if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    plan = sh.Plan(
        seed, hub, str(tmp_path), commands=150, kills=0.05, power=0.1, bundles=True, audits=0.1, server_kills=True
    )
    test = f"dense_faults_through_a_served_hub and {backend} and {seed}"
    with sh.replayable(plan, f"{THIS} -k '{test}'"), sh.serve(plan) as server:
        ops, run = sh.run(plan, server=server)
    counts, _ = history_checked(plan, ops, run, test)
    with sh.replayable(plan, f"{THIS} -k '{test}'"):
        assert run.kills > 0 and counts["rejections"] > 0 and counts["heads_checked"] > 0, (run, counts)
        assert run.server_kills > 0, run


@pytest.mark.parametrize("seed", SEEDS[: 20 if STRESS else 1])
def test_syncs_at_once_through_postgres(pg_url: str, tmp_path: Path, seed: int) -> None:
    """Five processes syncing as often as they write, on one PostgreSQL hub, no faults (before
    d62c17f a store opening with a read model while others appended applied events twice)."""
    plan = sh.Plan(seed, pg_url, str(tmp_path), commands=150, offline=(2, 2, 3, 2, 2))
    counts, _ = history(plan, f"syncs_at_once_through_postgres and {seed}")
    assert counts["syncs"] > 200, counts


# ------------------------------------------------------------------ the checker catches the bugs it exists for


def caught(plan: sh.Plan, monkeypatch: pytest.MonkeyPatch, bug: str) -> str:
    monkeypatch.setenv("MINIES_SYNC_BUG", bug)
    try:
        ops, _ = sh.run(plan)
        sh.check(plan, ops)
    except sh.Violation as e:
        return str(e)
    raise AssertionError(f"the checker missed bug {bug!r} ({plan.describe()})")


def test_the_checker_catches_a_hub_that_places_conflicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's conflict check lost (it always finds none): every event placed at its
    aggregate's next version, on states its device had not seen."""
    plan = sh.Plan(0, str(tmp_path / "hub.db"), str(tmp_path), commands=80)
    found = caught(plan, monkeypatch, "no-conflicts")
    assert "unjustified placement" in found or "lost update" in found, found


def test_the_checker_catches_a_sync_that_does_not_undo_the_pending_read_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = sh.Plan(0, str(tmp_path / "hub.db"), str(tmp_path), commands=80)
    found = caught(plan, monkeypatch, "no-undo")
    assert "read model differs from a fold of its log" in found, found


def test_the_checker_catches_a_retry_lost_with_its_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries handed over at most once (the rejection noted as handled before its retry ran):
    a power cut or a kill between the two loses the command, in some seed's history."""
    found = None
    for seed in range(10):
        folder = tmp_path / str(seed)
        plan = sh.Plan(seed, str(folder / "hub.db"), str(folder), commands=120, kills=0.05, power=0.3)
        try:
            found = caught(plan, monkeypatch, "retry-at-most-once")
            break
        except AssertionError as e:
            if "missed" not in str(e):
                raise
    assert found is not None and "counts 0 times on the hub" in found, found


def test_the_checker_finds_a_lost_update_and_an_unjustified_rejection_in_a_log() -> None:
    """The decisions' checker on hand-made logs: each promise broken once."""

    def placed(
        position: int, agg: str, version: int, amount: int, seen: int, device: str, expected: int, base: int
    ) -> Any:
        origin = {"device": device, "seq": position, "hash": "", "at": "", "expected": expected, "base": base}
        event = sh.Deposited(op=f"op-{position}", amount=amount, before=seen)
        return minies.Recorded(
            position, f"e{position}", agg, sh.TILL, event.event_type, version, None, event, {sh.ORIGIN: origin}
        )

    fine = [placed(1, "t", 1, 5, 0, "a", 0, 0), placed(2, "t", 2, 5, 5, "b", 1, 1)]
    assert sh._check_decisions(fine)["placed"] == 2
    with pytest.raises(sh.Violation, match="lost update"):
        sh._check_decisions([placed(1, "t", 1, 5, 0, "a", 0, 0), placed(2, "t", 2, 5, 0, "b", 1, 1)])
    with pytest.raises(sh.Violation, match="unjustified placement"):  # b had not seen a's version 1
        sh._check_decisions([placed(1, "t", 1, 5, 0, "a", 0, 0), placed(2, "t", 2, 5, 5, "b", 1, 0)])
    rejection = minies.EventRejected(
        device="b", seq=1, reason="", event_id="x", aggregate_id="t", aggregate_type=sh.TILL, rejected_type="",
        rejected_schema=1, data="{}", metadata="{}", created_at="", expected=1, base=1, origin="",
    )  # fmt: skip
    unjust = minies.Recorded(
        2, "r", "minies.rejections", "minies.rejections", rejection.event_type, 1, None, rejection, {}
    )
    with pytest.raises(sh.Violation, match="unjustified rejection"):
        sh._check_decisions([placed(1, "t", 1, 5, 0, "a", 0, 0), unjust])
    accepting = msgspec.structs.replace(rejection, aggregate_type=sh.JAR)
    with pytest.raises(sh.Violation, match="whose policy accepts"):
        sh._check_decisions([msgspec.structs.replace(unjust, data=accepting)])


# ------------------------------------------------------------------ forgeries


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> sh.Plan:
    """A hub and five devices after a history without faults (its hub is copied, then forged)."""
    folder = tmp_path_factory.mktemp("finished")
    plan = sh.Plan(7, str(folder / "hub.db"), str(folder), commands=80)
    ops, _ = sh.run(plan)
    sh.check(plan, ops)
    return plan


COLUMNS = "position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at, hash, schema_version"


def forge(source: str, target: Path, change: Callable[[list[list[Any]]], list[list[Any]]]) -> str:
    """A copy of the hub file whose events ``change`` rewrote, its chain re-hashed (as a forger
    who knows the hash function would): the main chain verifies, the origins must not."""
    with minies.EventStore(source) as hub:
        hub.backup(str(target))
    con = sqlite3.connect(target)
    triggers = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
    ).fetchall()
    for name, _ in triggers:
        con.execute(f"DROP TRIGGER {name}")
    rows = [list(r) for r in con.execute(f"SELECT {COLUMNS} FROM events ORDER BY position")]
    rows = change(rows)
    previous = _audit.GENESIS
    for position, row in enumerate(rows, 1):
        row[0] = position
        (row[9],) = _audit.chain_batch(
            previous, position, [row[1]], row[2], row[3], [row[4]], row[5], [row[6]], row[7], row[8], [row[10]]
        )
        previous = row[9]
    with con:
        con.execute("DELETE FROM events")
        con.executemany(f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 11)})", rows)
        for _, sql in triggers:  # put back, so the file looks as minies left it
            con.execute(sql)
    con.close()
    return str(target)


def origin_of(row: list[Any]) -> dict[str, Any] | None:
    return msgspec.json.decode(row[7]).get(sh.ORIGIN)


def last_of_its_aggregate(rows: list[list[Any]], k: int) -> bool:
    return not any(r[2] == rows[k][2] for r in rows[k + 1 :])


def drop_one(rows: list[list[Any]]) -> list[list[Any]]:
    k = next(k for k in range(len(rows) // 2, 0, -1) if origin_of(rows[k]) and last_of_its_aggregate(rows, k))
    return rows[:k] + rows[k + 1 :]


def swap_two(rows: list[list[Any]]) -> list[list[Any]]:
    for k in range(len(rows) // 2, len(rows) - 1):
        a, b = origin_of(rows[k]), origin_of(rows[k + 1])
        if a and b and a["device"] == b["device"] and rows[k][2] != rows[k + 1][2]:
            rows[k], rows[k + 1] = rows[k + 1], rows[k]
            return rows
    raise AssertionError("no two neighbours of one device on two aggregates")


def alter_one(rows: list[list[Any]]) -> list[list[Any]]:
    k = next(k for k in range(len(rows) // 2, len(rows)) if origin_of(rows[k]) and '"amount":' in rows[k][6])
    data = msgspec.json.decode(rows[k][6])
    data["amount"] += 1
    rows[k][6] = msgspec.json.encode(data).decode()
    return rows


def replay_one(rows: list[list[Any]]) -> list[list[Any]]:
    k = next(k for k in range(len(rows) // 2, len(rows)) if origin_of(rows[k]))
    copy = list(rows[k])
    copy[1] = "00000000-0000-4000-8000-000000000001"
    copy[5] = max(r[5] for r in rows if r[2] == copy[2]) + 1
    return [*rows, copy]


@pytest.mark.parametrize("change", [drop_one, swap_two, alter_one, replay_one])
def test_a_forged_hub_log_verifies_but_its_origins_do_not(
    finished: sh.Plan, tmp_path: Path, change: Callable[[list[list[Any]]], list[list[Any]]]
) -> None:
    with minies.EventStore(finished.hub) as hub:
        assert hub.verify(origins=True).ok
    forged = forge(finished.hub, tmp_path / "forged.db", change)
    with minies.EventStore(forged, readonly=True) as store:
        assert store.verify().ok, "the forgery's chain does not verify: the test forged it badly"
        report = store.verify(origins=True)
    assert not report.ok and "device" in report.reason, report
    assert report.first_bad_position is not None, report


# ------------------------------------------------------------------ bundles


@pytest.fixture
def offline(tmp_path: Path) -> tuple[minies.EventStore, minies.EventStore]:
    """A hub that placed some of a device's work, and the device with five more events pending."""
    hub = minies.EventStore(str(tmp_path / "hub.db"), projections=[sh.Ledger()])
    device = minies.EventStore(str(tmp_path / "dev.db"), device="dev", projections=[sh.Ledger()])
    for k in range(3):
        device.append("t", [sh.Deposited(op=f"a{k}", amount=1, before=k)], aggregate_type=sh.TILL, expected_version=k)
    device.sync(hub)
    for k in range(3, 8):
        device.append("t", [sh.Deposited(op=f"a{k}", amount=1, before=k)], aggregate_type=sh.TILL, expected_version=k)
    return hub, device


def hub_state(hub: minies.EventStore) -> tuple[Any, ...]:
    return hub.head(), sh.hub_cursor(hub, "dev"), hub.query(sh.LEDGER)


def device_state(device: minies.EventStore) -> tuple[Any, ...]:
    return device.head(), [r.event_id for r in device.pending()], device.query(sh.LEDGER)


def rewrite(path: Path, change: Callable[[Any], Any]) -> None:
    push = _wire.decode(path.read_bytes(), _wire.Push, str(path))
    path.write_bytes(_wire.encode(change(push)))


def altered(push: Any) -> Any:
    pending = list(push.pending)
    data = msgspec.json.decode(pending[2].data)
    data["amount"] = 1000
    pending[2] = msgspec.structs.replace(pending[2], data=msgspec.json.encode(data).decode())
    return msgspec.structs.replace(push, pending=pending)


def dropped(push: Any) -> Any:
    return msgspec.structs.replace(push, pending=push.pending[:2] + push.pending[3:])


def reordered(push: Any) -> Any:
    p = push.pending
    return msgspec.structs.replace(push, pending=[p[0], p[2], p[1], *p[3:]])


@pytest.mark.parametrize("change", [altered, dropped, reordered])
def test_a_forged_push_bundle_is_refused_and_nothing_is_written(
    offline: tuple[minies.EventStore, minies.EventStore], tmp_path: Path, change: Callable[[Any], Any]
) -> None:
    hub, device = offline
    push = tmp_path / "push.bundle"
    _sync.export_push(device, push)
    rewrite(push, change)
    before = hub_state(hub)
    with pytest.raises(minies.SyncError, match="nothing was written"):
        _sync.answer_bundle(hub, push, tmp_path / "reply.bundle")
    assert hub_state(hub) == before
    assert not (tmp_path / "reply.bundle").exists()
    assert device.sync(hub).placed == 5  # the device's own push goes through
    assert hub.verify(origins=True).ok and device.head() == hub.head()


def test_bundles_cut_short_are_refused_and_nothing_is_written(
    offline: tuple[minies.EventStore, minies.EventStore], tmp_path: Path
) -> None:
    hub, device = offline
    push, reply = tmp_path / "push.bundle", tmp_path / "reply.bundle"
    _sync.export_push(device, push)
    raw = push.read_bytes()
    cut = tmp_path / "cut.bundle"
    for size in (0, 5, len(_wire.MAGIC), len(raw) // 2, len(raw) - 1):
        cut.write_bytes(raw[:size])
        before = hub_state(hub)
        with pytest.raises(minies.MiniesError, match="sync bundle|cut short"):
            _sync.answer_bundle(hub, cut, reply)
        assert hub_state(hub) == before
    _sync.answer_bundle(hub, push, reply)
    raw = reply.read_bytes()
    for size in (0, 5, len(raw) // 2, len(raw) - 1):
        cut.write_bytes(raw[:size])
        before = device_state(device)
        with pytest.raises(minies.MiniesError, match="sync bundle|cut short"):
            _sync.import_reply(device, cut)
        assert device_state(device) == before
    _sync.import_reply(device, reply)
    assert device.pending() == [] and device.head() == hub.head()


def test_bundles_twice_and_out_of_order_change_nothing(
    offline: tuple[minies.EventStore, minies.EventStore], tmp_path: Path
) -> None:
    hub, device = offline
    old_push, old_reply = tmp_path / "old.push", tmp_path / "old.reply"
    _sync.export_push(device, old_push)
    _sync.answer_bundle(hub, old_push, old_reply)
    _sync.import_reply(device, old_reply)
    device.append("t", [sh.Deposited(op="b", amount=1, before=8)], aggregate_type=sh.TILL, expected_version=8)
    new_push, new_reply = tmp_path / "new.push", tmp_path / "new.reply"
    _sync.export_push(device, new_push)
    assert _sync.answer_bundle(hub, new_push, new_reply).placed == 1
    again = _sync.answer_bundle(hub, old_push, tmp_path / "again.reply")  # an older push, re-sent
    assert (again.placed, again.rejected) == (0, 0)
    assert _sync.answer_bundle(hub, new_push, tmp_path / "again.reply").placed == 0  # the newest, twice
    _sync.import_reply(device, new_reply)
    settled = device_state(device)
    for reply in (new_reply, old_reply, tmp_path / "again.reply"):  # twice, older, an answer to a re-sent push
        _sync.import_reply(device, reply)
        assert device_state(device) == settled
    assert device.pending() == [] and device.head() == hub.head()
    assert hub.verify(origins=True).ok and device.verify(origins=True).ok
    ids = [r.event_id for r in hub.read_all()]
    assert len(ids) == len(set(ids)) == 9


def test_a_power_cut_inside_a_reply_then_the_device_syncs_on(tmp_path: Path) -> None:
    """Every write and sync of one device's sync (its file opened, the push, the reply taken
    in), cut in turn, in each of the disk's modes: the reopened device syncs again and holds
    the hub's log, its read model the log's, its events on the hub once each."""
    from crashdisk import MODES, CrashDisk, PowerCut

    hub_path = str(tmp_path / "hub.db")
    with minies.EventStore(hub_path) as hub, minies.EventStore(str(tmp_path / "other.db"), device="other") as other:
        other.append("t", [sh.Deposited(op="o", amount=2, before=0)], aggregate_type=sh.TILL, expected_version=0)
        other.sync(hub)
    cuts = 0
    for cut_at in range(1, 1000):
        run = tmp_path / f"cut-{cut_at}"
        run.mkdir()
        path = str(run / "dev.db")
        with minies.EventStore(path, device="dev", projections=[sh.Ledger()]) as device:
            for k in range(4):
                device.append(f"j{k}", [sh.Added(op=f"a{k}", amount=k)], aggregate_type=sh.JAR, expected_version=0)
        shutil.copy(hub_path, run / "hub.db")
        hub = minies.EventStore(str(run / "hub.db"), projections=[sh.Ledger()])
        with CrashDisk(cut_at=cut_at, mode=MODES[cut_at % len(MODES)], seed=cut_at) as disk:
            try:
                device = minies.EventStore(path, device="dev", projections=[sh.Ledger()])
                device.sync(hub)
                device.close()
            except (PowerCut, minies.MiniesError):
                pass
        if disk.rebuilt is None:
            hub.close()
            break
        cuts += 1
        disk.write_rebuilt(str(run / "after"))
        with minies.EventStore(str(run / "after" / "dev.db"), device="dev", projections=[sh.Ledger()]) as device:
            device.sync(hub)
            assert device.pending() == [] and device.head() == hub.head(), cut_at
            assert device.query(sh.LEDGER) == sh.fold(device.read_all()), cut_at
            assert device.verify(origins=True).ok and hub.verify(origins=True).ok, cut_at
            assert sorted(r.data.op for r in hub.read_all() if r.aggregate_type == sh.JAR) == ["a0", "a1", "a2", "a3"]
        hub.close()
    assert cuts >= 20, cuts


def test_a_power_cut_on_the_hub_during_a_sync(tmp_path: Path) -> None:
    """Every write and sync of the hub's side of a sync (its file opened, the push settled),
    cut in turn: what the hub acknowledged survives (the device that took the reply in is
    never ahead of the rebuilt hub), and the device syncs again: each event settled once."""
    from crashdisk import MODES, CrashDisk, PowerCut

    base = tmp_path / "base"
    base.mkdir()
    with minies.EventStore(str(base / "hub.db"), projections=[sh.Ledger()]) as hub:
        with minies.EventStore(str(base / "other.db"), device="other") as other:
            other.append("t", [sh.Deposited(op="o", amount=2, before=0)], aggregate_type=sh.TILL, expected_version=0)
            other.sync(hub)
        with minies.EventStore(str(base / "dev.db"), device="dev", projections=[sh.Ledger()]) as device:
            device.sync(hub)
            for k in range(4):
                device.append(f"j{k}", [sh.Added(op=f"a{k}", amount=k)], aggregate_type=sh.JAR, expected_version=0)
            device.append("t", [sh.Deposited(op="d", amount=1, before=2)], aggregate_type=sh.TILL, expected_version=1)
    cuts = acknowledged_cuts = 0
    for cut_at in range(1, 1000):
        run = tmp_path / f"cut-{cut_at}"
        shutil.copytree(base, run)
        device = minies.EventStore(str(run / "dev.db"), device="dev", projections=[sh.Ledger()])  # not on the disk
        acknowledged = False
        with CrashDisk(cut_at=cut_at, mode=MODES[cut_at % len(MODES)], seed=cut_at) as disk:
            try:
                hub = minies.EventStore(str(run / "hub.db"), projections=[sh.Ledger()])
                device.sync(hub)
                acknowledged = disk.alive
                hub.close()
            except (PowerCut, minies.MiniesError):
                pass
        if disk.rebuilt is None:
            device.close()
            break
        cuts += 1
        acknowledged_cuts += acknowledged
        disk.write_rebuilt(str(run / "after"))
        with minies.EventStore(str(run / "after" / "hub.db"), projections=[sh.Ledger()]) as hub:
            position, digest = device.head()
            assert hub.head()[0] >= position, (cut_at, "the hub lost events the device took in")
            device.sync(hub)
            assert device.pending() == [] and device.head() == hub.head(), cut_at
            assert hub.verify(origins=True).ok and device.verify(origins=True).ok, cut_at
            for store in (hub, device):
                assert store.query(sh.LEDGER) == sh.fold(store.read_all()), cut_at
            ops = sorted(r.data.op for r in hub.read_all() if r.event_type in sh.DELTA_TYPES)  # type: ignore[attr-defined]
            assert ops == ["a0", "a1", "a2", "a3", "d", "o"], (cut_at, ops)
        device.close()
    assert cuts >= 10 and acknowledged_cuts >= 1, (cuts, acknowledged_cuts)
