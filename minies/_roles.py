"""PostgreSQL roles for a log: what an application, a reader and an auditor may do.

The log's owner (the role that created it) keeps everything; the roles ``grant`` sets up
get exactly what minies' own statements need, nothing that could change or empty the log.
"""

from __future__ import annotations

from typing import Literal

from minies._backends import is_url, shown
from minies._hub import CREATE_ORIGINS
from minies._serve import CREATE_DEVICES
from minies._store import EventStore

Access = Literal["app", "reader", "auditor"]
ACCESS: tuple[Access, ...] = ("app", "reader", "auditor")


def grant(url: str, role: str, access: Access = "app") -> None:
    """Give the PostgreSQL ``role`` exactly the rights ``access`` needs on the log at ``url``.

    Run it as the log's owner (the log is created first if the schema holds none). Whatever
    ``role`` held on minies' tables before is revoked first.

    - ``"app"`` appends, reads, and runs projections, subscriptions, snapshots and ``forget``:
      INSERT on the events table (the append trigger moves the head, as the owner), writes to
      minies' bookkeeping tables, CREATE in the schema for its read models. It cannot update,
      delete or truncate events, move the head, change or delete a personal-data key (only
      destroy one), disable triggers or create rules (only the owner can).
    - ``"reader"`` reads the log, minies' tables and the read models that exist now (open it
      with ``readonly=True``; grant again after adding read models).
    - ``"auditor"`` reads the log and minies' tables, not the read models, and verifies.

    Raises:
        ValueError: ``access`` is not one of the above, or ``url`` is not a PostgreSQL URL.
        StorageError: the role does not exist, or this connection may not grant.
    """
    if access not in ACCESS:
        raise ValueError(f"access must be one of {', '.join(ACCESS)}, got {access!r}")
    if not is_url(url):
        raise ValueError(f"roles exist on PostgreSQL only; {shown(url)!r} is a file (its permissions decide)")
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be a role's name, got {role!r}")
    from minies._backends.postgres import PostgresBackend  # (psycopg is an optional extra)

    with EventStore(url) as store:
        backend = store._backend
        assert isinstance(backend, PostgresBackend)  # (a URL opens nothing else)
        with store._tx.lock, store._tx.write():  # a hub's tables, so that they are granted too
            store._conn.execute(CREATE_ORIGINS)
            store._conn.execute(CREATE_DEVICES)
        backend.grant(role, access)
