"""Storage backends: where the log lives. The engine above them never names one.

A backend owns connections, SQL text, transactions, locking and error translation:

- ``sqlite``: one file (or ``:memory:``), through apsw.
- ``postgres``: a PostgreSQL database, through psycopg 3 (the ``minies[postgres]`` extra).

Each gives the engine a ``Backend`` and, through it, a ``Connection`` whose ``sql`` attribute
holds that backend's text for every statement the engine runs (``sqlite_sql``,
``postgres_sql``: the same names, the same parameters in the same order, ``?`` placeholders,
the same columns back, with the same Python types).
"""

from __future__ import annotations

import os

from minies._backends.base import (
    READ_ONLY_STORE,
    SWALLOWED,
    Backend,
    Check,
    Connection,
    has_table,
    is_url,
    shown,
    swallowed,
    triggers_problem,
)

__all__ = [
    "READ_ONLY_STORE",
    "SWALLOWED",
    "Backend",
    "Check",
    "Connection",
    "has_table",
    "is_url",
    "open_backend",
    "shown",
    "swallowed",
    "triggers_problem",
]


def open_backend(
    where: str | os.PathLike[str], *, durability: str, timeout: float, readonly: bool, device: str | None = None
) -> Backend:
    """The backend ``where`` names: a PostgreSQL URL, else a SQLite file path (``device``: the
    file is, or becomes, that device; see ``device_sql``)."""
    if is_url(where):
        if device is not None:
            raise ValueError("a device is a minies file; a PostgreSQL store is a hub (sync devices through it)")
        from minies._backends.postgres import PostgresBackend  # psycopg is an optional extra

        return PostgresBackend(str(where), durability=durability, timeout=timeout, readonly=readonly)
    from minies._backends.sqlite import SqliteBackend

    return SqliteBackend(os.fspath(where), durability=durability, timeout=timeout, readonly=readonly, device=device)
