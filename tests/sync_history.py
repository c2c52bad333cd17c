"""Recorded histories of devices that write offline and sync through a hub, and their checker.

In the style of ``history``: five devices (processes, each a minies file opened with
``device=``) run a seeded workload of load-decide-append commands on aggregates they share
(so conflicts happen) and on their own, offline for many commands between syncs, against a
hub (a SQLite file, or PostgreSQL; reached directly, or served over HTTP by ``minies serve``
with a token per device). Every command and every sync is recorded with its
invocation and completion (``ok``, ``fail``, or ``unknown``: the process died first).

Three aggregate types, one per conflict policy:

- ``sync.Till`` (*reject*, the default): deposits, withdrawals (declined below zero) and
  two-event deposits (one append, a batch the hub places whole or not at all);
- ``sync.Jar`` (*accept*): commutative additions, placed even when the jar moved on;
- ``sync.Stock`` (a *retry* function): a rejected count is redone on the new state, exactly
  once (a device that dies before its retry commits hands the rejection over again).

Each Till and Stock event carries the value its decision saw (``before``), so an event the hub
placed on top of a state its device had not seen shows as a lost update.

Faults, chosen by the seed: a device kills itself (-9) before or after a command's append,
at the hub's door (its push built, not sent), after the hub settled its push (the reply
lost), or inside the device's transaction that takes the reply in; a timer kills it at a
random moment; the power goes out on a device's disk during a sync (``crashdisk``; the file
is rebuilt as the disk would have left it, and the device goes on from it). The parent
restarts every dead device on its file. One device syncs by bundle files, and imports
replies twice, imports older replies after newer ones, re-sends older pushes, and tries
bundles cut short (each must be refused, nothing written).

After every device's last syncs, ``check`` decides (see its docstring). ``reintroduce`` puts
bugs into the devices' processes (``MINIES_SYNC_BUG``) to show that the checker catches them.
A failing history names its seed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

import minies
from minies import _hub, _sync
from minies._device import Device
from minies._origins import KEY as ORIGIN

# ------------------------------------------------------------------ the domain

TILL, JAR, STOCK = "sync.Till", "sync.Jar", "sync.Stock"
REJECTING = frozenset({TILL, STOCK})  # the hub rejects their conflicts (Stock's are then retried)


class Deposited(minies.Event):
    event_type: ClassVar[str] = "synchist.Deposited"
    op: str
    amount: int
    before: int  # the balance the decision saw


class Withdrawn(minies.Event):
    event_type: ClassVar[str] = "synchist.Withdrawn"
    op: str
    amount: int
    before: int


class Added(minies.Event):
    event_type: ClassVar[str] = "synchist.Added"
    op: str
    amount: int


class Counted(minies.Event):
    event_type: ClassVar[str] = "synchist.Counted"
    op: str
    amount: int
    before: int


DELTA_TYPES = ("synchist.Deposited", "synchist.Withdrawn", "synchist.Added", "synchist.Counted")


def delta(event: Any) -> int:
    return -event.amount if isinstance(event, Withdrawn) else event.amount


def before(event: Any) -> int | None:
    return getattr(event, "before", None)


class Till(minies.Aggregate):
    aggregate_type: ClassVar[str] = TILL
    value: int = 0

    def apply(self, event: minies.Event) -> None:
        self.value += delta(event)


class Jar(Till):
    aggregate_type: ClassVar[str] = JAR


class Stock(Till):
    aggregate_type: ClassVar[str] = STOCK


CLASSES: dict[str, type[Till]] = {TILL: Till, JAR: Jar, STOCK: Stock}


class Ledger(minies.Projection):
    """The read model: each aggregate's value and how many events made it."""

    name: ClassVar[str] = "ledger"
    version: ClassVar[int] = 1

    def setup(self, db: Any) -> None:
        db.execute("CREATE TABLE ledger (id TEXT PRIMARY KEY, type TEXT NOT NULL, value INTEGER, events INTEGER)")

    def handle(self, db: Any, record: minies.Recorded) -> None:
        if record.event_type not in DELTA_TYPES:
            return
        db.execute(
            "INSERT INTO ledger (id, type, value, events) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (id) DO UPDATE SET value = ledger.value + excluded.value, events = ledger.events + 1",
            (record.aggregate_id, record.aggregate_type, delta(record.data)),
        )


def fold(records: Iterator[minies.Recorded] | list[minies.Recorded]) -> list[tuple[str, str, int, int]]:
    """What the ledger must hold after ``records``: a rebuild, computed here."""
    rows: dict[str, list[Any]] = {}
    for r in records:
        if r.event_type in DELTA_TYPES:
            row = rows.setdefault(r.aggregate_id, [r.aggregate_id, r.aggregate_type, 0, 0])
            row[2] += delta(r.data)
            row[3] += 1
    return sorted(tuple(row) for row in rows.values())  # type: ignore[misc]


LEDGER = "SELECT id, type, value, events FROM ledger ORDER BY id"

# ------------------------------------------------------------------ a history's parameters


@dataclass
class Plan:
    seed: int
    hub: str  # a file path or a PostgreSQL URL
    folder: str
    devices: int = 5
    commands: int = 60  # per device (each step is a command or a sync)
    shared: int = 6  # shared aggregates per type
    kills: float = 0.0  # chance that a step kills its device
    power: float = 0.0  # chance that a sync runs on a disk whose power goes out
    bundles: bool = False  # the last device syncs by bundle files, with their faults
    audits: float = 0.0  # chance that a step is followed by a look at the device's read model
    url: str = ""  # the hub served over HTTP (``serve``): the devices sync through it, with their tokens
    tokens: dict[str, str] = field(default_factory=dict)
    server_kills: bool = False  # the server is killed -9 now and then: a sync that cannot reach it fails
    offline: tuple[int, ...] = (2, 6, 15, 40, 10)  # mean commands between syncs, per device

    def device(self, n: int) -> str:
        return f"dev-{n}"

    def path(self, n: int) -> str:
        return os.path.join(self.folder, f"dev-{n}.db")

    def recording(self, n: int) -> str:
        return os.path.join(self.folder, f"dev-{n}.jsonl")

    def describe(self) -> str:
        kind = ("postgres" if self.hub.startswith("postgres") else "sqlite") + (" over http" if self.url else "")
        return (
            f"sync history: seed={self.seed} hub={kind} devices={self.devices} commands={self.commands} "
            f"kills={self.kills} power={self.power} bundles={self.bundles}"
        )


# ------------------------------------------------------------------ recording


@dataclass
class Op:
    key: str
    device: int
    kind: str  # cmd | redo | sync | final
    args: dict[str, Any]
    start: int
    end: float = float("inf")
    outcome: str = "unknown"
    result: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """A device's operations, a line per invocation and per completion, appended to its file
    across restarts: a killed process leaves its last operation invoked, never completed."""

    def __init__(self, path: str, device: int) -> None:
        self.device = device
        self._file = open(path, "a", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def invoke(self, key: str, kind: str, **args: Any) -> Op:
        op = Op(key, self.device, kind, args, time.monotonic_ns())
        with self._lock:
            self._file.write(json.dumps(["invoke", key, self.device, kind, args, op.start]) + "\n")
        return op

    def complete(self, op: Op, outcome: str, **result: Any) -> None:
        op.end, op.outcome, op.result = time.monotonic_ns(), outcome, result
        with self._lock:
            self._file.write(json.dumps(["complete", op.key, op.end, outcome, result]) + "\n")

    def close(self) -> None:
        self._file.close()


def read_recording(path: str) -> list[Op]:
    ops: dict[str, Op] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if entry[0] == "invoke":
                _, key, device, kind, args, start = entry
                ops[key] = Op(key, device, kind, args, start)
            elif entry[1] in ops:
                _, key, end, outcome, result = entry
                ops[key].end, ops[key].outcome, ops[key].result = end, outcome, result
    return list(ops.values())


# ------------------------------------------------------------------ faults inside a device's process

KILLED = -signal.SIGKILL
POWER_CUT = 75  # a device process's exit code after its disk lost power
_kill_at: list[str] = [""]  # the point of the current step at which this process dies


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def _at(point: str) -> None:
    if _kill_at[0] == point:
        die()


_REAL_EXCHANGE = _hub.exchange
_REAL_UNDO = Device.undo


_REAL_POST = _sync.post


def _exchange(hub: minies.EventStore, push: Any, **options: Any) -> Any:
    _at("before-exchange")
    reply = _REAL_EXCHANGE(hub, push, **options)
    _at("after-exchange")
    return reply


def _post(url: str, push: Any, token: str | None) -> Any:
    _at("before-exchange")
    reply = _REAL_POST(url, push, token)
    _at("after-exchange")  # the hub settled the push; the reply is lost with the process
    return reply


def _undo(self: Device) -> Any:
    undone = _REAL_UNDO(self)
    _at("in-receive")  # inside the transaction that takes the reply in
    return undone


def install_faults() -> None:
    _hub.exchange = _exchange  # type: ignore[assignment]  # _sync looks it up at each round trip
    _sync.post = _post  # type: ignore[assignment]
    Device.undo = _undo  # type: ignore[method-assign]


def reintroduce(bug: str) -> None:
    """Put a bug back (in this process), to show that the checker catches it."""
    if bug == "no-conflicts":  # the hub's conflict check lost: it places every event it is pushed
        if hasattr(_hub, "_Placing"):
            _hub._Placing.conflict = lambda self, p: ""  # type: ignore[method-assign]
        else:  # (before the hub placed a push in memory)
            _hub._conflict = lambda conn, device, p: ""  # type: ignore[attr-defined]
    elif bug == "no-undo":  # a sync takes the reply in without undoing the pending changes to the read models
        Device.undo = lambda self: (self._projector.forget(), _at("in-receive"), True)[2]  # type: ignore[method-assign]
    elif bug == "retry-at-most-once":  # a rejection noted as handed over before its retry ran (minies before d15f138)
        _sync._hand_over = _hand_over_at_most_once  # type: ignore[assignment]
    else:
        raise ValueError(bug)


def _hand_over_at_most_once(store: minies.EventStore, device: Device, rejected: Any, retries: dict[str, Any]) -> int:
    redone = 0
    for rejection in _sync._rejections(store, version=device.handled()):  # type: ignore[attr-defined]
        device.handle(rejection.version)  # committed on its own: a death after it loses the retry
        retry = retries.get(rejection.data.aggregate_type)  # type: ignore[attr-defined]
        if retry is not None:
            retry(store, rejection)
            redone += 1
    return redone


# ------------------------------------------------------------------ a device


class DeviceRun:
    """One device's workload, in a process of its own (or, for the last syncs, the parent's)."""

    def __init__(self, plan: Plan, n: int, generation: int) -> None:
        self.plan, self.n, self.generation = plan, n, generation
        self.name = plan.device(n)
        self.rec = Recorder(plan.recording(n), n)
        self.hub = minies.EventStore(plan.hub, projections=[Ledger()])  # before any simulated disk
        self.store = self.open()
        self.bundles = plan.bundles and n == plan.devices - 1
        self.fault = ""  # the fault planned for the current step
        self.replies: list[str] = []  # the reply bundles it took in, oldest first
        self.pushes: list[str] = []

    def open(self) -> minies.EventStore:
        return minies.EventStore(self.plan.path(self.n), device=self.name, projections=[Ledger()])

    def close(self) -> None:
        self.store.close()
        self.hub.close()
        self.rec.close()

    @property
    def conflicts(self) -> dict[str, Any]:
        return {TILL: "reject", JAR: "accept", STOCK: self.redo}

    # -------------------------------------------------------------- commands
    def command(self, k: int, rng: random.Random) -> None:
        roll = rng.random()
        aggregate_type = TILL if roll < 0.5 else JAR if roll < 0.75 else STOCK
        if rng.random() < 0.7:
            aggregate_id = f"{aggregate_type}-shared-{rng.randrange(self.plan.shared)}"
        else:
            aggregate_id = f"{aggregate_type}-{self.name}-{rng.randrange(2)}"
        kind = "deposit"
        if aggregate_type == TILL:
            kind = rng.choice(["deposit", "deposit", "withdraw", "split"])
        op = f"{self.plan.seed}/{self.name}/{k}"
        amounts = [rng.randint(1, 9) for _ in range(2 if kind == "split" else 1)]
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{op}/{i}")) for i in range(len(amounts))]
        o = self.rec.invoke(
            op, "cmd", type=aggregate_type, aggregate=aggregate_id, action=kind, amounts=amounts, event_ids=ids,
            fault=self.fault,
        )  # fmt: skip
        _at("cmd-before")
        cls = CLASSES[aggregate_type]
        agg = self.store.load(cls, aggregate_id) if self.store.version(aggregate_id) else cls(id=aggregate_id)
        if kind == "withdraw" and agg.value < amounts[0]:
            self.rec.complete(o, "fail", error="declined", seen=agg.value, version=agg.version)
            return
        events: list[minies.Event] = []
        value = agg.value
        for amount in amounts:
            if aggregate_type == JAR:
                events.append(Added(op=op, amount=amount))
            elif aggregate_type == STOCK:
                events.append(Counted(op=op, amount=amount, before=value))
            elif kind == "withdraw":
                events.append(Withdrawn(op=op, amount=amount, before=value))
            else:
                events.append(Deposited(op=op, amount=amount, before=value))
            value += delta(events[-1])
        version = self.store.append(
            aggregate_id, events, aggregate_type=aggregate_type, expected_version=agg.version, event_ids=ids
        )
        _at("cmd-after")
        self.rec.complete(o, "ok", version=version, seen=agg.value, loaded_at=agg.version)

    def redo(self, store: minies.EventStore, rejection: minies.Recorded) -> None:
        """The retry policy of sync.Stock: the rejected count, counted again on the new state."""
        r: Any = rejection.data
        original = msgspec.json.decode(r.data)
        key = f"{original['op']}/redo/{r.seq}"
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, key))]
        o = self.rec.invoke(key, "redo", type=STOCK, aggregate=r.aggregate_id, of=r.event_id, event_ids=ids)
        stock = store.load(Stock, r.aggregate_id) if store.version(r.aggregate_id) else Stock(id=r.aggregate_id)
        event = Counted(op=original["op"], amount=original["amount"], before=stock.value)
        version = store.append(
            r.aggregate_id, [event], aggregate_type=STOCK, expected_version=stock.version, event_ids=ids
        )
        self.rec.complete(o, "ok", version=version)

    # -------------------------------------------------------------- syncs
    def sync(self, key: str, kind: str = "sync") -> dict[str, Any]:
        o = self.rec.invoke(key, kind, fault=self.fault)
        try:
            result = self.exchange(key)
        except minies.MiniesError as e:  # the checker names it
            self.rec.complete(o, "fail", error=repr(e))
            return {"placed": 0, "rejected": 0, "error": repr(e)}
        self.rec.complete(o, "ok", **result)
        return result

    def exchange(self, key: str) -> dict[str, Any]:
        """One sync, directly or by bundles; with where the device's confirmed log ends after it
        (the checker finds it in the hub's log)."""
        if self.bundles:
            result = self.by_bundles(key)
        else:
            hub: Any = self.plan.url or self.hub
            report = self.store.sync(hub, conflicts=self.conflicts, token=self.plan.tokens.get(self.name))
            result = {"placed": report.placed, "rejected": report.rejected, "retried": report.retried}
        return {**result, "head": list(self.store.head())}

    def sync_on_a_failing_disk(self, key: str, rng: random.Random) -> None:
        """A sync on a disk that loses power at a random write or sync: the process then
        leaves the files as the disk would have, and exits with ``POWER_CUT``."""
        from crashdisk import MODES, CrashDisk, PowerCut

        self.store.close()
        with CrashDisk(cut_at=rng.randint(1, 120), mode=rng.choice(MODES), seed=rng.randrange(1 << 30)) as disk:
            o = self.rec.invoke(key, "sync", fault="power" if not self.fault else f"power+{self.fault}")
            try:
                self.store = self.open()
                result = self.exchange(key)
                if disk.alive:
                    self.rec.complete(o, "ok", **result)
            except PowerCut:
                pass
            except minies.MiniesError as e:
                if disk.alive:  # not the power cut's doing: the checker names it
                    self.rec.complete(o, "fail", error=repr(e))
            with contextlib.suppress(PowerCut, minies.MiniesError):
                self.store.close()
            if not disk.alive:
                disk.write_rebuilt(os.path.join(self.plan.folder, f"rebuilt-{self.n}"))
                self.rec._file.flush()
                os._exit(POWER_CUT)
        self.store = self.open()

    def by_bundles(self, key: str) -> dict[str, Any]:
        """Sync through bundle files, with the faults bundles meet (see the module's docstring)."""
        folder = Path(self.plan.folder) / f"bundles-{self.n}"
        folder.mkdir(exist_ok=True)
        rng = random.Random(f"{key}/bundles")
        placed = rejected = retried = rounds = 0
        anomalies: list[str] = []
        while True:
            rounds += 1
            push, reply = (
                folder / f"{key.replace('/', '_')}-{rounds}.push",
                folder / f"{key.replace('/', '_')}-{rounds}.reply",
            )
            _sync.export_push(self.store, push, accept=frozenset({JAR}))
            if rng.random() < 0.3:
                anomalies += self.truncated_push(push, rng)
            _at("before-exchange")
            answered = _sync.answer_bundle(self.hub, push, reply)
            _at("after-exchange")
            placed, rejected = placed + answered.placed, rejected + answered.rejected
            if rng.random() < 0.3:
                anomalies += self.truncated_reply(reply, rng)
            _, more = _sync.import_reply(self.store, reply)
            if rng.random() < 0.3:  # the same reply again: nothing changes
                anomalies += self.unchanged("a reply imported twice", reply)
            if self.replies and rng.random() < 0.3:  # an older reply after this one: nothing changes
                older = rng.choice(self.replies)
                anomalies += self.unchanged(f"an older reply {older}", older)
            if self.pushes and rng.random() < 0.3:  # an older push, re-sent: the hub places nothing twice
                again = _sync.answer_bundle(self.hub, rng.choice(self.pushes), folder / "again.reply")
                if again.placed or again.rejected:
                    anomalies.append(f"an older push re-sent placed {again.placed} and rejected {again.rejected}")
                try:  # its reply (perhaps with the hub's newer events) is taken in as any other
                    _sync.import_reply(self.store, folder / "again.reply")
                except minies.MiniesError as e:
                    anomalies.append(f"the reply to an older push re-sent was refused: {e}")
            self.replies.append(str(reply))
            self.pushes.append(str(push))
            # the rejections not yet handed over, each retried in one transaction with the note
            # that it was (as sync does): exactly once, a death meanwhile or not
            redone = _sync._hand_over(self.store, self.store._device, None, {STOCK: self.redo})
            retried += redone
            if not more and not redone:
                break
        return {"placed": placed, "rejected": rejected, "retried": retried, "anomalies": anomalies}

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            self.store.head(),
            [r.event_id for r in self.store.pending()],
            self.store.query(LEDGER),
            len(self.store.rejections()),
        )

    def unchanged(self, what: str, reply: str | Path) -> list[str]:
        """Import ``reply`` (taken in already): it must change nothing, or be refused."""
        before = self.fingerprint()
        with contextlib.suppress(minies.MiniesError):
            _sync.import_reply(self.store, reply)
        after = self.fingerprint()
        return [] if before == after else [f"{what} changed the device: {before} -> {after}"]

    def truncated_reply(self, reply: Path, rng: random.Random) -> list[str]:
        raw = reply.read_bytes()
        cut = reply.with_suffix(".cut")
        cut.write_bytes(raw[: rng.randrange(1, len(raw))])
        before = self.fingerprint()
        try:
            _sync.import_reply(self.store, cut)
        except minies.MiniesError:
            return [] if self.fingerprint() == before else ["a truncated reply was refused but changed the device"]
        return [f"a reply cut to {cut.stat().st_size} of {len(raw)} bytes was taken in"]

    def truncated_push(self, push: Path, rng: random.Random) -> list[str]:
        raw = push.read_bytes()
        cut = push.with_suffix(".cut")
        cut.write_bytes(raw[: rng.randrange(1, len(raw))])
        before = hub_cursor(self.hub, self.name)
        try:
            _sync.answer_bundle(self.hub, cut, cut.with_suffix(".cutreply"))
        except minies.MiniesError:
            return [] if hub_cursor(self.hub, self.name) == before else ["a truncated push was refused but settled"]
        return [f"a push cut to {cut.stat().st_size} of {len(raw)} bytes was answered"]

    # -------------------------------------------------------------- the run
    def run(self, start: int) -> None:
        period = self.plan.offline[self.n % len(self.plan.offline)]
        for k in range(start, self.plan.commands):
            rng = random.Random(f"{self.plan.seed}/{self.name}/{k}")
            is_sync = rng.random() < 1 / period
            fault = rng.random()
            timer = None
            _kill_at[0] = self.fault = ""
            if fault < self.plan.kills:
                point = self.fault = rng.choice(
                    ["before-exchange", "after-exchange", "in-receive", "timer"]
                    if is_sync
                    else ["cmd-before", "cmd-after", "timer"]
                )
                if point == "timer":
                    timer = threading.Timer(rng.uniform(0, 0.004), die)
                    timer.start()
                else:
                    _kill_at[0] = point
            key = f"{self.plan.seed}/{self.name}/{k}"
            if is_sync and fault > 1 - self.plan.power:
                self.sync_on_a_failing_disk(key, rng)
            elif is_sync:
                self.sync(key)
            else:
                self.command(k, rng)
            if timer is not None:
                timer.cancel()
            _kill_at[0] = ""
            if self.plan.audits and (k == start or random.Random(f"{key}/audit").random() < self.plan.audits):
                self.audit(f"{key}/audit")  # (after a restart always: what the crash left)
        _kill_at[0] = ""

    def audit(self, key: str) -> None:
        """The device's read model shows its confirmed log plus its pending tail, at any time."""
        o = self.rec.invoke(key, "audit")
        shown, folded = self.store.query(LEDGER), fold([*self.store.read_all(), *self.store.pending()])
        if shown != folded:
            self.rec.complete(o, "fail", error=_diff(shown, folded))
        else:
            self.rec.complete(o, "ok")


def hub_cursor(hub: minies.EventStore, device: str) -> Any:
    with contextlib.suppress(Exception):  # no cursor table yet
        return hub._conn.execute("SELECT seq, origin FROM minies_origins WHERE device = ?", (device,)).fetchone()
    return None


def next_step(plan: Plan, n: int) -> int:
    """Where a restarted device goes on: after the last step it invoked."""
    keys = [int(op.key.rsplit("/", 1)[1]) for op in read_recording(plan.recording(n)) if op.kind in ("cmd", "sync")]
    return max([-1, *keys]) + 1


def device_main(argument: str) -> None:
    fields, n, generation = json.loads(argument)
    fields["offline"] = tuple(fields["offline"])
    plan = Plan(**fields)
    install_faults()
    if os.environ.get("MINIES_SYNC_BUG"):
        reintroduce(os.environ["MINIES_SYNC_BUG"])
    device = DeviceRun(plan, n, generation)
    device.run(next_step(plan, n))
    device.close()


# ------------------------------------------------------------------ running a history


@dataclass
class Run:
    """What happened to the processes (besides what they recorded)."""

    kills: int = 0
    power_cuts: int = 0
    restarts: int = 0
    final_rounds: int = 0
    server_kills: int = 0
    seconds: float = 0.0


def _spawn(plan: Plan, n: int, generation: int) -> subprocess.Popen[bytes]:
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    argument = json.dumps([asdict(plan), n, generation])
    code = "import sync_history, sys; sync_history.device_main(sys.argv[1])"
    with open(os.path.join(plan.folder, f"dev-{n}.stderr"), "ab") as log:  # the child holds its own copy
        return subprocess.Popen([sys.executable, "-c", code, argument], env=env, stderr=log, stdout=log)


def _power_restored(plan: Plan, n: int) -> None:
    """Put the files a power cut left in place of the device's."""
    rebuilt = Path(plan.folder) / f"rebuilt-{n}"
    path = Path(plan.path(n))
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal", "-journal"):
        found = rebuilt / f"{path.name}{suffix}"
        if found.exists():
            shutil.copyfile(found, f"{path}{suffix}")
    shutil.rmtree(rebuilt)


def run(plan: Plan, timeout: float = 600.0, server: Server | None = None) -> tuple[list[Op], Run]:
    """Run the devices' processes to the end of their workloads (restarting the dead ones),
    then every device's last syncs, until a whole round settles and pulls nothing. With
    ``server`` and ``plan.server_kills``, the server is killed (-9) and started again now and then."""
    started = time.monotonic()
    os.makedirs(plan.folder, exist_ok=True)
    with minies.EventStore(plan.hub, projections=[Ledger()]):  # the hub exists before anyone syncs
        pass
    stats = Run()
    rng = random.Random(f"{plan.seed}/server")
    next_kill = time.monotonic() + rng.uniform(0.4, 1.2)
    generation = dict.fromkeys(range(plan.devices), 0)
    procs = {n: _spawn(plan, n, 0) for n in range(plan.devices)}
    deadline = time.monotonic() + timeout
    while procs:
        if time.monotonic() > deadline:
            for p in procs.values():
                p.kill()
            raise AssertionError(f"the devices did not finish in {timeout} s ({plan.describe()})")
        for n, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            del procs[n]
            if code == 0:
                continue
            if code == KILLED:
                stats.kills += 1
            elif code == POWER_CUT:
                stats.power_cuts += 1
                _power_restored(plan, n)
            else:
                log = Path(plan.folder, f"dev-{n}.stderr").read_text(errors="replace")[-3000:]
                raise AssertionError(f"device {n} failed with exit code {code} ({plan.describe()}):\n{log}")
            stats.restarts += 1
            generation[n] += 1
            procs[n] = _spawn(plan, n, generation[n])
        if server is not None and plan.server_kills and time.monotonic() > next_kill:
            server.kill()
            server.start()
            stats.server_kills += 1
            next_kill = time.monotonic() + rng.uniform(0.4, 1.2)
        time.sleep(0.005)
    # the last syncs, in the parent (no faults): until a round places, rejects and pulls nothing
    devices = [DeviceRun(plan, n, generation[n] + 1) for n in range(plan.devices)]
    try:
        for round_ in range(10):
            stats.final_rounds += 1
            quiet = True
            for d in devices:
                before = d.store.head()
                result = d.sync(f"{plan.seed}/{d.name}/final-{round_}", "final")
                if result["placed"] or result["rejected"] or d.store.head() != before:
                    quiet = False
            if quiet:
                break
    finally:
        for d in devices:
            d.close()
    stats.seconds = time.monotonic() - started
    ops = [op for n in range(plan.devices) for op in read_recording(plan.recording(n))]
    return ops, stats


class Server:
    """``minies serve`` on a port of its own, killed (-9) and started again on demand."""

    def __init__(self, plan: Plan) -> None:
        import socket

        self.plan = plan
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return Path(self.plan.folder) / f"serve-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "minies", "serve", self.plan.hub, "--port", str(self.port)]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        for _ in range(1500):
            said = self.log.read_text()
            if " at http" in said:
                self.plan.url = said.split(" at ", 1)[1].split()[0]
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"minies serve did not come up ({self.plan.describe()}): {self.log.read_text()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)
        said = self.log.read_text()
        if "Traceback" in said or self.process.returncode != 0:
            raise AssertionError(f"minies serve failed ({self.plan.describe()}): {said[-3000:]}")


@contextlib.contextmanager
def serve(plan: Plan) -> Iterator[Server]:
    """Serve the hub over HTTP (``minies serve``) with a token for each device, for ``run``."""
    from minies._serve import add_device

    os.makedirs(plan.folder, exist_ok=True)
    with minies.EventStore(plan.hub, projections=[Ledger()]) as hub:
        plan.tokens = {plan.device(n): add_device(hub, plan.device(n)) for n in range(plan.devices)}
    server = Server(plan)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ the checker


class Violation(AssertionError):
    pass


def check(plan: Plan, ops: list[Op]) -> dict[str, int]:
    """Raise ``Violation`` naming the first broken promise; return counts of what was checked.

    - no sync failed (but one that found no server while it was killed);
    - after every sync, the device's confirmed log ended at a position and hash of the hub's
      log (a prefix of it); at every look mid-run (``audits``), the device's read model was
      its confirmed log plus its pending tail;
    - the hub and every device verify, origins too; every device holds the hub's log exactly
      (its head hash) and nothing pending;
    - every store's read model equals a fold of its log (and a device's, minies' rebuild);
    - every bundle fault went as it must (see ``DeviceRun.by_bundles``);
    - every event a command or a retry wrote is settled exactly once: placed once on the hub
      (by event id) or rejected once (an ``EventRejected`` naming it), never both, never
      neither; an append's events all the same way; a command killed before its commit
      whole or not at all; a declined command wrote nothing; nothing else is in the log;
    - the hub's Tills and Stocks show no lost update (every placed event decided on the
      value at the version before it); a Jar's additions are all placed;
    - every rejection is justified (the aggregate was not at the version the device expected,
      or the event there was another writer's, placed after the device's base), names a type
      whose policy rejects, and every placed event of such a type is not a conflict;
    - a rejected Stock count is counted again (a retry) exactly once, so each Stock count that
      reached the hub counts there once, as written or redone.
    """
    counts: collections.Counter[str] = collections.Counter()
    refused = [
        op
        for op in ops
        if op.kind in ("sync", "final")
        and op.outcome == "fail"
        and not (plan.server_kills and op.kind == "sync" and "cannot reach the hub" in op.result.get("error", ""))
    ]
    counts["syncs_that_found_no_server"] = sum(1 for op in ops if op.outcome == "fail" and op.kind == "sync") - len(
        refused
    )
    if refused:
        raise Violation(f"sync {refused[0].key} failed: {refused[0].result.get('error')}")
    wrong = [op for op in ops if op.kind == "audit" and op.outcome == "fail"]
    if wrong:
        raise Violation(
            f"at {wrong[0].key} the read model differed from the device's confirmed log plus its pending tail: "
            f"{wrong[0].result['error']}"
        )
    counts["audits"] = sum(1 for op in ops if op.kind == "audit")
    # (a served hub's server keeps no read model: it catches up as the hub opens with it)
    with minies.EventStore(plan.hub, projections=[Ledger()] if plan.url else ()) as hub:
        log = list(hub.read_all())
        head = hub.head()
        report = hub.verify(origins=True)
        if not report.ok:
            raise Violation(f"the hub does not verify: {report.reason} (position {report.first_bad_position})")
        if hub.query(LEDGER) != fold(log):
            raise Violation(
                f"the hub's read model differs from a fold of its log: {_diff(hub.query(LEDGER), fold(log))}"
            )
        counts["devices_on_hub"] = report.devices
        hashes = dict(hub._conn.execute("SELECT position, hash FROM events").fetchall())
    for op in ops:  # after every sync, the device's confirmed log was a prefix of the hub's
        if op.outcome == "ok" and op.result.get("head", [0])[0]:
            position, digest = op.result["head"]
            if bytes(hashes.get(position, b"")).hex() != digest:
                raise Violation(f"after sync {op.key} the device's log ended at {position} with a hash the hub's lacks")
            counts["heads_checked"] += 1
    for n in range(plan.devices):
        with minies.EventStore(plan.path(n), device=plan.device(n), projections=[Ledger()]) as device:
            mine = list(device.read_all())
            if device.head() != head:
                raise Violation(f"device {n} ends at {device.head()}, the hub at {head} after the last syncs")
            if device.pending():
                raise Violation(f"device {n} holds {len(device.pending())} pending events after the last syncs")
            report = device.verify(origins=True, expect_head=f"{head[0]} {head[1]}")
            if not report.ok:
                raise Violation(f"device {n} does not verify: {report.reason}")
            if device.query(LEDGER) != fold(mine):
                raise Violation(
                    f"device {n}'s read model differs from a fold of its log: {_diff(device.query(LEDGER), fold(mine))}"
                )
            shown = device.query(LEDGER)
        copy = os.path.join(plan.folder, f"rebuilt-{n}.db")  # and from minies' own rebuild, on a copy
        with minies.EventStore(plan.path(n), device=plan.device(n)) as device:
            device.backup(copy)
        with minies.EventStore(copy, device=plan.device(n), projections=[Ledger()]) as rebuilt:
            rebuilt.rebuild("ledger")
            if rebuilt.query(LEDGER) != shown:
                raise Violation(
                    f"device {n}'s read model differs from its rebuild: {_diff(shown, rebuilt.query(LEDGER))}"
                )
    anomalies = [(op.key, a) for op in ops for a in op.result.get("anomalies", [])]
    if anomalies:
        raise Violation(f"a bundle fault went wrong at {anomalies[0][0]}: {anomalies[0][1]}")
    counts.update(_check_settled(ops, log))
    counts.update(_check_decisions(log))
    counts["events"] = len(log)
    counts["ops"] = len(ops)
    return dict(counts)


def _diff(a: list[Any], b: list[Any]) -> str:
    sa, sb = set(map(tuple, a)), set(map(tuple, b))
    return f"read model only {sorted(sa - sb)[:3]}, fold only {sorted(sb - sa)[:3]}"


def _check_settled(ops: list[Op], log: list[minies.Recorded]) -> dict[str, int]:
    placed = collections.Counter(r.event_id for r in log)
    rejections = [r for r in log if r.event_type == minies.EventRejected.event_type]
    rejected = collections.Counter(r.data.event_id for r in rejections)  # type: ignore[attr-defined]
    writes = [op for op in ops if op.kind in ("cmd", "redo")]
    written: set[str] = set()
    counts: collections.Counter[str] = collections.Counter()
    for op in writes:
        ids = op.args["event_ids"]
        written.update(ids)
        found = [(placed[i], rejected[i]) for i in ids]
        for i, (p, r) in zip(ids, found, strict=True):
            if p + r > 1:
                raise Violation(f"{op.kind} {op.key}: event {i} is placed {p} times and rejected {r} times")
        settled = {p + r for p, r in found}
        if op.outcome == "ok" and settled != {1}:
            raise Violation(f"acknowledged {op.kind} {op.key} is neither placed nor rejected: {found}")
        if op.outcome == "fail" and settled != {0}:
            raise Violation(f"declined {op.kind} {op.key} wrote {found}")
        if op.outcome == "unknown" and len(settled) != 1:
            raise Violation(f"{op.kind} {op.key}, killed, is settled in part: {found}")
        if len({p for p, _ in found}) != 1:
            raise Violation(f"{op.kind} {op.key}'s append is placed in part and rejected in part: {found}")
        if op.outcome == "unknown":
            counts["killed_commands"] += 1
            counts["killed_commands_committed"] += settled == {1}
        if settled == {1}:
            counts["device_events"] += len(ids)
            counts["rejected"] += sum(r for _, r in found)
    phantoms = [r.event_id for r in log if r.event_type in DELTA_TYPES and r.event_id not in written]
    if phantoms:
        raise Violation(f"the hub holds events no device recorded writing: {phantoms[:3]}")
    unclaimed = [r.data.event_id for r in rejections if r.data.event_id not in written]  # type: ignore[attr-defined]
    if unclaimed:
        raise Violation(f"the hub rejected events no device recorded writing: {unclaimed[:3]}")
    # a rejected Stock count is counted again, exactly once (a retry is handed over in one
    # transaction with the note that it was: a device that died meanwhile hands it over again)
    redos = collections.Counter(op.args["of"] for op in ops if op.kind == "redo")
    for r in rejections:
        data: Any = r.data
        if data.aggregate_type == STOCK and redos[data.event_id] != 1:
            raise Violation(
                f"the rejected Stock count {data.event_id} of {data.device} was counted again "
                f"{redos[data.event_id]} times"
            )
    redone = set(redos)
    # so a Stock count that reached the hub counts there exactly once (as written, or redone)
    counted = collections.Counter(r.data.op for r in log if r.event_type == "synchist.Counted")  # type: ignore[attr-defined]
    for op in writes:
        if op.kind == "cmd" and op.args["type"] == STOCK:
            reached = any(placed[i] + rejected[i] for i in op.args["event_ids"])
            if counted[op.key] != int(reached):
                raise Violation(f"the Stock count {op.key} counts {counted[op.key]} times on the hub")
    counts["commands"] = sum(1 for op in ops if op.kind == "cmd")
    counts["redos"] = len(redone)
    counts["syncs"] = sum(1 for op in ops if op.kind in ("sync", "final"))
    counts["killed_syncs"] = sum(1 for op in ops if op.kind == "sync" and op.outcome == "unknown")
    for op in ops:  # the faults that struck (a timer's kill lands where it lands)
        if op.args.get("fault") and op.outcome == "unknown":
            counts[f"struck:{op.kind}:{op.args['fault']}"] += 1
    counts["bundle_syncs"] = sum(1 for op in ops if op.kind in ("sync", "final") and "anomalies" in op.result)
    return dict(counts)


def _check_decisions(log: list[minies.Recorded]) -> dict[str, int]:
    """Replay the hub's log: every placement and every rejection as the policies decide."""
    versions: dict[str, int] = collections.defaultdict(int)
    values: dict[str, int] = collections.defaultdict(int)
    at_version: dict[tuple[str, int], tuple[int, str | None]] = {}  # (position, device) of each version
    counts: collections.Counter[str] = collections.Counter()
    for r in log:
        if r.event_type == minies.EventRejected.event_type:
            d: Any = r.data
            if d.aggregate_type not in REJECTING:
                raise Violation(f"the hub rejected {d.event_id}, of {d.aggregate_type}, whose policy accepts")
            if not _conflict(versions, at_version, d.aggregate_id, d.expected, d.base, d.device):
                raise Violation(
                    f"unjustified rejection at position {r.position}: {d.device}'s {d.event_id} expected "
                    f"{d.aggregate_id} at version {d.expected} (base {d.base}), and it was, by an event it had seen"
                )
            counts["rejections"] += 1
            continue
        if r.event_type not in DELTA_TYPES:
            continue
        origin = r.metadata.get(ORIGIN)
        if origin is None:
            raise Violation(f"the hub's event at position {r.position} has no origin")
        agg = r.aggregate_id
        if r.aggregate_type in REJECTING:
            if _conflict(versions, at_version, agg, origin["expected"], origin["base"], origin["device"]):
                raise Violation(
                    f"unjustified placement at position {r.position}: {origin['device']}'s event (expected version "
                    f"{origin['expected']}, base {origin['base']}) was placed on {agg} at version {r.version}, "
                    "which had moved on without the device knowing"
                )
            if before(r.data) != values[agg]:
                raise Violation(
                    f"lost update: {agg} version {r.version} ({r.data.op}, {origin['device']}) was decided on "  # type: ignore[attr-defined]
                    f"{before(r.data)}, but the value at version {r.version - 1} was {values[agg]}"
                )
            if values[agg] + delta(r.data) < 0:
                raise Violation(f"{agg} went below zero at version {r.version}")
        else:  # accepted: placed even on a conflict
            counts["accepted_conflicts"] += _conflict(
                versions, at_version, agg, origin["expected"], origin["base"], origin["device"]
            )
        if r.version != versions[agg] + 1:
            raise Violation(f"{agg}: version {r.version} after {versions[agg]}")
        versions[agg] = r.version
        values[agg] += delta(r.data)
        at_version[(agg, r.version)] = (r.position, origin["device"])
        counts["placed"] += 1
    return dict(counts)


def _conflict(
    versions: dict[str, int],
    at_version: dict[tuple[str, int], tuple[int, str | None]],
    aggregate_id: str,
    expected: int | None,
    base: int,
    device: str,
) -> bool:
    """Whether an event written expecting ``aggregate_id`` at ``expected`` (its device's log
    ending at hub position ``base``) conflicts with the hub's log so far."""
    if expected is None:
        return False
    if versions[aggregate_id] != expected:
        return True
    if expected == 0:
        return False
    position, writer = at_version[(aggregate_id, expected)]
    return position > base and writer != device


@contextlib.contextmanager
def replayable(plan: Plan, test: str) -> Iterator[None]:
    """A violation names the history, so it can be run again."""
    try:
        yield
    except AssertionError as e:
        e.add_note(f"{plan.describe()}; replay: MINIES_SYNC_SEED={plan.seed} python -m pytest {test}")
        raise
