from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from domain import Account, AccountOpened, Balances, MoneyDeposited, MoneyWithdrawn

import minies
from minies.testing import fill, projection_scenario, replay, scenario


def test_given_when_then_passes() -> None:
    account = (
        scenario(Account, "acc-1")
        .given(AccountOpened(owner="ann", balance=10))
        .when(lambda a: a.deposit(5))
        .then(MoneyDeposited(amount=5))
    )
    assert account.balance == 15 and account.version == 2


def test_given_when_then_shows_expected_and_actual_side_by_side() -> None:
    with pytest.raises(AssertionError, match="expected") as info:
        scenario(Account).given(AccountOpened(owner="a", balance=1)).when(lambda a: a.deposit(5)).then(
            MoneyDeposited(amount=6)
        )
    message = str(info.value)
    assert "expected" in message and "actual" in message
    assert "MoneyDeposited(amount=6) ≠ MoneyDeposited(amount=5)" in message


def test_then_raises() -> None:
    scenario(Account).given(AccountOpened(owner="a", balance=1)).when(lambda a: a.deposit(-1)).then_raises(
        ValueError, match="positive"
    )
    with pytest.raises(AssertionError, match="expected ValueError, but the command succeeded"):
        scenario(Account).when(lambda a: a.deposit(1)).then_raises(ValueError)
    with pytest.raises(AssertionError, match="does not match"):
        scenario(Account).when(lambda a: a.deposit(-1)).then_raises(ValueError, match="negative")


def test_projection_scenario_checks_inline_and_rebuilt() -> None:
    (
        projection_scenario(Balances())
        .given("a", AccountOpened(owner="x", balance=5), MoneyWithdrawn(amount=2), aggregate_type="Account")
        .then("SELECT account_id, balance FROM balances", [("a", 3)])
    )
    with pytest.raises(AssertionError, match="returned other rows .inline."):
        projection_scenario(Balances()).given("a", AccountOpened(owner="x", balance=5)).then(
            "SELECT balance FROM balances", [(6,)]
        )


def test_fill_and_replay(minies_file_store: minies.EventStore) -> None:
    ids = fill(
        minies_file_store,
        lambda i: MoneyDeposited(amount=i),
        events=2_500,
        aggregates=3,
        aggregate_type="Account",
        first=lambda i: AccountOpened(owner="x", balance=0),
    )
    assert ids == ["Account-0", "Account-1", "Account-2"]
    load = replay(minies_file_store, Account, ids[1])
    account = load()
    assert account.version == 2_500 and account.balance == sum(range(1, 2_500))


def test_fixtures_are_fresh(minies_store: minies.EventStore) -> None:
    assert minies_store.path == ":memory:" and list(minies_store.read_all()) == []


def test_the_plugin_is_registered_for_users(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        "def test_it(minies_store, minies_file_store):\n"
        "    assert minies_store.version('x') == 0 and minies_file_store.path.endswith('minies.db')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    if "fixture 'minies_store' not found" in result.stdout:
        pytest.skip("minies is not installed as a package here (the entry point registers the plugin)")
    assert result.returncode == 0, result.stdout
