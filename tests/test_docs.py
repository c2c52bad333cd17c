"""The docs site: it builds strictly, and its examples run as written."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


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
