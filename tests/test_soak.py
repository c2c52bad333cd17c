"""Several processes at once: appends, loads, saves with retries, queries, a follower.

Bounded in time (MINIES_SOAK_SECONDS, 6 by default). Afterwards the log, the read model and
every process's own account of what it did must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from domain import Account, AccountOpened, Balances

import minies

SECONDS = float(os.environ.get("MINIES_SOAK_SECONDS", "6"))

WORKER = """
import json, random, sys, time
import minies
from domain import Account, AccountOpened, Balances, MoneyDeposited

path, worker, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(worker)
done = {"appends": 0, "saves": 0, "conflicts": 0, "queries": 0, "loads": 0, "deposited": {}}
deadline = time.monotonic() + seconds
with minies.EventStore(path, projections=[Balances()], timeout=60) as store:
    while time.monotonic() < deadline:
        action = rng.random()
        if action < 0.4:
            account_id = f"private-{worker}"
            store.append(account_id, [MoneyDeposited(amount=1)], aggregate_type="Account")
            done["appends"] += 1
            done["deposited"][account_id] = done["deposited"].get(account_id, 0) + 1
        elif action < 0.8:
            account_id = f"shared-{rng.randrange(3)}"
            for attempt in range(1000):  # bounded: a livelock fails the test instead of hanging it
                assert attempt < 999, "1,000 conflicts in a row"
                account = store.load(Account, account_id)
                account.deposit(1)
                try:
                    store.save(account)
                    break
                except minies.ConcurrencyError:
                    done["conflicts"] += 1
            done["saves"] += 1
            done["deposited"][account_id] = done["deposited"].get(account_id, 0) + 1
        elif action < 0.9:
            store.query("SELECT sum(balance) FROM balances")
            done["queries"] += 1
        else:
            store.load(Account, f"shared-{rng.randrange(3)}")
            done["loads"] += 1
print(json.dumps(done))
"""

FOLLOWER = """
import json, sys
import minies
with minies.EventStore(sys.argv[1]) as store:
    seen = []
    store.subscription("soak").follow(lambda r: seen.append(r.position), idle_timeout=float(sys.argv[2]))
    print(json.dumps({"seen": len(seen), "in_order": seen == list(range(1, len(seen) + 1))}))
"""


def test_concurrency_soak(tmp_path: Path) -> None:
    path = str(tmp_path / "soak.db")
    with minies.EventStore(path, projections=[Balances()]) as store:
        for n in range(3):
            account = Account(id=f"shared-{n}")
            account.record(AccountOpened(owner="soak", balance=0))
            store.save(account)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    started = time.monotonic()
    follower = subprocess.Popen([sys.executable, "-c", FOLLOWER, path, "3"], env=env, stdout=subprocess.PIPE, text=True)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, path, str(w), str(SECONDS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    results = []
    for proc in workers:
        out, err = proc.communicate(timeout=SECONDS + 120)  # no deadlock: everyone finishes
        assert proc.returncode == 0, err  # and nobody saw a raw BusyError or anything else
        results.append(json.loads(out))
    follow_out, _ = follower.communicate(timeout=SECONDS + 120)
    elapsed = time.monotonic() - started
    deposited: dict[str, int] = {}
    for result in results:
        for account_id, n in result["deposited"].items():
            deposited[account_id] = deposited.get(account_id, 0) + n
    with minies.EventStore(path, projections=[Balances()]) as store:
        assert store.verify().ok
        total = store.head()[0]
        assert total == 3 + sum(deposited.values())  # every acknowledged write, exactly once
        for account_id, n in deposited.items():
            opened = 1 if account_id.startswith("shared") else 0
            assert store.version(account_id) == n + opened
            assert store.load(Account, account_id).balance == n
        live = store.query("SELECT * FROM balances ORDER BY account_id")
        store.rebuild("Balances")
        assert store.query("SELECT * FROM balances ORDER BY account_id") == live
    followed = json.loads(follow_out)
    assert followed == {"seen": total, "in_order": True}
    operations = sum(r["appends"] + r["saves"] + r["queries"] + r["loads"] for r in results)
    conflicts = sum(r["conflicts"] for r in results)
    print(f"soak: {elapsed:.1f}s, {operations} operations, {conflicts} conflicts retried, {total} events")
