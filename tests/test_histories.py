"""Concurrent histories, recorded and checked (see ``history``): the promises about many
clients at once, tested by many clients at once.

CI runs every combination of workload, clients, backend and read path with a few seeds;
``MINIES_STRESS=1`` runs 40 seeds each, ``MINIES_HISTORY_SEED=N`` one chosen seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import history
import pytest

from minies import _store

STRESS = os.environ.get("MINIES_STRESS") == "1"
SEEDS = (
    [int(os.environ["MINIES_HISTORY_SEED"])]
    if os.environ.get("MINIES_HISTORY_SEED")
    else list(range(40 if STRESS else 3))
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
            ops = history.run_threads(plan, shared=clients == "shared", chaos=seed % 3 == 2)
        counts = history.check(plan, ops)
    assert {op.client for op in ops} >= set(range(plan.n))  # every client ran
    assert counts["events"] > 0
