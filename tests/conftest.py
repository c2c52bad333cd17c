from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import minies

TESTS = Path(__file__).parent


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.db")


@pytest.fixture
def store(minies_store: minies.EventStore) -> minies.EventStore:
    """An in-memory store (the fixture minies' pytest plugin gives every user)."""
    return minies_store


@pytest.fixture
def file_store(db_path: str) -> Iterator[minies.EventStore]:
    with minies.EventStore(db_path) as s:
        yield s


def run_python(code: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import the tests' domain module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helper process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
