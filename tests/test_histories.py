"""Concurrent histories, recorded and checked (see ``history``): the promises about many
clients at once, tested by many clients at once.

CI runs every combination of workload, clients, backend (PostgreSQL as superuser and as the
*app* role) and read path with two seeds (216 histories);
``MINIES_STRESS=1`` runs 40 seeds each, ``MINIES_HISTORY_SEED=N`` one chosen seed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import history
import pytest

from minies._subscriptions import Subscription

SUBSCRIPTION_CLAIM = Subscription._claim

STRESS = os.environ.get("MINIES_STRESS") == "1"
SEEDS = (
    [int(os.environ["MINIES_HISTORY_SEED"])]
    if os.environ.get("MINIES_HISTORY_SEED")
    else list(range(40 if STRESS else 2))
)


@pytest.fixture(params=["plain", "upcasting", "personal"])
def flavour(request: pytest.FixtureRequest) -> str:
    """The read path: chunks assembled by SQL, the records (upcasters registered), or the
    records with sealed fields opened."""
    request.getfixturevalue("upcasting_on" if request.param == "upcasting" else "no_upcasting")
    return str(request.param)


def plan_for(workload: str, clients: str, location: str, flavour: str, seed: int) -> history.Plan:
    ops = 40 if STRESS or clients == "processes" else 12  # processes start slowly: longer runs, to overlap
    return history.Plan(workload, clients, location, flavour, seed, ops=ops)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clients", ["shared", "own", "processes", "async"])
@pytest.mark.parametrize("workload", ["bank", "snapshots", "follow"])
def test_history(workload: str, clients: str, location: str, flavour: str, seed: int, tmp_path: Path) -> None:
    plan = plan_for(workload, clients, location, flavour, seed)
    with history.replayable(plan):
        if clients == "processes":
            ops = history.run_processes(plan, tmp_path, kill=seed % 2 == 1)
        elif clients == "async":
            ops = history.run_async(plan)
        else:
            ops = history.run_threads(plan, shared=clients == "shared", chaos=seed % 2 == 1)  # faults in every other
        counts = history.check(plan, ops)
    assert {op.client for op in ops} >= set(range(plan.n))  # every client ran
    assert counts["events"] > 0


# ------------------------------------------------------------------ the checker catches the bugs it exists for


def caught(plan: history.Plan, run: Callable[[history.Plan], list[history.Op]]) -> str | None:
    try:
        history.check(plan, run(plan))
    except history.Violation as e:
        return str(e)
    return None


def test_the_checker_catches_the_lost_update_of_a_load_racing_a_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """minies 0.2's bug, put back in the client processes: some seed's history shows it."""
    monkeypatch.setenv("MINIES_HISTORY_BUG", "load-version")
    found = None
    for seed in range(20):  # the race is a matter of timing: a few seeds show it, one rarely
        folder = tmp_path / str(seed)
        folder.mkdir()
        plan = history.Plan("bank", "processes", str(folder / "bank.db"), "upcasting", seed, ops=80, accounts=2, n=4)
        found = caught(plan, functools.partial(history.run_processes, folder=folder, kill=False))
        if found:
            break
    assert found is not None and ("lost update" in found or "a load of" in found), found


def test_the_checker_catches_a_processor_page_processed_twice(pg_url: str) -> None:
    history.reintroduce("processor-claim")
    try:
        found = None
        for seed in range(10):
            plan = history.Plan("follow", "own", f"{pg_url}{seed}", "plain", seed, ops=20)
            found = caught(plan, functools.partial(history.run_threads, shared=False, chaos=False))
            if found:
                break
    finally:
        Subscription._claim = SUBSCRIPTION_CLAIM  # type: ignore[method-assign]
    assert found is not None and "processor outputs not exactly once" in found, found
