"""The command line of local-first sync: ``minies sync`` (a device meets its hub, directly or
over HTTP) and its bundles for sneakernet (``minies sync export`` / ``minies sync import``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from minies import _serve, _sync, _wire
from minies._backends import shown
from minies._errors import SyncError
from minies._store import EventStore

USAGE = """\
minies sync DEVICE_FILE HUB [--device ID] [--token TOKEN] [--accept TYPE]... [--new-hub]
minies sync export DEVICE_FILE -o PUSH_BUNDLE [--device ID] [--accept TYPE]...
minies sync import HUB PUSH_BUNDLE -o REPLY_BUNDLE      (on the hub)
minies sync import DEVICE_FILE REPLY_BUNDLE             (back on the device)"""


def add_commands(commands: Any) -> None:
    """Register ``sync``, and the HTTP hub's ``serve`` and ``device``."""
    _serve.add_commands(commands)
    sync = commands.add_parser(
        "sync",
        help="sync a device file with its hub (a file, a PostgreSQL URL, or http(s) from `minies serve`), "
        "or through bundle files (export / import)",
        description="Push the device's pending events to the hub and pull the hub's log.",
        usage=USAGE,
    )
    sync.set_defaults(run=run)
    sync.add_argument("words", nargs="+", metavar="ARG", help="DEVICE_FILE HUB, or export/import and their files")
    sync.add_argument("--device", metavar="ID", help="make the file this device first (a stable id, once)")
    sync.add_argument("--token", help="the device's token for an http(s) hub (default: $MINIES_TOKEN)")
    sync.add_argument(
        "--accept",
        metavar="TYPE",
        action="append",
        default=[],
        help="an aggregate type whose conflicting events the hub places anyway (they commute); repeatable",
    )
    sync.add_argument("--new-hub", action="store_true", help="create HUB (a file) if it does not exist")
    sync.add_argument("-o", "--output", metavar="BUNDLE", help="the bundle to write (export; import on the hub)")


def run(args: argparse.Namespace) -> int:
    words = args.words
    if words[0] == "export" and len(words) == 2:
        return _export(args, words[1])
    if words[0] == "import" and len(words) == 3:
        return _import(args, words[1], words[2])
    if len(words) == 2 and words[0] not in ("export", "import"):
        return _direct(args, words[0], words[1])
    raise ValueError(f"usage:\n{USAGE}")


def _device(args: argparse.Namespace, path: str) -> EventStore:
    if not os.path.exists(path) and args.device is None:
        raise SyncError(f"{path!r} does not exist: give --device ID to create it as a new device")
    return EventStore(path, device=args.device)


def _direct(args: argparse.Namespace, path: str, hub: str) -> int:
    conflicts = dict.fromkeys(args.accept, "accept")
    token = args.token or os.environ.get("MINIES_TOKEN")
    seen: list[Any] = []
    if args.new_hub and not os.path.exists(hub):
        EventStore(hub).close()
    with _device(args, path) as store:
        report = store.sync(hub, conflicts=conflicts, token=token, rejected=seen.append)
    print(
        f"synced {shown(path)} with {shown(hub)}: pushed {report.pushed:,} ({report.placed:,} placed, "
        f"{report.rejected:,} rejected), pulled {report.pulled:,}; head {report.head_position} "
        f"{report.head_hash or '-'}" + (f"; {report.pending:,} still pending" if report.pending else "")
    )
    for rejection in seen:
        r = rejection.data
        print(f"rejected: event {r.seq} ({r.rejected_type} on {r.aggregate_id}): {r.reason}")
    return 0


def _export(args: argparse.Namespace, path: str) -> int:
    if not args.output:
        raise ValueError("minies sync export DEVICE_FILE -o PUSH_BUNDLE: give the bundle to write")
    with _device(args, path) as store:
        push = _sync.export_push(store, args.output, accept=frozenset(args.accept))
    print(f"wrote {args.output}: {len(push.pending):,} pending events of device {push.device!r}")
    return 0


def _import(args: argparse.Namespace, path: str, bundle: str) -> int:
    with open(bundle, "rb") as f:
        raw = f.read()
    message = _wire.decode(raw, _wire.Push | _wire.Reply, f"bundle {bundle!r}")  # type: ignore[arg-type]
    if isinstance(message, _wire.Push):
        if not args.output:
            raise ValueError("a push bundle is taken in by the hub: give -o REPLY_BUNDLE for its reply")
        with EventStore(path) as hub:
            reply = _sync.answer_bundle(hub, bundle, args.output)
        print(
            f"settled device {reply.device!r}: {reply.placed:,} placed, {reply.rejected:,} rejected; "
            f"wrote {args.output} ({len(reply.rows):,} events for it)"
        )
        return 0
    with _device(args, path) as store:
        before = store.head()[0]
        rejections, more = _sync.import_reply(store, bundle)
        head, head_hash = store.head()
    print(f"took in {head - before:,} events; head {head} {head_hash or '-'}")
    for rejection in rejections:
        r = rejection.data
        print(f"rejected: event {r.seq} ({r.rejected_type} on {r.aggregate_id}): {r.reason}")
    if more:
        print("the hub has more: export and import again")
    return 0
