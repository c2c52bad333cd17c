"""An HTTP hub (``minies serve``): devices sync with a hub store over HTTP, each with its token.

A small ASGI app, served by uvicorn (``pip install "minies[serve]"``): ``POST /sync`` takes a
device's ``Push`` (``_wire``'s bundle encoding) and answers the ``Reply``; ``GET /health`` says
the hub is up. Each request carries ``Authorization: Bearer TOKEN``; the hub keeps, in its
own ``minies_devices`` table, each registered device's id, the SHA-256 of its token (never
the token), the aggregate types it may push (fnmatch patterns) and when it was registered
and revoked. A token syncs its own device only, and only the types its patterns allow; a
refused push writes nothing. Exchanges run one at a time on one worker thread, so the event
loop never waits on the store.

Reading is all or nothing: a registered device pulls the hub's whole log, because its
confirmed log must be a byte prefix of the hub's (the chain is the proof).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import msgspec

from minies import _hub, _wire
from minies._backends import is_url, shown
from minies._errors import MiniesError, SyncError
from minies._store import EventStore
from minies._sync import CONTENT_TYPE
from minies._wire import Push

TOKEN_PREFIX: Final = "minies_"  # a token says what it is (and secret scanners can find one)
MAX_BODY: Final = 256 * 1024 * 1024  # bytes: a push of ~100,000 events of 2 KiB fits
CREATE_DEVICES: Final = (
    "CREATE TABLE IF NOT EXISTS minies_devices (device TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE,"
    " push TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)"
)
_SELECT: Final = "SELECT device, token_sha256, push, created_at, revoked_at FROM minies_devices"
_BY_DEVICE: Final = f"{_SELECT} WHERE device = ?"
_BY_TOKEN: Final = f"{_SELECT} WHERE token_sha256 = ?"
_ALL: Final = f"{_SELECT} ORDER BY device"
_ADD: Final = "INSERT INTO minies_devices (device, token_sha256, push, created_at) VALUES (?, ?, ?, ?)"
_READD: Final = (
    "UPDATE minies_devices SET token_sha256 = ?, push = ?, created_at = ?, revoked_at = NULL WHERE device = ?"
)
_REVOKE: Final = "UPDATE minies_devices SET revoked_at = ? WHERE device = ?"
_log = logging.getLogger("minies.serve")
T = TypeVar("T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Registration(msgspec.Struct, frozen=True):
    """A device the hub knows.

    Attributes:
        device: its id (the one it syncs under).
        push: the aggregate types it may push, as fnmatch patterns (``*``: any).
        created_at: when it was registered (its current token issued), ISO 8601 UTC.
        revoked_at: when its token was revoked, or None.
    """

    device: str
    push: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None

    def may_push(self, aggregate_type: str) -> bool:
        return any(fnmatch.fnmatchcase(aggregate_type, pattern) for pattern in self.push)


# ---------------------------------------------------------------------------- the registry
def add_device(hub: EventStore, device: str, push: Iterable[str] = ("*",)) -> str:
    """Register ``device`` on ``hub`` and return its new token (shown this once; the hub keeps
    only its SHA-256). A revoked device may be registered again, with a new token.

    Args:
        hub: the hub store.
        device: the device's id, as its file was opened with (``EventStore(path, device=...)``).
        push: the aggregate types it may push, as fnmatch patterns (``Order*``); ``*``: any.

    Raises:
        SyncError: the device is registered already and not revoked (revoke it first), or
            ``hub`` is a device, not a hub.
        ValueError: an empty device id or pattern.
    """
    if not isinstance(device, str) or not device or len(device) > 200:
        raise ValueError(f"a device id is a non-empty str of at most 200 characters, got {device!r:.80}")
    patterns = tuple(push)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"give at least one aggregate-type pattern, each a non-empty str (got {patterns!r:.80})")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)  # never starts with "-", which a CLI would take for an option
    now, rights = _now(), msgspec.json.encode(patterns).decode()
    with _registry(hub, f"cannot register device {device!r}") as conn:
        found = conn.execute(_BY_DEVICE, (device,)).fetchone()
        if found is None:
            conn.execute(_ADD, (device, _digest(token), rights, now))
        elif found[4] is None:
            raise SyncError(
                f"device {device!r} is registered on {shown(hub.path)!r} already: revoke it first "
                "(minies device revoke) to give it a new token"
            )
        else:
            conn.execute(_READD, (_digest(token), rights, now, device))
    return token


def revoke_device(hub: EventStore, device: str) -> Registration:
    """Revoke ``device``'s token: from now on the hub refuses it (401). Revoking twice is fine.

    Raises:
        SyncError: no such device on the hub.
    """
    with _registry(hub, f"cannot revoke device {device!r}") as conn:
        found = conn.execute(_BY_DEVICE, (device,)).fetchone()
        if found is None:
            raise SyncError(f"no device {device!r} on {shown(hub.path)!r} (minies device list shows them)")
        if found[4] is None:
            conn.execute(_REVOKE, (_now(), device))
            found = conn.execute(_BY_DEVICE, (device,)).fetchone()
    return _registration(found)


def devices(hub: EventStore) -> list[Registration]:
    """Every device registered on ``hub``, revoked ones included, by id."""
    with _registry(hub, "cannot list the devices") as conn:
        return [_registration(row) for row in conn.execute(_ALL).fetchall()]


def authorize(hub: EventStore, token: str | None) -> Registration:
    """The device ``token`` belongs to.

    Raises:
        SyncError: no token, an unknown one, or a revoked one.
    """
    if not token:
        raise SyncError("no token: a device syncs with its token (Authorization: Bearer TOKEN; minies sync --token)")
    with _registry(hub, "cannot check the token") as conn:
        found = conn.execute(_BY_TOKEN, (_digest(token),)).fetchone()
    if found is None:
        raise SyncError("unknown token: no device of this hub has it (minies device add gives one)")
    registration = _registration(found)
    if registration.revoked_at is not None:
        raise SyncError(f"the token of device {registration.device!r} was revoked at {registration.revoked_at}")
    return registration


@contextlib.contextmanager
def _registry(hub: EventStore, doing: str) -> Iterator[Any]:
    _refuse_a_device(hub)
    with hub._tx.lock, hub._tx.write(), hub._tx.translate(doing):
        conn = hub._tx.conn
        conn.execute(CREATE_DEVICES)
        yield conn


def _refuse_a_device(hub: EventStore) -> None:
    if hub._device is not None:
        raise SyncError(
            f"{shown(hub.path)!r} is a device (it syncs with a hub), not a hub: serve a minies file that is "
            "not a device, or PostgreSQL"
        )


def _registration(row: Sequence[Any]) -> Registration:
    return Registration(row[0], tuple(msgspec.json.decode(row[2], type=list[str])), row[3], row[4])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- the ASGI app
class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.status = status
        self.headers = [*headers, *([(b"www-authenticate", b'Bearer realm="minies"')] if status == 401 else [])]
        super().__init__(message)


class HubApp:
    """The ASGI app of ``minies serve``: ``POST /sync`` and ``GET /health`` over one hub store.

    Args:
        hub: the hub store (the app does not close it).
        max_body: the largest push it takes, in bytes (a larger one: 413).
    """

    def __init__(self, hub: EventStore, *, max_body: int = MAX_BODY) -> None:
        if max_body < 1:
            raise ValueError(f"max_body is a number of bytes, at least 1, got {max_body!r}")
        devices(hub)  # a hub, not a device; its registry there before the first request
        self.hub = hub
        self.max_body = max_body
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minies-hub")  # one exchange at a time

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        try:
            if path == "/health":
                if method not in ("GET", "HEAD"):
                    raise _Refused(405, "GET /health says whether the hub is up", [(b"allow", b"GET, HEAD")])
                await _answer(send, 200, b"ok\n")
            elif path == "/sync":
                if method != "POST":
                    raise _Refused(405, "POST /sync takes a device's push", [(b"allow", b"POST")])
                await _answer(send, 200, await self._sync(scope, receive), CONTENT_TYPE)
            else:
                raise _Refused(404, "a minies hub answers POST /sync and GET /health")
        except _Refused as e:
            if e.status in (401, 403):
                _log.warning("minies: refused %s: %s", _client(scope), e)
            await _answer(send, e.status, f"{e}\n".encode(), extra=e.headers)
        except MiniesError as e:  # the hub's store cannot answer now (locked, its server gone): try again
            _log.warning("minies: %s", e)
            await _answer(send, 503, f"{e}\n".encode(), extra=[(b"retry-after", b"5")])
        except Exception:
            _log.exception("minies: the hub failed on a request")
            await _answer(send, 500, b"the hub failed on this request (its log says why); nothing was written\n")

    async def _sync(self, scope: Scope, receive: Receive) -> bytes:
        token = _bearer(scope)
        await self._run(self._authorize, token)  # before taking a body from anyone
        size = _header(scope, b"content-length")
        if size is not None and size.isdigit() and int(size) > self.max_body:
            raise _Refused(413, f"a push of {int(size):,} bytes is more than this hub takes ({self.max_body:,})")
        body = await _body(receive, self.max_body)
        return await self._run(self._exchange, token, body)

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)

    def _authorize(self, token: str | None) -> Registration:
        try:
            return authorize(self.hub, token)
        except SyncError as e:
            raise _Refused(401, str(e)) from None

    def _exchange(self, token: str | None, body: bytes) -> bytes:
        registration = self._authorize(token)  # again: it may have been revoked meanwhile
        try:
            push = _wire.decode(body, Push, "the request body")
        except MiniesError as e:
            raise _Refused(400, str(e)) from None
        if push.device != registration.device:
            raise _Refused(
                403,
                f"this token belongs to device {registration.device!r}, and the push comes from device "
                f"{push.device!r}: a device syncs under its own id only; nothing was written",
            )
        refused = sorted({p.aggregate_type for p in push.pending if not registration.may_push(p.aggregate_type)})
        if refused:
            raise _Refused(
                403,
                f"device {push.device!r} may not write {', '.join(refused)} (it may push "
                f"{', '.join(registration.push)}); nothing was written",
            )
        try:
            reply = _hub.exchange(self.hub, push, may_push=registration.may_push)
        except MiniesError as e:
            raise _Refused(409, str(e)) from None
        return _wire.encode(reply)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the request ended before its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"a push of more than {limit:,} bytes is more than this hub takes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", extra: Sequence[Any] = ()
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


# ---------------------------------------------------------------------------- serving
def serve(
    hub: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    max_body: int = MAX_BODY,
    ready: Callable[[str], object] | None = None,
) -> None:
    """Serve ``hub`` (an existing file or a PostgreSQL URL) over HTTP(S) until interrupted.

    ``port=0`` picks a free port; ``ready(url)`` is called with the URL once it listens.

    Raises:
        MiniesError: uvicorn is not installed, or there is no hub at ``hub``.
    """
    try:
        import uvicorn
    except ImportError:
        raise MiniesError('minies serve needs uvicorn: pip install "minies[serve]"') from None
    where = os.fspath(hub)
    if not (is_url(where) or os.path.exists(where)):
        raise SyncError(f"no hub at {where!r}: give an existing minies file or a PostgreSQL URL")
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise ValueError("TLS needs both --ssl-keyfile and --ssl-certfile")
    with EventStore(where) as store:
        app = HubApp(store, max_body=max_body)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            with socket.create_server((host, port), family=family) as listening:
                config = uvicorn.Config(
                    app, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, lifespan="on", log_level="info"
                )
                try:
                    config.load()  # the TLS files read now: a bad one is one line, before "serving"
                except OSError as e:
                    raise MiniesError(f"cannot serve TLS with {ssl_keyfile} and {ssl_certfile}: {e}") from None
                bound = listening.getsockname()[1]
                url = f"{'https' if ssl_certfile else 'http'}://{f'[{host}]' if ':' in host else host}:{bound}"
                if ready is not None:
                    ready(url)
                with _stopped_by_sigterm():
                    uvicorn.Server(config).run(sockets=[listening])
        finally:
            app.close()


class _Stopped(BaseException):
    pass


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """A SIGTERM ends serving cleanly: uvicorn shuts down gracefully, then raises the signal
    again for the handler it found, and this one unwinds, so the hub store is closed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- the command line
def add_commands(commands: Any) -> None:
    """Register ``minies serve`` and ``minies device add / revoke / list``."""
    server = commands.add_parser(
        "serve",
        help="serve a hub over HTTP(S) for devices to sync with (needs minies[serve]: uvicorn)",
        description="Serve HUB (a minies file or a PostgreSQL URL): POST /sync for registered devices, GET /health.",
    )
    server.set_defaults(run=_serve)
    server.add_argument("hub", metavar="HUB", help="the hub: a minies file or a PostgreSQL URL")
    server.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="the port (default: 8000; 0: a free one)")
    server.add_argument("--ssl-keyfile", metavar="KEY.pem", help="serve HTTPS with this private key")
    server.add_argument("--ssl-certfile", metavar="CERT.pem", help="... and this certificate (chain)")
    server.add_argument(
        "--max-body", type=int, default=MAX_BODY, metavar="BYTES", help="the largest push taken (default: 256 MiB)"
    )
    device = commands.add_parser(
        "device",
        help="register, revoke and list the devices that may sync with a hub over HTTP",
        description="The devices a hub served by `minies serve` takes pushes from, and their tokens.",
    )
    actions = device.add_subparsers(required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register a device and print its new token (once)")
    add.set_defaults(run=_add)
    add.add_argument("hub", metavar="HUB", help="the hub: a minies file (created if missing) or a PostgreSQL URL")
    add.add_argument("device_id", metavar="DEVICE_ID", help="the device's id, as its file was opened with")
    add.add_argument(
        "--push",
        metavar="PATTERN",
        action="append",
        help="an aggregate type it may push, fnmatch-style (Order*); repeatable (default: *, any)",
    )
    revoke = actions.add_parser("revoke", help="revoke a device's token: the hub refuses it from now on")
    revoke.set_defaults(run=_revoke)
    revoke.add_argument("hub", metavar="HUB")
    revoke.add_argument("device_id", metavar="DEVICE_ID")
    listing = actions.add_parser("list", help="the registered devices, what they may push, when added and revoked")
    listing.set_defaults(run=_list)
    listing.add_argument("hub", metavar="HUB")


def _existing(where: str) -> EventStore:
    if not (is_url(where) or os.path.exists(where)):
        raise SyncError(f"no hub at {where!r}: give an existing minies file or a PostgreSQL URL")
    return EventStore(where)


def _serve(args: argparse.Namespace) -> int:
    def ready(url: str) -> None:
        print(f"minies: serving hub {shown(args.hub)} at {url} (Ctrl-C to stop)", flush=True)

    serve(
        args.hub,
        host=args.host,
        port=args.port,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        max_body=args.max_body,
        ready=ready,
    )
    return 0


def _add(args: argparse.Namespace) -> int:
    with EventStore(args.hub) as hub:
        token = add_device(hub, args.device_id, args.push or ("*",))
    push = ", ".join(args.push or ("*",))
    print(f"registered device {args.device_id!r} (may push: {push}); its token, shown this once:", file=sys.stderr)
    print(token)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _existing(args.hub) as hub:
        registration = revoke_device(hub, args.device_id)
    print(f"revoked device {registration.device!r} at {registration.revoked_at}: the hub refuses its token")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _existing(args.hub) as hub:
        found = devices(hub)
    if not found:
        print("no devices: minies device add HUB DEVICE_ID registers one")
        return 0
    width = max(len("device"), *(len(r.device) for r in found))
    print(f"{'device':<{width}}  {'added':<25}  {'revoked':<25}  may push")
    for r in found:
        print(f"{r.device:<{width}}  {r.created_at:<25}  {r.revoked_at or '-':<25}  {', '.join(r.push)}")
    return 0


__all__ = ("HubApp", "Registration", "add_device", "authorize", "devices", "revoke_device", "serve")
