"""Kill -9 a writer at random moments; every committed batch must survive, whole.

10 kills per variant in the default run (one writer thread at NORMAL and at FULL, three
threads sharing commits at FULL); MINIES_STRESS=1 makes it 100 each.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from domain import Account, Balances, SnappedAccount

import minies

KILLS = 200 if os.environ.get("MINIES_STRESS") else 20  # two per round: 10 rounds per variant
BATCH = 10

WRITER = f"""
import os, sys, threading, time, minies
from domain import AccountOpened, Balances, MoneyDeposited, SnappedAccount as Snapped

path, durability, start, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
printing = threading.Lock()

def write(thread):  # each thread its own accounts; several threads share commits (group commit)
    for batch in range(start + thread, start + 10_000, threads):
        account_id = f"acc-{{batch % 7}}" if threads == 1 else f"acc-{{thread}}-{{batch % 3}}"
        try:
            account = store.load(Snapped, account_id)
        except minies.NotFound:
            account = Snapped(id=account_id)
            account.record(AccountOpened(owner="o", balance=0))
        for _ in range({BATCH}):
            account.record(MoneyDeposited(amount=batch))  # the amount names the batch
        store.save(account)
        with printing:  # one write(2) of a whole line: a kill cannot tear it
            os.write(1, f"committed {{batch}}\\n".encode())
        time.sleep(0.003 * threads)  # ~150 batches a second: the file stays small enough to check after every kill

with minies.EventStore(path, projections=[Balances()], durability=durability) as store:
    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
"""


def check(path: str, committed: set[int]) -> int:
    """Every invariant after a crash; returns how many batches are in the file."""
    with minies.EventStore(path, projections=[Balances()]) as store:
        report = store.verify()
        assert report.ok, report
        counts: dict[int, int] = {}
        for record in store.read_all(event_types=["MoneyDeposited"]):
            counts[record.data.amount] = counts.get(record.data.amount, 0) + 1
        assert all(n == BATCH for n in counts.values()), "a batch is partly present"
        assert committed <= set(counts), f"committed batches lost: {sorted(committed - set(counts))}"
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        for account_id, _, _ in store.aggregates("Account"):
            if store.version(account_id):
                replayed = store.load(Account, account_id)  # every event, no snapshot
                snapped = store.load(SnappedAccount, account_id)  # the writer's class: from a snapshot
                assert (snapped.balance, snapped.version) == (replayed.balance, replayed.version)
                assert (account_id, replayed.balance) in live
        store.rebuild("Balances")
        assert store.query("SELECT * FROM balances ORDER BY account_id") == live
        return len(counts)


@pytest.mark.parametrize(("durability", "threads"), [("normal", 1), ("full", 1), ("full", 3)])
def test_killed_writers_lose_nothing_committed(tmp_path: Path, durability: str, threads: int) -> None:
    path = str(tmp_path / "crash.db")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    rng = random.Random(1234)
    committed: set[int] = set()
    start = 0
    batches = 0
    for _ in range(KILLS // 2):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, durability, str(start), str(threads)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0.25, 0.9))  # imports take ~0.2 s: kill while it writes
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        lines = out.split("\n")[:-1]  # only whole lines: the last one may be cut by the kill
        committed |= {int(line.removeprefix("committed ")) for line in lines}
        batches = check(path, committed)
        start += 10_000  # fresh batch numbers for the next writer
    assert len(committed) > 0 and batches >= len(committed)
    print(
        f"{durability}: {KILLS // 2} kills survived, {batches} batches in the file, {len(committed)} reported committed"
    )
