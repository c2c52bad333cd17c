"""Recorded concurrent histories, and the checkers that decide whether one is allowed.

In the spirit of Jepsen's Elle and Hypothesis' stateful tests: N clients (threads sharing a
store, threads with a store each, processes, asyncio tasks) run a seeded workload at once;
every operation is recorded with its invocation and completion times (one system-wide
monotonic clock, so processes' records compare), its arguments and its outcome:

- ``ok``: acknowledged; its effects must be in the log exactly once;
- ``fail``: refused (``ConcurrencyError`` after its retries, a declined transfer, a read
  that raised): its effects must not be in the log;
- ``unknown``: the client lost track (a ``StorageError``, a killed process): its effects are
  in the log entirely or not at all.

After the run a checker reads the log through a fresh store and decides. The workloads:

- **bank**: deposits and transfers by load-modify-save with retry, and loads. Every event
  carries the balance its decision saw (``before``), so a save built on a stale load shows
  as an event whose ``before`` is not the balance at the previous version (a lost update).
- **snapshots**: the bank, with a snapshot every 3 versions; every load equals a replay.
- **follow**: appenders with ``event_ids`` and retries, and followers (subscriptions,
  processors, ``read_all`` pollers, ``AsyncEventStore.follow``): each committed event seen
  exactly once, in position order, nothing uncommitted seen, processor outputs exactly once.

A failing history names its seed; ``replay`` in the message reruns it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

import minies

# ------------------------------------------------------------------ the domain


class Deposited(minies.Event):
    event_type: ClassVar[str] = "history.Deposited"
    op: str
    amount: int
    before: int  # the balance the decision saw


class Withdrawn(minies.Event):
    event_type: ClassVar[str] = "history.Withdrawn"
    op: str
    amount: int
    before: int


class SealedDeposited(minies.Event):
    """A deposit with a personal field: its reads open a sealed value (the per-record path)."""

    event_type: ClassVar[str] = "history.SealedDeposited"
    op: str
    amount: int
    before: int
    teller: minies.Personal[str] = ""


class Tick(minies.Event):
    event_type: ClassVar[str] = "history.Tick"
    op: str


class SealedTick(minies.Event):
    event_type: ClassVar[str] = "history.SealedTick"
    op: str
    note: minies.Personal[str] = ""


class Echo(minies.Event):
    """A processor's output: one per input, exactly."""

    event_type: ClassVar[str] = "history.Echo"
    of: str


TICKS = ("history.Tick", "history.SealedTick")


class Till(minies.Aggregate):
    aggregate_type: ClassVar[str] = "Till"
    snapshot_every: ClassVar[int | None] = None
    balance: int = 0
    ops: list[str] = msgspec.field(default_factory=list)

    def apply(self, event: minies.Event) -> None:
        amount: int = event.amount  # type: ignore[attr-defined]
        self.balance += -amount if isinstance(event, Withdrawn) else amount
        self.ops.append(event.op)  # type: ignore[attr-defined]

    def deposit(self, op: str, amount: int, sealed: bool) -> None:
        if sealed:
            self.record(SealedDeposited(op=op, amount=amount, before=self.balance, teller="ann"))
        else:
            self.record(Deposited(op=op, amount=amount, before=self.balance))

    def withdraw(self, op: str, amount: int) -> None:
        self.record(Withdrawn(op=op, amount=amount, before=self.balance))


class SnappedTill(Till):
    """The same streams, loaded through a snapshot every 3 versions."""

    aggregate_type: ClassVar[str] = "Till"
    snapshot_every: ClassVar[int | None] = 3


# ------------------------------------------------------------------ recording


@dataclass
class Op:
    client: int
    kind: str
    args: dict[str, Any]
    start: int
    end: float = float("inf")
    outcome: str = "unknown"
    result: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Operations as clients invoke and complete them. Threads and tasks share one in memory;
    a process writes its own file, a line per invocation and per completion, so a killed
    process leaves its last operation invoked and never completed: ``unknown``."""

    def __init__(self, path: Path | None = None) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._file = None if path is None else open(path, "a", buffering=1)  # noqa: SIM115

    def invoke(self, client: int, kind: str, **args: Any) -> Op:
        op = Op(client, kind, args, time.monotonic_ns())
        with self._lock:
            self.ops.append(op)
            if self._file is not None:
                self._file.write(json.dumps(["invoke", len(self.ops) - 1, client, kind, args, op.start]) + "\n")
        return op

    def complete(self, op: Op, outcome: str, **result: Any) -> None:
        op.end, op.outcome, op.result = time.monotonic_ns(), outcome, result
        if self._file is not None:
            with self._lock:
                index = self.ops.index(op)
                self._file.write(json.dumps(["complete", index, op.end, outcome, result]) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_recording(path: Path) -> list[Op]:
    ops: dict[int, Op] = {}
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if entry[0] == "invoke":
                _, index, client, kind, args, start = entry
                ops[index] = Op(client, kind, args, start)
            else:
                _, index, end, outcome, result = entry
                ops[index].end, ops[index].outcome, ops[index].result = end, outcome, result
    return list(ops.values())


# ------------------------------------------------------------------ the clients' operations


@dataclass
class Plan:
    """One history's parameters (everything a process client needs, as JSON)."""

    workload: str  # bank | snapshots | follow
    clients: str  # shared | own | processes | async
    location: str
    flavour: str  # plain | upcasting | personal
    seed: int
    ops: int = 12
    accounts: int = 3
    n: int = 3  # clients

    @property
    def sealed(self) -> bool:
        return self.flavour == "personal"

    @property
    def till(self) -> type[Till]:
        return SnappedTill if self.workload == "snapshots" else Till


def _load(store: minies.EventStore, cls: type[Till], account: str) -> Till:
    try:
        return store.load(cls, account)
    except minies.NotFound:
        return cls(id=account)


def deposit(store: minies.EventStore, rec: Recorder, plan: Plan, client: int, op: str, account: str, amount: int) -> None:
    o = rec.invoke(client, "deposit", op=op, account=account, amount=amount)
    loaded: list[list[Any]] = []  # every load a try made: each is checked like a load of its own
    for _ in range(30):
        try:
            till = _load(store, plan.till, account)
            loaded.append(_seen(till))
            till.deposit(op, amount, plan.sealed)
            version = store.save(till)
        except minies.ConcurrencyError:
            continue
        except minies.MiniesError as e:
            rec.complete(o, "unknown", error=repr(e), loaded=loaded)
            return
        rec.complete(o, "ok", versions={account: version}, loaded=loaded)
        return
    rec.complete(o, "fail", error="conflicts", loaded=loaded)


def _seen(till: Till) -> list[Any]:
    return [till.id, till.version, till.balance, list(till.ops)]


def transfer(
    store: minies.EventStore, rec: Recorder, plan: Plan, client: int, op: str, src: str, dst: str, amount: int
) -> None:
    o = rec.invoke(client, "transfer", op=op, src=src, dst=dst, amount=amount)
    loaded: list[list[Any]] = []
    for _ in range(30):
        try:
            with store.transaction():
                a, b = _load(store, plan.till, src), _load(store, plan.till, dst)
                loaded += [_seen(a), _seen(b)]
                if a.balance < amount:
                    versions = None
                else:
                    a.withdraw(op, amount)
                    b.deposit(op, amount, plan.sealed)
                    versions = {src: store.save(a), dst: store.save(b)}
        except minies.ConcurrencyError:
            continue
        except minies.MiniesError as e:
            rec.complete(o, "unknown", error=repr(e), loaded=loaded)
            return
        if versions is None:
            rec.complete(o, "fail", error="declined: not enough money", loaded=loaded)
        else:
            rec.complete(o, "ok", versions=versions, loaded=loaded)
        return
    rec.complete(o, "fail", error="conflicts", loaded=loaded)


def load(store: minies.EventStore, rec: Recorder, plan: Plan, client: int, account: str) -> None:
    o = rec.invoke(client, "load", account=account)
    try:
        till = store.load(plan.till, account)
    except minies.NotFound:
        rec.complete(o, "ok", version=0, loaded=[[account, 0, 0, []]])
    except minies.MiniesError as e:
        rec.complete(o, "fail", error=repr(e))
    else:
        rec.complete(o, "ok", version=till.version, loaded=[_seen(till)])


def append_tick(store: minies.EventStore, rec: Recorder, plan: Plan, client: int, op: str, stream: str) -> None:
    o = rec.invoke(client, "append", op=op, stream=stream)
    event: minies.Event = SealedTick(op=op, note="secret") if plan.sealed else Tick(op=op)
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, op))]
    error = ""
    for _ in range(5):  # an unknown outcome is retried with the same id: at most one copy
        try:
            version = store.append(stream, [event], aggregate_type="Ticks", event_ids=ids)
        except minies.StorageError as e:
            error = repr(e)
            continue
        rec.complete(o, "ok", version=version, event_id=ids[0])
        return
    rec.complete(o, "unknown", error=error, event_id=ids[0])


def bank_client(store: minies.EventStore, rec: Recorder, plan: Plan, client: int) -> None:
    rng = random.Random(f"{plan.seed}/{client}")
    accounts = [f"till-{k}" for k in range(plan.accounts)]
    for k in range(plan.ops):
        op, roll = f"{plan.seed}-{client}-{k}", rng.random()
        if roll < 0.3:
            load(store, rec, plan, client, rng.choice(accounts))
        elif roll < 0.75:
            deposit(store, rec, plan, client, op, rng.choice(accounts), rng.randint(1, 9))
        else:
            src, dst = rng.sample(accounts, 2)
            transfer(store, rec, plan, client, op, src, dst, rng.randint(1, 12))


def appender(store: minies.EventStore, rec: Recorder, plan: Plan, client: int) -> None:
    rng = random.Random(f"{plan.seed}/{client}")
    for k in range(plan.ops):
        append_tick(store, rec, plan, client, f"{plan.seed}-{client}-{k}", f"ticks-{rng.randrange(plan.accounts)}")


def _echo(record: minies.Recorded, store: minies.EventStore) -> None:
    store.append("echoes", [Echo(of=record.event_id)], aggregate_type="Echoes")


def follower(store: minies.EventStore, rec: Recorder, kind: str, name: str, client: int, done: Callable[[], bool]) -> None:
    """Follow the log until ``done()`` and then to its end; record what was seen, in order."""
    o = rec.invoke(client, "follow", role=kind, name=name)
    seen: list[tuple[int, str]] = []
    see = lambda r: seen.append((r.position, r.event_id))  # noqa: E731
    after = 0

    def step() -> int:
        nonlocal after
        if kind == "subscription":
            return store.subscription(name, event_types=TICKS).poll(see)
        if kind == "processor":
            return store.processor(name, _echo, event_types=TICKS).run()
        batch = [r for r in store.read_all(after=after) if r.event_type in TICKS]
        for r in batch:
            see(r)
        after = max([after, *(r.position for r in batch)])
        return len(batch)

    interrupted = 0  # a page interrupted (a dropped session) is delivered again: at-least-once
    try:
        while not done():
            try:
                step()
            except minies.StorageError:
                interrupted += 1
            time.sleep(0.002)
        for _ in range(50):  # drain
            try:
                while step():
                    pass
                break
            except minies.StorageError:
                interrupted += 1
    except minies.MiniesError as e:
        rec.complete(o, "unknown", error=repr(e), seen=seen)
        return
    rec.complete(o, "ok", seen=seen, interrupted=interrupted)


# ------------------------------------------------------------------ running a history


def _flavour(flavour: str) -> None:
    """In a client process: the read path the plan's flavour asks for."""
    if flavour == "upcasting":
        minies.rename("history.NeverStored", "history.NeverStoredEither")


def run_threads(plan: Plan, shared: bool, chaos: bool) -> list[Op]:
    """Threads sharing a store or with a store each. ``chaos``: PostgreSQL's server drops
    sessions now and then; the disk of a file shared by one store fails every 4th sync of its
    WAL. (Not under a store each: the simulated disk is a Python VFS, so SQLite's busy waits
    of seven connections go through the GIL, and a history takes minutes.)"""
    if chaos and not plan.location.startswith("postgres") and not shared:
        return _run_threads(plan, shared, chaos=False)
    if chaos and not plan.location.startswith("postgres"):
        from crashdisk import CrashDisk

        with CrashDisk(fail_every=("-wal", "sync", 4)) as disk:
            ops = _run_threads(plan, shared, chaos=False)
        assert disk.counted >= 4, "no sync failed: the injection missed"
        return ops
    return _run_threads(plan, shared, chaos)


def _run_threads(plan: Plan, shared: bool, chaos: bool) -> list[Op]:
    rec = Recorder()
    stores: list[minies.EventStore] = []
    one = minies.EventStore(plan.location)
    stores.append(one)

    def store_for() -> minies.EventStore:
        if shared:
            return one
        s = minies.EventStore(plan.location)
        stores.append(s)
        return s

    errors: list[BaseException] = []
    writing = threading.Event()

    def guarded(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                target(*args)
            except BaseException as e:  # a raw exception is a finding: the checker reports it
                errors.append(e)

        return run

    workers: list[threading.Thread] = []
    followers: list[threading.Thread] = []
    with contextlib.ExitStack() as cleanup:
        for s in [one]:
            cleanup.callback(s.close)
        if plan.workload == "follow":
            for client in range(plan.n):
                workers.append(threading.Thread(target=guarded(appender, store_for(), rec, plan, client)))
            kinds = ["subscription", "processor", "processor", "poller"]
            for k, kind in enumerate(kinds):
                name = "echo" if kind == "processor" else f"{kind}-{k}"
                thread = threading.Thread(
                    target=guarded(follower, store_for(), rec, kind, name, 100 + k, lambda: not writing.is_set())
                )
                followers.append(thread)
        else:
            for client in range(plan.n):
                workers.append(threading.Thread(target=guarded(bank_client, store_for(), rec, plan, client)))
        for s in stores[1:]:
            cleanup.callback(s.close)
        writing.set()
        monkey = _chaos(plan.location, stores, writing) if chaos else None
        for t in followers + workers:
            t.start()
        for t in workers:
            t.join()
        writing.clear()
        if monkey is not None:
            monkey.join()
        for t in followers:
            t.join()
    if errors:
        raise AssertionError(f"a client raised a raw exception: {errors[0]!r}") from errors[0]
    return rec.ops


def _chaos(location: str, stores: list[minies.EventStore], running: threading.Event) -> threading.Thread | None:
    """PostgreSQL: drop the clients' sessions now and then (the server ends a backend)."""
    if not location.startswith("postgres"):
        return None
    import psycopg

    dsn = location.split("?")[0]

    def drop() -> None:
        rng = random.Random(0)
        with psycopg.connect(dsn, autocommit=True) as admin:
            while running.is_set():
                time.sleep(rng.uniform(0.005, 0.03))
                store = rng.choice(stores)
                raw = store._backend.conn.raw  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    admin.execute("SELECT pg_terminate_backend(%s)", (raw.info.backend_pid,))

    thread = threading.Thread(target=drop)
    thread.start()
    return thread


def run_async(plan: Plan) -> list[Op]:
    rec = Recorder()

    async def main() -> None:
        async with minies.AsyncEventStore(plan.location) as astore:
            store = astore.store

            async def bank_task(client: int) -> None:
                rng = random.Random(f"{plan.seed}/{client}")
                for k in range(plan.ops):
                    account = f"till-{rng.randrange(plan.accounts)}"
                    if rng.random() < 0.3:
                        o = rec.invoke(client, "load", account=account)
                        try:
                            till = await astore.load(plan.till, account)
                        except minies.NotFound:
                            rec.complete(o, "ok", version=0, loaded=[[account, 0, 0, []]])
                        else:
                            rec.complete(o, "ok", version=till.version, loaded=[_seen(till)])
                        continue
                    op, amount = f"{plan.seed}-{client}-{k}", rng.randint(1, 9)
                    o = rec.invoke(client, "deposit", op=op, account=account, amount=amount)
                    loaded: list[list[Any]] = []
                    for _ in range(60):
                        try:
                            try:
                                till = await astore.load(plan.till, account)
                            except minies.NotFound:
                                till = plan.till(id=account)
                            loaded.append(_seen(till))
                            till.deposit(op, amount, plan.sealed)
                            version = await astore.save(till)
                        except minies.ConcurrencyError:
                            continue
                        rec.complete(o, "ok", versions={account: version}, loaded=loaded)
                        break
                    else:
                        rec.complete(o, "fail", error="conflicts", loaded=loaded)

            async def tick_task(client: int) -> None:
                rng = random.Random(f"{plan.seed}/{client}")
                for k in range(plan.ops):
                    op = f"{plan.seed}-{client}-{k}"
                    o = rec.invoke(client, "append", op=op, stream=f"ticks-{rng.randrange(plan.accounts)}")
                    event: minies.Event = SealedTick(op=op, note="x") if plan.sealed else Tick(op=op)
                    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, op))]
                    version = await astore.append(o.args["stream"], [event], aggregate_type="Ticks", event_ids=ids)
                    rec.complete(o, "ok", version=version, event_id=ids[0])

            if plan.workload == "follow":
                stop = asyncio.Event()
                seen: list[tuple[int, str]] = []
                o = rec.invoke(100, "follow", role="async-follow", name="async")

                async def handler(record: minies.Recorded) -> None:
                    await asyncio.sleep(0)
                    if record.event_type in TICKS:
                        seen.append((record.position, record.event_id))

                following = asyncio.create_task(astore.follow("async", handler, stop=stop, max_wait=0.01))
                await asyncio.gather(*(tick_task(c) for c in range(plan.n * 2)))
                stop.set()
                await following
                await astore.follow("async", handler, idle_timeout=0)  # drain
                rec.complete(o, "ok", seen=seen)
                # a processor run from a worker thread, for its outputs
                o2 = rec.invoke(101, "follow", role="processor", name="echo")
                await asyncio.to_thread(lambda: store.processor("echo", _echo, event_types=TICKS).run())
                rec.complete(o2, "ok", seen=[])
            else:
                await asyncio.gather(*(bank_task(c) for c in range(plan.n * 2)))

    asyncio.run(main())
    return rec.ops


def run_processes(plan: Plan, folder: Path, kill: bool) -> list[Op]:
    """Each client a process of its own (a store each); with ``kill``, one is killed -9 mid-run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    stop_file = folder / "stop"
    roles: list[tuple[str, int]] = []
    if plan.workload == "follow":
        roles = [("append", c) for c in range(plan.n)] + [("processor", 100), ("processor", 101), ("subscription", 102)]
    else:
        roles = [("bank", c) for c in range(plan.n)]
    procs = []
    for role, client in roles:
        args = json.dumps([plan.__dict__, role, client, str(folder / f"client-{client}.jsonl"), str(stop_file)])
        procs.append(
            subprocess.Popen([sys.executable, "-c", "import history, sys; history.process_main(sys.argv[1])", args], env=env)
        )
    deadline = time.monotonic() + 60
    while not all((folder / f"ready-{client}").exists() for _, client in roles):  # all open, then all go
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.002)
    (folder / "go").touch()
    victim = None
    if kill:  # once it has invoked a few operations, mid-operation as likely as not
        rng = random.Random(plan.seed)
        k = rng.randrange(plan.n)
        victim, recording, invoked = procs[k], folder / f"client-{roles[k][1]}.jsonl", rng.randint(2, plan.ops)
        while victim.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                if recording.read_text().count('["invoke"') >= invoked:
                    os.kill(victim.pid, signal.SIGKILL)
                    break
            time.sleep(0.001)
    for p in procs[: plan.n]:
        p.wait(timeout=120)
    stop_file.touch()
    for p in procs[plan.n :]:
        p.wait(timeout=120)
    bad = [p.returncode for p in procs if p is not victim and p.returncode != 0]
    if bad:
        raise AssertionError(f"a client process failed with exit code {bad[0]} (seed {plan.seed})")
    return [op for _, client in roles for op in read_recording(folder / f"client-{client}.jsonl")]


def _records_before_the_fix(  # type: ignore[no-untyped-def]
    self, aggregate_id, aggregate_type, after, upto, step, opener
) -> int:
    """minies 0.2's per-record replay: the version read by a separate query after the records."""
    from minies._log import read_aggregate

    for record in read_aggregate(self._tx.open(), True, aggregate_id, after, upto, self._tx.reading(), False, opener):
        step(record.data)
    with self._tx.lock:
        sql = "SELECT max(version) FROM events WHERE aggregate_id = ? AND version <= ?"
        high = self._tx.open().execute(sql, (aggregate_id, upto)).get
    return max(0, int(high or 0) - after)


def reintroduce(bug: str) -> None:
    """Put a fixed bug back (in this process), to show that a checker catches it."""
    from minies._replay import Replayer
    from minies._subscriptions import Subscription

    if bug == "load-version":
        Replayer._records = _records_before_the_fix  # type: ignore[method-assign]
    elif bug == "processor-claim":
        Subscription._claim = lambda self: None  # type: ignore[method-assign]
    else:
        raise ValueError(bug)


def process_main(argument: str) -> None:
    fields, role, client, path, stop_file = json.loads(argument)
    plan = Plan(**fields)
    _flavour(plan.flavour)
    if os.environ.get("MINIES_HISTORY_BUG"):
        reintroduce(os.environ["MINIES_HISTORY_BUG"])
    rec = Recorder(Path(path))
    folder = Path(path).parent
    with minies.EventStore(plan.location) as store:
        (folder / f"ready-{client}").touch()
        while not (folder / "go").exists():
            time.sleep(0.001)
        if role == "bank":
            bank_client(store, rec, plan, client)
        elif role == "append":
            appender(store, rec, plan, client)
        else:
            name = "echo" if role == "processor" else "subscription"
            follower(store, rec, role, name, client, lambda: os.path.exists(stop_file))
    rec.close()


# ------------------------------------------------------------------ the checkers


class Violation(AssertionError):
    pass


def check(plan: Plan, ops: list[Op]) -> dict[str, int]:
    """Raise ``Violation`` naming the first anomaly; return counts of what was checked."""
    with minies.EventStore(plan.location, readonly=True) as store:
        log = list(store.read_all())
        report = store.verify()
        if not report.ok:
            raise Violation(f"the log does not verify: {report.reason}")
        if plan.workload == "follow":
            return _check_follow(ops, log)
        counts = _check_bank(ops, log)
        if plan.workload == "snapshots":
            for account in {r.aggregate_id for r in log if r.aggregate_type == "Till"}:
                snapped, replayed = store.load(SnappedTill, account), store.load(Till, account)
                if (snapped.version, snapped.balance, snapped.ops) != (replayed.version, replayed.balance, replayed.ops):
                    raise Violation(f"{account}: a load through its snapshot differs from a replay")
        return counts


def _check_bank(ops: list[Op], log: list[minies.Recorded]) -> dict[str, int]:
    streams: dict[str, list[minies.Recorded]] = collections.defaultdict(list)
    for r in log:
        streams[r.aggregate_id].append(r)
    # Every event's decision saw the balance at the version before it: no lost update.
    prefix: dict[str, list[tuple[int, list[str]]]] = {}
    for account, events in streams.items():
        balance, applied, states = 0, [], [(0, [])]
        for r in events:
            if r.data.before != balance:
                raise Violation(
                    f"lost update: {account} version {r.version} ({r.data.op}) was decided on balance "
                    f"{r.data.before}, but the balance at version {r.version - 1} was {balance}"
                )
            balance += -r.data.amount if isinstance(r.data, Withdrawn) else r.data.amount
            if balance < 0:
                raise Violation(f"{account} went below zero at version {r.version} ({r.data.op})")
            applied = [*applied, r.data.op]
            states.append((balance, applied))
        prefix[account] = states
    # Each acknowledged write exactly once, refused ones never, unknown ones whole or not at all.
    written = collections.Counter((r.aggregate_id, r.data.op) for r in log)
    invoked = {}
    for op in ops:
        if op.kind in ("deposit", "transfer"):
            invoked[op.args["op"]] = op
            places = [op.args["account"]] if op.kind == "deposit" else [op.args["src"], op.args["dst"]]
            found = [written[(place, op.args["op"])] for place in places]
            if op.outcome == "ok" and found != [1] * len(places):
                raise Violation(f"acknowledged {op.kind} {op.args['op']} is in the log {found} times")
            if op.outcome == "fail" and any(found):
                raise Violation(f"refused {op.kind} {op.args['op']} ({op.result.get('error')}) is in the log")
            if op.outcome == "unknown" and found not in ([0] * len(places), [1] * len(places)):
                raise Violation(f"{op.kind} {op.args['op']} of unknown outcome is in the log in part: {found}")
    phantoms = {name for _, name in written} - invoked.keys()
    if phantoms:
        raise Violation(f"events of operations no client invoked: {sorted(phantoms)[:3]}")
    # Every load is a fold of a prefix of its stream, at the version it reports, and sees every
    # write acknowledged before it started (real time).
    loads = [(op, seen) for op in ops for seen in op.result.get("loaded", [])]
    for op, (account, version, balance, applied) in loads:
        states = prefix.get(account, [(0, [])])
        if version >= len(states):
            raise Violation(f"a load of {account} reported version {version}, beyond the log's {len(states) - 1}")
        if (balance, applied) != states[version]:
            raise Violation(
                f"a load of {account} at version {version} returned balance {balance} after {len(applied)} "
                f"operations; the log's fold at that version is {states[version][0]} after {version}"
            )
        if op.kind != "load" or op.outcome != "ok":
            continue
        for write in ops:
            acknowledged = write.result.get("versions", {}) if write.outcome == "ok" and write.end < op.start else {}
            if acknowledged.get(account, 0) > version:
                raise Violation(
                    f"stale load: {account} at version {version}, started after {write.args['op']} was "
                    f"acknowledged at version {acknowledged[account]}"
                )
    total = sum(states[-1][0] for states in prefix.values())
    deposited = sum(r.data.amount for r in log if r.aggregate_type == "Till" and not isinstance(r.data, Withdrawn))
    withdrawn = sum(r.data.amount for r in log if isinstance(r.data, Withdrawn))
    transferred_in = sum(
        r.data.amount for r in log if not isinstance(r.data, Withdrawn) and invoked[r.data.op].kind == "transfer"
    )
    if withdrawn != transferred_in or total != deposited - withdrawn:
        raise Violation(f"money is not conserved: {total} held, {deposited} deposited, {withdrawn} moved")
    return {"ops": len(ops), "loads": len(loads), "events": len(log)}


def _check_follow(ops: list[Op], log: list[minies.Recorded]) -> dict[str, int]:
    at = {r.position: r.event_id for r in log}
    ticks = [r for r in log if r.event_type in TICKS]
    tick_ids = collections.Counter(r.event_id for r in ticks)
    for op in ops:
        if op.kind != "append":
            continue
        n = tick_ids[op.result.get("event_id") or str(uuid.uuid5(uuid.NAMESPACE_URL, op.args["op"]))]
        if op.outcome == "ok" and n != 1:
            raise Violation(f"acknowledged append {op.args['op']} is in the log {n} times")
        if n > 1:
            raise Violation(f"append {op.args['op']} (retried with its event id) is in the log {n} times")
    appended = {str(uuid.uuid5(uuid.NAMESPACE_URL, op.args["op"])) for op in ops if op.kind == "append"}
    if set(tick_ids) - appended:
        raise Violation("the log holds ticks no client appended")
    followers = [op for op in ops if op.kind == "follow" and op.outcome == "ok" and op.args["role"] != "processor"]
    for op in followers:
        seen = [tuple(s) for s in op.result["seen"]]
        positions = [p for p, _ in seen]
        if op.result.get("interrupted") and op.args["role"] == "subscription":
            # at-least-once: an interrupted page comes again from the checkpoint, so the
            # positions run up, and go back only as often as a page was interrupted
            restarts = sum(1 for a, b in itertools.pairwise(positions) if b <= a)
            if restarts > op.result["interrupted"]:
                raise Violation(
                    f"subscription {op.args['name']} went back {restarts} times, interrupted {op.result['interrupted']}"
                )
            seen = sorted(set(seen))
        elif positions != sorted(set(positions)):
            raise Violation(f"{op.args['kind']} {op.args['name']} saw positions out of order or twice")
        for position, event_id in seen:
            if at.get(position) != event_id:
                raise Violation(
                    f"{op.args['kind']} {op.args['name']} saw {event_id} at position {position}, which the log "
                    f"holds as {at.get(position)} (an uncommitted or reused position)"
                )
        if len(seen) != len(ticks):
            raise Violation(f"{op.args['kind']} {op.args['name']} saw {len(seen)} of the {len(ticks)} committed ticks")
    if any(op.args.get("role") == "processor" for op in ops if op.kind == "follow"):
        echoes = collections.Counter(r.data.of for r in log if r.event_type == "history.Echo")
        wrong = {i: echoes[i] for i in tick_ids if echoes[i] != 1}
        if wrong or set(echoes) - set(tick_ids):
            raise Violation(f"processor outputs not exactly once per input: {dict(list(wrong.items())[:3])}")
    return {"ops": len(ops), "followers": len(followers), "events": len(log)}


@contextlib.contextmanager
def replayable(plan: Plan) -> Iterator[None]:
    """A violation names the history, so it can be run again."""
    try:
        yield
    except AssertionError as e:
        e.add_note(
            f"history: workload={plan.workload} clients={plan.clients} flavour={plan.flavour} seed={plan.seed}; "
            f"replay: MINIES_HISTORY_SEED={plan.seed} python -m pytest tests/test_histories.py -k "
            f"'{plan.workload} and {plan.clients} and {plan.flavour}'"
        )
        raise
