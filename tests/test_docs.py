"""The docs site: it builds strictly, and its examples run as written."""

from __future__ import annotations

import asyncio
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# The pages whose examples build on each other (one shop, one bank), in the order they run.
STORY = [
    "tutorial.md",
    "how-to/many-writers.md",
    "how-to/change-events.md",
    "how-to/personal-data.md",
    "how-to/test-your-domain.md",
    "reference/cli.md",
    "how-to/postgresql.md",
    "how-to/eventsourcing-library.md",
    "explanation/performance.md",
    "explanation/how-it-works.md",
    "explanation/guarantees.md",
    "how-to/audit-a-file.md",
    "how-to/develop-minies.md",
    "how-to/local-first.md",
]


def blocks(language: str, *pages: Path) -> list[str]:
    found: list[str] = []
    for page in pages:
        found += re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)
    return found


def python_blocks(page: Path) -> list[str]:
    return blocks("python", page)


STORY_PAGES = [DOCS / page for page in STORY]
EXAMPLES = "\n\n".join(b for b in blocks("python", *STORY_PAGES) if "minies.testing" not in b)


def run(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_readme_is_short_runs_and_links_only_to_pages_that_exist(tmp_path: Path) -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    (example,) = blocks("python", README)
    result = run(example, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[('acc_456', 1500)]" in result.stdout
    for target in re.findall(r"\]\(((?:docs/|ARCHITECTURE)[^)#]*)\)", text):
        assert (ROOT / target).exists(), target


def test_the_top_commands_are_the_ci_commands() -> None:
    first, second = blocks("sh", README)[0].strip().splitlines()[:2]
    assert first.split("#")[0].strip() == "pip install . && python -m minies demo shop.db"
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.split("#")[0].strip() in ci


def test_every_page_is_in_the_site_and_every_story_page_in_the_test() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r": ([\w/.-]+\.md)$", nav, flags=re.M))
    with_examples = {page for page in pages if blocks("python", DOCS / page)}
    assert with_examples - set(STORY) - {"how-to/web-apps.md"} == set()


def test_the_story_s_examples_run_in_order(tmp_path: Path) -> None:
    result = run(EXAMPLES, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[('shipped', 129.99)]" in result.stdout
    assert "would e-mail about order_1" in result.stdout
    assert "1 order invoiced; 0 on the second run" in result.stdout and "correlation: req_xyz" in result.stdout
    assert "tricks: ['roll over']" in result.stdout and "dogs.db verifies: True" in result.stdout
    assert "Ada Byron\nTrue ['birth_year', 'name']\nverifies: True | forgotten: 1\n" in result.stdout


def test_the_testing_example_passes_under_pytest(tmp_path: Path) -> None:
    python = blocks("python", *STORY_PAGES)
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
    assert result.returncode == 0, result.stdout
    assert "4 passed" in result.stdout


def test_the_command_line_examples_run(tmp_path: Path) -> None:
    assert run(EXAMPLES, tmp_path).returncode == 0
    (cli_block,) = [b for b in blocks("sh", DOCS / "reference" / "cli.md") if "minies info" in b]
    for line in cli_block.splitlines():
        if "--import" in line:
            continue  # needs the reader's own modules; tests/test_cli.py runs it
        assert line.startswith("minies ")
        script = f'minies() {{ {shlex.quote(sys.executable)} -m minies "$@"; }}\n{line}'  # as a shell runs it
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (line, result.stderr)


def test_every_command_is_documented() -> None:
    import argparse

    from minies._cli import _parser

    (commands,) = [a.choices for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    page = (DOCS / "reference" / "cli.md").read_text()
    missing = [name for name in commands if f"minies {name}" not in page]
    assert missing == []


def test_the_sql_examples_run(tmp_path: Path) -> None:
    assert run(EXAMPLES, tmp_path).returncode == 0
    con = sqlite3.connect(tmp_path / "shop.db")
    sql = re.sub(r"--[^\n]*", "", blocks("sql", DOCS / "how-to" / "audit-a-file.md")[0])
    rows = [con.execute(statement).fetchall() for statement in sql.split(";") if statement.strip()]
    assert rows[0][0][4] == 129.99 and rows[1]
    con.close()


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Every page in the nav, every reference resolved, every docstring rendered: a warning fails."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "store" / "index.html").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_web_app_serves_real_requests(tmp_path: Path) -> None:
    """The FastAPI example under uvicorn on loopback: deposits, withdrawals that race, errors."""
    httpx = pytest.importorskip("httpx")
    (app,) = python_blocks(DOCS / "how-to" / "web-apps.md")
    (tmp_path / "bank.py").write_text(app)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bank:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/accounts/none", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=30) as client:
            deposit = client.post("/accounts/acc-1/deposits", params={"amount": 100}, headers={"x-request-id": "r-1"})
            assert (deposit.status_code, deposit.json()) == (201, {"version": 1})
            assert client.get("/accounts/acc-1").json() == {"balance": 100, "version": 1}
            assert client.get("/accounts/nobody").status_code == 404
            too_much = client.post("/accounts/acc-1/withdrawals", params={"amount": 1000})
            assert too_much.status_code == 422 and "less than 1000" in too_much.json()["error"]
            stale = client.post("/accounts/acc-1/withdrawals/0", params={"amount": 1})
            assert stale.status_code == 409 and "expected" in stale.json()["error"]

        async def race() -> list[int]:  # 20 withdrawals of 10 from 100, at once
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                answers = await asyncio.gather(
                    *(client.post("/accounts/acc-1/withdrawals", params={"amount": 10}) for _ in range(20))
                )
            return sorted(a.status_code for a in answers)

        assert asyncio.run(race()) == [201] * 10 + [422] * 10  # no 409: each decided inside a transaction
        with httpx.Client(base_url=base) as client:
            assert client.get("/accounts/acc-1").json() == {"balance": 0, "version": 11}
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output, output
    import minies

    with minies.EventStore(tmp_path / "bank.db", readonly=True) as store:
        assert next(iter(store.read("acc-1"))).metadata == {"correlation_id": "r-1"}
        assert store.verify().ok
