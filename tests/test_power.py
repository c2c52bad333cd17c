"""Power cuts and failing disks, simulated below SQLite (see ``crashdisk``).

Each campaign runs one of minies' own workloads on the simulated disk, cuts the power at a
random write, truncate or sync, rebuilds the files as the disk would have left them, and
checks every promise on the result. Every run is replayable: a failure prints its seed.
``MINIES_STRESS=1`` runs twenty times as many cuts.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from crashdisk import MODES, CrashDisk, PowerCut
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from domain import Account, AccountOpened, Balances, MoneyDeposited

import minies

STRESS = 20 if os.environ.get("MINIES_STRESS") else 1
SEAL_KEY = Ed25519PrivateKey.generate()
FIXTURES = Path(__file__).parent / "fixtures"


class Saver(Account):
    aggregate_type: ClassVar[str] = "Saver"
    snapshot_every: ClassVar[int | None] = 3


class SaverReplayed(Account):
    """The same stream, loaded without snapshots."""

    aggregate_type: ClassVar[str] = "Saver"


@dataclass
class Acks:
    """What the workload was told: appends that returned, and every append it attempted."""

    appended: list[list[str]] = field(default_factory=list)  # event ids of appends that returned
    attempted: list[list[str]] = field(default_factory=list)
    saved: int = 0  # the Saver's version after its last save that returned
    backed_up: bool = False  # backup() returned
    copied: bool = False  # copy() returned
    sealed: int = -1  # the head position the last seal that returned signed
    commits: int = 0  # the store's commits, for a workload that reports them
    alive: Callable[[], bool] = lambda: True  # False once the power is out: nobody sees an ack then


Workload = Callable[[str, str, Acks], None]


def open_store(path: str, durability: str, **options: object) -> minies.EventStore:
    store = minies.EventStore(
        path, projections=[Balances()], durability="normal" if durability == "off" else durability, **options
    )  # type: ignore[arg-type]
    if durability == "off":  # only the harness's self-test: what minies never does
        store._conn.pragma("synchronous", "OFF")
    return store


def appends(path: str, durability: str, acks: Acks) -> None:
    """A new file: appends with an inline projection, and saves that write snapshots."""
    with open_store(path, durability) as store:
        saver = Saver(id="saver")
        for i in range(12):
            ids = [str(uuid.uuid4()) for _ in range(1 + i % 3)]
            acks.attempted.append(ids)
            events = [MoneyDeposited(amount=i) for _ in ids]
            store.append(f"acc-{i % 4}", events, aggregate_type="Account", event_ids=ids)
            if acks.alive():
                acks.appended.append(ids)
            if i % 4 == 3:
                if saver.version == 0:
                    saver.record(AccountOpened(owner="s", balance=0))
                saver.record(MoneyDeposited(amount=i))
                store.save(saver)
                if acks.alive():
                    acks.saved = saver.version


def seals(path: str, durability: str, acks: Acks) -> None:
    """Appends on a store that seals every 5 events and on close, and seals by hand too."""
    with open_store(path, durability, seal_key=SEAL_KEY, seal_every=5) as store:
        for i in range(10):
            ids = [str(uuid.uuid4()) for _ in range(1 + i % 3)]
            acks.attempted.append(ids)
            store.append(f"acc-{i % 4}", [MoneyDeposited(amount=i) for _ in ids], aggregate_type="Account", event_ids=ids)
            if acks.alive():
                acks.appended.append(ids)
            if i % 4 == 3:
                seal = store.seal(SEAL_KEY, note=f"after {i}")
                if acks.alive():
                    acks.sealed = seal.position


def group_commits(path: str, durability: str, acks: Acks) -> None:
    """Four threads appending at once: their appends share commits."""
    with open_store(path, durability) as store:

        def writer(n: int) -> None:
            for i in range(6):
                ids = [str(uuid.uuid4()) for _ in range(1 + i % 2)]
                acks.attempted.append(ids)
                store.append(
                    f"acc-{n}", [MoneyDeposited(amount=i) for _ in ids], aggregate_type="Account", event_ids=ids
                )
                if acks.alive():
                    acks.appended.append(ids)

        threads = [threading.Thread(target=_quietly, args=(writer, n)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)


def large_groups(path: str, durability: str, acks: Acks) -> None:
    """Eight threads on a slow disk (see ``sync_seconds``): each commit carries several of
    their appends, so the power goes out in the middle of a group."""
    with open_store(path, durability) as store:

        def writer(n: int) -> None:
            for i in range(4):
                ids = [str(uuid.uuid4()) for _ in range(1 + (i + n) % 2)]
                acks.attempted.append(ids)
                store.append(
                    f"acc-{n % 4}", [MoneyDeposited(amount=i) for _ in ids], aggregate_type="Account", event_ids=ids
                )
                if acks.alive():
                    acks.appended.append(ids)

        threads = [threading.Thread(target=_quietly, args=(writer, n)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if acks.alive():
            acks.commits = store._tx.commits


def _quietly(work: Callable[[int], None], n: int) -> None:
    with contextlib.suppress(PowerCut, minies.MiniesError):  # a thread of the dead process
        work(n)


def prefilled(path: str, n: int = 40) -> None:
    with minies.EventStore(path) as store:
        for i in range(n):
            store.append(f"acc-{i % 4}", [MoneyDeposited(amount=i)], aggregate_type="Account")


def rebuild(path: str, durability: str, acks: Acks) -> None:
    with open_store(path, durability) as store:
        store.rebuild("Balances")


def checkpoint(path: str, durability: str, acks: Acks) -> None:
    with open_store(path, durability) as store:
        sub = store.subscription("mailer")
        sub.poll(lambda r: None, limit=15)
        sub.poll(lambda r: None)


def backup(path: str, durability: str, acks: Acks) -> None:
    with open_store(path, durability) as store:
        store.backup(os.path.join(os.path.dirname(path), "backup.db"))
        if acks.alive():
            acks.backed_up = True


def source_beside(path: str) -> str:
    return os.path.join(os.path.dirname(path), "source.db")


def copy(path: str, durability: str, acks: Acks) -> None:
    """Copy a 40-event log into a new store (the target is the store checked)."""
    minies.copy(source_beside(path), path)
    if acks.alive():
        acks.copied = True


def migration(path: str, durability: str, acks: Acks) -> None:
    open_store(path, durability).close()


def check(path: str, durability: str, acks: Acks, workload: str) -> list[str]:
    """Every promise a power cut must keep; returns the broken ones (empty: all kept)."""
    broken: list[str] = []
    with open_store(path, "full") as store:
        report = store.verify()
        if not report.ok:
            return [f"verify failed: {report.reason}"]
        stored = {r.event_id for r in store.read_all()}
        for ids in acks.attempted:
            present = [i in stored for i in ids]
            if any(present) and not all(present):
                broken.append(f"an append is partly present: {present}")
        lost = [ids for ids in acks.appended if ids[0] not in stored]
        if lost:
            broken.append(f"{len(lost)} acknowledged appends lost")
        if store.version("saver") < acks.saved:
            broken.append(f"acknowledged appends lost: a save (saver at {store.version('saver')} < {acks.saved})")
        if store.version("saver"):
            snapped, replayed = store.load(Saver, "saver"), store.load(SaverReplayed, "saver")
            if (snapped.balance, snapped.version) != (replayed.balance, replayed.version):
                broken.append("a snapshot load differs from replay")
        head = store.head()[0]
        for name, position in store.query("SELECT name, position FROM minies_projections"):
            if position > head:
                broken.append(f"projection {name} is ahead of the log ({position} > {head})")
        for name, position in store.query("SELECT name, position FROM minies_subscriptions"):
            if position > head:
                broken.append(f"subscription {name} is ahead of the log ({position} > {head})")
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        store.rebuild("Balances")
        if store.query("SELECT * FROM balances ORDER BY account_id") != live:
            broken.append("the read model differs from its rebuild")
        if workload == "seals":
            sealed = store.verify(trust=[SEAL_KEY.public_key()])
            if store.version(minies.SEALS) and not sealed.ok:  # every seal in the file checks out
                broken.append(f"the seals do not verify: {sealed.reason}")
            elif acks.sealed >= 0 and (not sealed.ok or sealed.sealed_position < acks.sealed):
                broken.append(f"acknowledged appends lost: a seal (sealed up to {sealed.sealed_position} < {acks.sealed})")
        if workload == "migration" and store.query("SELECT count(*) FROM events") != [(3,)]:
            broken.append("the migration lost events")
    if workload == "copy":
        with (
            minies.EventStore(path, readonly=True) as target,
            minies.EventStore(source_beside(path), readonly=True) as source,
        ):
            copied = [(r.event_id, r.position) for r in target.read_all()]
            if copied != [(r.event_id, r.position) for r in source.read_all()][: len(copied)]:
                broken.append("the copy is not a prefix of the source")
            if acks.copied and len(copied) != 40:
                broken.append(f"a copy that returned holds {len(copied)} of 40 events")
    if acks.backed_up:
        with minies.EventStore(os.path.join(os.path.dirname(path), "backup.db"), readonly=True) as copy:
            if not copy.verify().ok or copy.head()[0] != 40:
                broken.append("a backup that returned is not a whole, verified copy")
    return broken


@dataclass
class Campaign:
    name: str
    workload: Workload
    prepare: Callable[[str], None] | None = None
    sync_seconds: float = 0.0  # a slow disk: each sync also sleeps this long


CAMPAIGNS = {
    "appends": Campaign("appends", appends),
    "group commits": Campaign("group commits", group_commits),
    "large groups": Campaign("large groups", large_groups, sync_seconds=0.002),
    "rebuild": Campaign("rebuild", rebuild, prefilled),
    "checkpoint": Campaign("checkpoint", checkpoint, prefilled),
    "backup": Campaign("backup", backup, prefilled),
    "copy": Campaign("copy", copy, lambda path: prefilled(source_beside(path))),
    "seals": Campaign("seals", seals),
    "migration": Campaign("migration", migration, lambda path: shutil.copy(FIXTURES / "schema_v1.db", path)),
}


def cut_once(tmp: Path, campaign: Campaign, durability: str, mode: str, seed: int) -> tuple[list[str], Acks]:
    """One run: the workload until the power goes out at a random operation, then the checks."""
    rng = random.Random(seed)
    run = tmp / f"run-{durability}-{seed}"
    run.mkdir(parents=True)
    path = str(run / "store.db")
    if campaign.prepare is not None:
        campaign.prepare(path)
    total = operations(campaign, durability, tmp)
    with CrashDisk(cut_at=rng.randint(1, total), mode=mode, seed=seed, sync_seconds=campaign.sync_seconds) as disk:
        acks = Acks(alive=lambda: disk.alive)
        with contextlib.suppress(PowerCut, minies.MiniesError):  # the dead process's last words
            campaign.workload(path, durability, acks)
    if disk.rebuilt is None:  # the cut came after the last operation: nothing to check
        return [], acks
    after = run / "after"
    disk.write_rebuilt(str(after))
    return check(str(after / "store.db"), durability, acks, campaign.name), acks


_counts: dict[tuple[str, str], int] = {}


def operations(campaign: Campaign, durability: str, tmp: Path) -> int:
    """How many writes, truncates and syncs the workload does (counted once, on a dry run)."""
    key = (campaign.name, durability)
    if key not in _counts:
        dry = tmp / f"dry-{campaign.name}-{durability}"
        dry.mkdir(parents=True)
        path = str(dry / "store.db")
        if campaign.prepare is not None:
            campaign.prepare(path)
        with CrashDisk(sync_seconds=campaign.sync_seconds) as disk:
            campaign.workload(path, durability, Acks())
        _counts[key] = disk.operations
    return _counts[key]


def losses(broken: list[str]) -> list[str]:
    return [b for b in broken if "acknowledged appends lost" in b]


@pytest.mark.parametrize("durability", ["off", "normal"])
def test_the_harness_finds_what_weaker_durability_loses(tmp_path: Path, durability: str) -> None:
    """A harness that never fails proves nothing: with synchronous=OFF it must find lost
    acknowledged appends or damage, and at NORMAL lost acknowledged appends (NORMAL promises
    consistency, not durability)."""
    found = []
    for seed in range(60):
        broken, _ = cut_once(tmp_path, CAMPAIGNS["appends"], durability, "lost", seed)
        found += broken if durability == "off" else losses(broken)
        if found:
            break
    assert found, f"{durability}: 60 power cuts and nothing lost: the harness cannot see"


CUTS = 19 * STRESS  # per campaign, durability and mode: 9 x 2 x 4 x 19 = 1,368 cuts by default


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_power_cuts_keep_every_promise(tmp_path: Path, campaign: str, durability: str) -> None:
    cuts = 0
    for mode in MODES:
        for seed in range(CUTS):
            broken, _ = cut_once(tmp_path / mode, CAMPAIGNS[campaign], durability, mode, seed)
            if durability == "normal":
                broken = [b for b in broken if b not in losses(broken)]
            assert broken == [], f"{campaign} at {durability}, mode {mode}, seed {seed}: {broken}"
            cuts += 1
    print(f"{campaign} at {durability}: {cuts} power cuts, every promise kept")


def test_the_large_groups_campaign_cuts_the_power_in_the_middle_of_groups(tmp_path: Path) -> None:
    """Its commits carry several appends each (else its cuts would prove nothing about
    groups), and most of its cuts come after some appends were acknowledged."""
    campaign = CAMPAIGNS["large groups"]
    with CrashDisk(sync_seconds=campaign.sync_seconds):
        acks = Acks()
        campaign.workload(str(tmp_path / "store.db"), "full", acks)
    assert len(acks.appended) == 32 and acks.commits * 3 <= 32, f"32 appends took {acks.commits} commits"
    acknowledged = [len(cut_once(tmp_path, campaign, "full", "torn", seed)[1].appended) for seed in range(20)]
    assert min(acknowledged) < 8 and max(acknowledged) >= 16, acknowledged


def test_power_cuts_land_where_they_matter(tmp_path: Path) -> None:
    """The cut points are spread over the whole workload: some runs lose the power before the
    first append returned, most after several, and in many a write was in flight."""
    acknowledged = []
    for seed in range(40):
        _, acks = cut_once(tmp_path, CAMPAIGNS["appends"], "full", "torn", seed)
        acknowledged.append(len(acks.appended))
    assert min(acknowledged) == 0 and max(acknowledged) >= 8 and len(set(acknowledged)) >= 6, acknowledged


# ---------------------------------------------------------------------------- failing disks
def append_with_retries(store: minies.EventStore, i: int, versions: dict[str, int]) -> int:
    """An append whose outcome may be unknown after an error: retried with the same ids."""
    account = f"acc-{i % 3}"
    ids = [str(uuid.uuid4()) for _ in range(1 + i % 2)]
    events = [MoneyDeposited(amount=i) for _ in ids]
    for _ in range(3):
        try:
            version = store.append(
                account, events, aggregate_type="Account", event_ids=ids, expected_version=versions.get(account, 0)
            )
        except minies.StorageError as e:
            assert re.fullmatch(
                rf"cannot (append to {account!r}|commit): (disk I/O error|injected \w+ error on store\.db(-wal)?)",
                str(e),
            ), e
            continue
        versions[account] = version
        return len(ids)
    raise AssertionError(f"append {i} failed three times")


@pytest.mark.parametrize("target", ["store.db", "store.db-wal"])
@pytest.mark.parametrize("kind", ["write", "sync", "truncate"])
def test_an_io_error_is_a_storage_error_and_a_retry_with_the_same_ids_loses_and_doubles_nothing(
    tmp_path: Path, target: str, kind: str
) -> None:
    total = operations(CAMPAIGNS["appends"], "full", tmp_path)
    errors = 0
    for n in range(1, min(total, 60 * STRESS) + 1, 3):
        path = str(tmp_path / f"{kind}-{n}" / "store.db")
        os.makedirs(os.path.dirname(path))
        versions: dict[str, int] = {}
        expected_events = 0
        with CrashDisk(fail=(target, kind, n)) as disk:
            for _ in range(3):
                try:
                    store = open_store(path, "full")
                    break
                except minies.StorageError:
                    continue
            for i in range(10):
                expected_events += append_with_retries(store, i, versions)
            with contextlib.suppress(minies.StorageError):  # reported as ours, never a raw apsw error
                store.close()
            errors += disk.failed
        with open_store(path, "full") as store:
            assert store.verify().ok
            events = list(store.read_all())
            assert len(events) == expected_events == len({r.event_id for r in events})  # each append exactly once
            assert {a: store.version(a) for a in versions} == versions  # the store's view was never stale
            live = store.query("SELECT * FROM balances ORDER BY account_id")
            store.rebuild("Balances")
            assert store.query("SELECT * FROM balances ORDER BY account_id") == live
    if kind != "truncate":
        assert errors > 0, f"no {kind} on {target} ever failed: the injection missed"


@pytest.mark.parametrize("campaign", ["rebuild", "checkpoint", "backup", "copy", "migration", "group commits"])
def test_an_io_error_in_any_workload_is_a_storage_error_and_leaves_a_sound_file(tmp_path: Path, campaign: str) -> None:
    """Whatever fails, the user sees a minies error (never a raw apsw one), and the file still
    opens, verifies, and keeps every promise the power-cut checks list."""
    chosen = CAMPAIGNS[campaign]
    total = operations(chosen, "full", tmp_path)
    failures = 0
    for n in range(1, total + 1, max(1, total // 12)):
        for target, kind in (("store.db", "write"), ("store.db-wal", "write"), ("store.db-wal", "sync")):
            run = tmp_path / f"{target}-{kind}-{n}"
            run.mkdir()
            path = str(run / "store.db")
            if chosen.prepare is not None:
                chosen.prepare(path)
            acks = Acks()
            with CrashDisk(fail=(target, kind, n)) as disk:
                with contextlib.suppress(minies.MiniesError):
                    chosen.workload(path, "full", acks)
                failures += disk.failed
            assert check(path, "full", acks, chosen.name) == [], f"{campaign}: {kind} error #{n} on {target}"
    assert failures > 0, "no injected error ever fired"
