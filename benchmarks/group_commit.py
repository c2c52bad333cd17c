"""Group commit on a slow disk: one thread against eight, and several processes on one file.

    python benchmarks/group_commit.py [--old PATH] [--rounds N] [--single]

Every writer appends single events to its own aggregate at ``durability="full"``, so each
call is a command that must be durable before it returns. The disk is this VM's own, or a
slow one: an apsw VFS that inherits the default VFS and sleeps in every ``xSync`` (a laptop's
or an edge box's flash takes 1-10 ms to sync), made the default VFS of the measuring process.

Each measurement runs in a fresh process (``--one``), so ``--old PATH`` (a checkout of an
older minies, e.g. ``git worktree add /tmp/old HEAD~3``) measures the same rows on both
trees, alternating, in the same run (``--single``: only one thread on this VM's disk, the
no-regression check). "writes per commit" is the mean number of appends each transaction
(one fsync of the WAL) carried. Cells are medians (and ranges) over the rounds; ratios are
taken within each round. Every run checks the events it stored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
FSYNC_MS: Final = (0.0, 2.0, 10.0)  # 0: this VM's own disk, no VFS in the way
THREADS: Final = 8
PROCESSES: Final = 4
EVENTS_PER_WRITER: Final = {0.0: 1_500, 2.0: 200, 10.0: 60}  # ~1 s for one writer


def slow_disk(fsync_ms: float) -> Any:
    """Make every sync of every file SQLite opens take ``fsync_ms`` longer (0: no VFS)."""
    import apsw

    if not fsync_ms:
        return None

    base = apsw.vfs_names()[0]  # the default VFS, before this one replaces it

    class SlowFile(apsw.VFSFile):
        def xSync(self, flags: int) -> None:
            super().xSync(flags)
            time.sleep(fsync_ms / 1000)  # sleeping releases the GIL, as a real fsync's wait does

    class SlowDisk(apsw.VFS):
        def __init__(self) -> None:
            super().__init__("slowdisk", base, makedefault=True)

        def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
            return SlowFile(base, name, flags)

    return SlowDisk()


def one(path: str, fsync_ms: float, threads: int, events: int, start_at: float) -> dict[str, float]:
    """One measurement in this process: ``threads`` writers, ``events`` appends each."""
    import workloads as w

    import minies

    disk = slow_disk(fsync_ms)
    with minies.EventStore(path) as store:
        prefix = f"p{os.getpid()}-"
        commits = store._commits

        def writer(k: int) -> None:
            for v in range(events):
                store.append(f"{prefix}{k}", [w.Deposited(amount=v)], aggregate_type="Account", expected_version=v)

        pool = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
        time.sleep(max(0.0, start_at - time.time()))
        started, cpu = time.time(), time.process_time()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        ended, cpu = time.time(), time.process_time() - cpu
        commits = store._commits - commits
        for k in range(threads):  # the benchmark checks its own result
            assert store.version(f"{prefix}{k}") == events, f"writer {k} stored {store.version(f'{prefix}{k}')}"
    del disk
    return {"started": started, "ended": ended, "events": threads * events, "commits": commits, "cpu": cpu}


def run(tree: Path, path: str, fsync_ms: float, threads: int, processes: int = 1) -> dict[str, float]:
    """Measure in fresh processes importing minies from ``tree``: rate and writes per commit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)])}
    events = EVENTS_PER_WRITER[fsync_ms]
    start_at = time.time() + 1.0  # every process imported and opened before the start
    argv = [sys.executable, __file__, "--one", path, str(fsync_ms), str(threads), str(events), str(start_at)]
    children = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = []
    for child in children:
        out, _ = child.communicate()
        assert child.returncode == 0, f"a measurement failed ({child.returncode})"
        results.append(json.loads(out))
    total = sum(r["events"] for r in results)
    assert total == processes * threads * events
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "rate": total / seconds,
        "per_commit": total / sum(r["commits"] for r in results),
        "cpu_us": sum(r["cpu"] for r in results) / total * 1e6,  # CPU per append: less noisy than rates
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a checkout of an older minies, measured in the same run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--single", action="store_true", help="only one thread on this VM's disk, --rounds times")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, fsync_ms, threads, events, start_at = args.one
        print(json.dumps(one(path, float(fsync_ms), int(threads), int(events), float(start_at))))
        return
    trees = {"new": HERE.parent} | ({"old": args.old.resolve()} if args.old else {})
    if args.single:
        single(trees, args.rounds)
        return
    rows: dict[tuple[str, float, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for fsync_ms in FSYNC_MS:
                for name, tree in trees.items():
                    for kind, threads, processes in (
                        ("1 thread", 1, 1),
                        (f"{THREADS} threads", THREADS, 1),
                        (f"{PROCESSES} processes", 1, PROCESSES),
                    ):
                        path = os.path.join(tmp, f"{name}-{fsync_ms}-{kind}-{r}.db")
                        rows.setdefault((name, fsync_ms, kind), []).append(
                            run(tree, path, fsync_ms, threads, processes)
                        )
    print(
        f"| disk | tree | 1 thread ev/s | {THREADS} threads ev/s | ratio | writes per commit "
        f"| {PROCESSES} processes ev/s | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for fsync_ms in FSYNC_MS:
        for name in trees:
            got = {
                kind: rows[(name, fsync_ms, kind)]
                for kind in ("1 thread", f"{THREADS} threads", f"{PROCESSES} processes")
            }
            one_, many, procs = got.values()
            disk = "this VM's disk" if not fsync_ms else f"{fsync_ms:g} ms fsync"
            ratios = [m["rate"] / o["rate"] for m, o in zip(many, one_, strict=True)]
            pratios = [p["rate"] / o["rate"] for p, o in zip(procs, one_, strict=True)]
            print(
                f"| {disk} | {name} | {span(o['rate'] for o in one_)} | {span(m['rate'] for m in many)} "
                f"| {span(ratios, '{:.2f}×')} | {span((m['per_commit'] for m in many), '{:.2f}')} "
                f"| {span(p['rate'] for p in procs)} | {span(pratios, '{:.2f}×')} |"
            )


def span(values: Any, fmt: str = "{:,.0f}") -> str:
    """The median, and the range when there are several rounds."""
    values = sorted(values)
    low, mid, high = (fmt.format(v) for v in (values[0], statistics.median(values), values[-1]))
    return mid if low == high else f"{mid} ({low}–{high})"


def single(trees: dict[str, Path], rounds: int) -> None:
    """One thread on this VM's disk, the trees taking turns: the no-regression check."""
    got: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, tree in trees.items():
                got[name].append(run(tree, os.path.join(tmp, f"{name}-{r}.db"), 0.0, 1))
    print("| tree | ev/s, median | best | CPU µs per append, median | least | rounds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in got.items():
        rates, cpus = [m["rate"] for m in runs], [m["cpu_us"] for m in runs]
        print(
            f"| {name} | {statistics.median(rates):,.0f} | {max(rates):,.0f} | {statistics.median(cpus):.1f} "
            f"| {min(cpus):.1f} | {len(runs)} |"
        )
    if "old" in got:
        for key, best, what in ((lambda m: m["rate"], max, "ev/s"), (lambda m: m["cpu_us"], min, "CPU per append")):
            new, old = ([key(m) for m in got[tree]] for tree in ("new", "old"))
            print(
                f"new / old, {what}: {statistics.median(new) / statistics.median(old):.3f} (medians), "
                f"{best(new) / best(old):.3f} (bests)"
            )


if __name__ == "__main__":
    main()
