"""A private, throwaway PostgreSQL cluster for the tests (or the server ``MINIES_PG_DSN`` names).

Started once per test session from Debian's server package (``initdb`` refuses root, so as root
its programs run through ``runuser -u postgres --``): a temporary directory, a free port on
127.0.0.1, trust authentication, no fsync (the cluster is thrown away). Each test gets a schema
of its own in it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _programs() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def cluster(durable: bool = False, settings: str = "", restart: list[Callable[[], None]] | None = None) -> Iterator[str]:
    """The DSN of a running server; why not, as ``RuntimeError``, if none can be had.

    ``durable``: fsync on, as a real server runs (benchmarks); tests need no fsync.
    ``settings``: more ``-c name=value`` options. ``restart``: given a list, a function is put
    in it that crashes the server (an immediate stop: no buffer written) and starts it again."""
    if os.environ.get("MINIES_PG_DSN") and restart is None:
        yield os.environ["MINIES_PG_DSN"]
        return
    bin_dir = _programs()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server programs (apt-get install postgresql-15, or set MINIES_PG_DSN)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="minies-pg-")
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = os.path.join(folder, "data"), _free_port()
    run = lambda *args: subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync={'on' if durable else 'off'}"
        options += f" -c max_connections=200 {settings}"
        start = [f"{bin_dir}/pg_ctl", "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"]
        run(*start)
        if restart is not None:
            restart.append(lambda: (run(f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"), run(*start)))
    except subprocess.CalledProcessError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"cannot start a PostgreSQL cluster: {e.stderr or e.stdout}") from e
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_schema(dsn: str) -> str:
    """A URL for a schema no test has used: an empty log."""
    return f"{dsn}?schema=t_{uuid.uuid4().hex[:12]}"
