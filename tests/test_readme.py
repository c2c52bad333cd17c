"""The README's examples run, in order, exactly as written (in a fresh process and folder)."""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


EXAMPLES = "\n\n".join(b for b in blocks("python") if "minies.testing" not in b)


def test_python_examples_run(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", EXAMPLES], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[('shipped', 129.99)]" in result.stdout
    assert "would e-mail about order_1" in result.stdout
    assert "1 order invoiced; 0 on the second run" in result.stdout and "correlation: req_xyz" in result.stdout
    assert "tricks: ['roll over']" in result.stdout and "dogs.db verifies: True" in result.stdout
    assert "Ada Byron\nTrue ['birth_year', 'name']\nverifies: True | forgotten: 1\n" in result.stdout


def test_testing_example_passes_under_pytest(tmp_path: Path) -> None:
    python = blocks("python")
    domain = "\n\n".join(python[:2])  # the classes the test example uses
    (tool,) = [b for b in python if "minies.testing" in b]
    (tmp_path / "test_example.py").write_text(domain + "\n\n" + tool)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "fixture 'minies_file_store' not found" in result.stdout or "fixture 'benchmark' not found" in result.stdout:
        pytest.skip("needs minies installed as a package and pytest-benchmark")
    assert result.returncode == 0, result.stdout
    assert "4 passed" in result.stdout


def test_command_line_examples_run(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", EXAMPLES], cwd=tmp_path, check=True, timeout=120)
    (cli_block,) = [b for b in blocks("sh") if "minies info" in b]
    for line in cli_block.splitlines():
        if "--import" in line:
            continue  # needs the reader's own modules; tests/test_cli.py runs it
        assert line.startswith("minies ")
        script = f'minies() {{ {shlex.quote(sys.executable)} -m minies "$@"; }}\n{line}'  # as a shell runs it
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (line, result.stderr)


def test_sql_examples_run(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", EXAMPLES], cwd=tmp_path, check=True, timeout=120)
    con = sqlite3.connect(tmp_path / "shop.db")
    sql = re.sub(r"--[^\n]*", "", blocks("sql")[0])
    rows = [con.execute(statement).fetchall() for statement in sql.split(";") if statement.strip()]
    assert rows[0][0][4] == 129.99 and rows[1]
    con.close()


def test_top_commands_are_the_ci_commands() -> None:
    first, second = blocks("sh")[0].strip().splitlines()[:2]
    assert first.split("#")[0].strip() == "pip install . && python -m minies demo shop.db"
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert second.split("#")[0].strip() in ci
