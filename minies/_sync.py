"""Sync: a device meets its hub, directly, over HTTP, or through bundle files.

Each round trip is one ``Push`` answered by one ``Reply`` (``_wire``): the hub settles the
device's pending events and sends its log after the device's head (``_hub``); the device takes
the reply in one transaction (``_device``). Rounds repeat while the hub has more to send, or a
*retry* policy answered a rejection with a new command.
"""

from __future__ import annotations

import contextlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgspec

from minies import _hub, _wire
from minies._backends import is_url, shown
from minies._device import Device
from minies._errors import SyncError
from minies._events import REJECTIONS, EventRejected, Recorded
from minies._wire import Push, Reply, SyncReport

Transport = Callable[[Push], Reply]
_HTTP_TIMEOUT: Final = 60.0
CONTENT_TYPE: Final = "application/vnd.minies.sync"


def sync(
    store: Any,
    hub: Any,
    *,
    conflicts: Mapping[str, Any],
    rejected: Callable[[Recorded], object] | None,
    token: str | None,
) -> SyncReport:
    """``EventStore.sync`` (``store`` is the device's ``EventStore``; ``hub``, another, or
    where one is)."""
    device = _device_of(store)
    if store._tx.depth:
        raise SyncError("cannot sync inside store.transaction(): what it takes in would roll back with it; sync after")
    retries, accepting = _policies(conflicts)
    pushed = placed = refused = retried = pulled = rounds = 0
    with _transport(hub, token, type(store)) as exchange:
        while True:
            push = device.push(accepting)
            reply = exchange(push)
            rounds += 1
            pushed += reply.placed + reply.rejected
            placed += reply.placed
            refused += reply.rejected
            before = store.head()[0]
            _, more = device.receive(reply)
            pulled += store.head()[0] - before
            redone = _hand_over(store, device, rejected, retries)
            retried += redone
            if not more and not redone:
                break
    head, head_hash = store.head()
    left = len(device.pending())
    return SyncReport(pushed, placed, refused, retried, pulled, head, head_hash, left, rounds)


def _hand_over(
    store: Any, device: Device, rejected: Callable[[Recorded], object] | None, retries: dict[str, Callable[..., object]]
) -> int:
    """Hand each rejection of this device not yet handed over to ``rejected`` and its type's
    retry, each in one transaction with the note that it was: a retry's saves commit with it
    (so a device that dies meanwhile hands it over again at its next sync, and a command is
    never redone twice); one that raises rolls it all back, and the sync raises it."""
    redone = 0
    for rejection in _rejections(store, version=device.handled()):
        retry = retries.get(rejection.data.aggregate_type)
        with store.transaction():
            if rejected is not None:
                rejected(rejection)
            if retry is not None:
                retry(store, rejection)
                redone += 1
            device.handle(rejection.version)
    return redone


def rejections(store: Any, after: int) -> list[Recorded]:
    """``EventStore.rejections``: the stream of rejections, read as stored (minies' own type:
    never upcast, so an event of newer code the store cannot read does not stand in the way)."""
    return [r for r in _rejections(store) if r.position > after]


def _rejections(store: Any, version: int = 0) -> list[Recorded]:
    """The rejections after ``version`` of their stream: on a device, its own."""
    found = store.read(REJECTIONS, after=version, raw=True)
    records = [msgspec.structs.replace(r, data=msgspec.convert(r.data, EventRejected)) for r in found]
    return [r for r in records if store._device is None or r.data.device == store._device.id]


def _device_of(store: Any) -> Device:
    device: Device | None = store._device
    if device is None:
        raise SyncError(
            f"{shown(store.path)!r} is not a device: open it with EventStore(path, device='a-stable-id') "
            "(or minies sync FILE HUB --device ID) to sync it"
        )
    return device


def _policies(conflicts: Mapping[str, Any]) -> tuple[dict[str, Callable[..., object]], frozenset[str]]:
    retries, accepting = {}, set()
    for aggregate_type, policy in conflicts.items():
        if callable(policy):
            retries[aggregate_type] = policy
        elif policy == "accept":
            accepting.add(aggregate_type)
        elif policy != "reject":
            raise ValueError(
                f"conflicts[{aggregate_type!r}] must be 'reject', 'accept' or a function retry(store, rejection), "
                f"got {policy!r}"
            )
    return retries, frozenset(accepting)


@contextlib.contextmanager
def _transport(hub: Any, token: str | None, store_class: type) -> Iterator[Transport]:
    if isinstance(hub, store_class):
        yield lambda push: _hub.exchange(hub, push)
        return
    if not isinstance(hub, (str, os.PathLike)):
        raise TypeError(f"hub must be an EventStore, a file path or a URL, got {type(hub).__name__}")
    where = os.fspath(hub) if not isinstance(hub, str) else hub
    if where.startswith(("http://", "https://")):
        yield lambda push: post(where, push, token)
        return
    if not (is_url(where) or os.path.exists(where)):
        raise SyncError(
            f"no hub at {where!r}: give an existing minies file, a PostgreSQL URL or an http(s) URL "
            "(a new hub is any new store: EventStore(path), or `minies sync ... --new-hub`)"
        )
    with store_class(where) as store:
        yield lambda push: _hub.exchange(store, push)


def post(url: str, push: Push, token: str | None) -> Reply:
    """One round trip to a hub that ``minies serve`` answers."""
    request = urllib.request.Request(
        url.rstrip("/") + "/sync",
        data=_wire.encode(push),
        headers={
            "Content-Type": "application/vnd.minies.sync",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        said = e.read().decode(errors="replace").strip()[:500]
        raise SyncError(f"the hub at {url} refused the sync ({e.code}): {said or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SyncError(f"cannot reach the hub at {url}: {reason}") from None
    return _wire.decode(raw, Reply, f"the reply of {url}")


# ---------------------------------------------------------------------------- bundles
def export_push(store: Any, path: str | os.PathLike[str], *, accept: frozenset[str] = frozenset()) -> Push:
    """Write the device's push to a bundle file (for a hub reached by hand)."""
    push = _device_of(store).push(accept)
    _wire.write_bundle(path, push)
    return push


def answer_bundle(hub: Any, push_path: str | os.PathLike[str], reply_path: str | os.PathLike[str]) -> Reply:
    """On the hub: settle a device's push bundle and write the reply bundle."""
    reply = _hub.exchange(hub, _wire.read_bundle(push_path, Push))
    _wire.write_bundle(reply_path, reply)
    return reply


def import_reply(
    store: Any,
    path: str | os.PathLike[str],
    *,
    conflicts: Mapping[str, Any] | None = None,
    rejected: Callable[[Recorded], object] | None = None,
) -> tuple[list[Recorded], bool]:
    """On the device: take in a hub's reply bundle (idempotent: taking it twice changes
    nothing); with ``conflicts`` or ``rejected``, hand its rejections over as ``sync`` does.
    Returns the device's rejections the bundle brought, and whether the hub has more."""
    device = _device_of(store)
    taken = device.receive(_wire.read_bundle(path, Reply))
    if conflicts or rejected is not None:
        _hand_over(store, device, rejected, _policies(conflicts or {})[0])
    return taken


__all__ = ("answer_bundle", "export_push", "import_reply", "post", "rejections", "sync")
