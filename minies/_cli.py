"""The minies command line: look into, verify, export and back up a minies file.

Exit codes: 0 success (verify: the file is intact), 1 verify or check found a problem,
2 an error (bad arguments, missing or foreign file, damaged file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import importlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

import minies
from minies import __version__, _cli_sync, _upcasters
from minies._backends import is_url, shown
from minies._errors import MiniesError
from minies._events import Recorded, registry
from minies._projections import Projection
from minies._report import visible
from minies._report import write as write_report
from minies._seals import keygen
from minies._store import EventStore

_encode = msgspec.json.Encoder().encode


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("minies: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (MiniesError, OSError, ValueError) as e:
        print(f"minies: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minies", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"minies {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        sub.add_argument("file", help="the minies database file, or a PostgreSQL URL")
        return sub

    command("demo", _demo, "write a small shop to FILE and show what happened")
    command("info", _info, "counts, aggregates, event types, projections, head, schema version")
    events = command("events", _events, "list events (a table, or JSON Lines with --json)")
    _filters(events)
    _imports(events)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    show = command("show", _show, "one aggregate's history, and its state when its class is imported (--import)")
    show.add_argument("aggregate_id", help="the aggregate (stream) to show")
    _imports(show)
    verify = command("verify", _verify, "re-check the hash chain and the file (exit 1 if not intact)")
    verify.add_argument("--verbose", action="store_true", help="every line of what is wrong with the file")
    verify.add_argument("--origins", action="store_true", help="prove each device's events arrived whole, in order")
    verify.add_argument(
        "--snapshots",
        action="store_true",
        help="also replay every snapshotted aggregate and compare (needs its class: --import MODULE)",
    )
    _imports(verify)
    verify.add_argument(
        "--trust",
        metavar="PUBLIC.pem",
        action="append",
        help="fail unless the log is sealed by this Ed25519 public key and every seal matches; repeatable",
    )
    verify.add_argument(
        "--expect-head",
        metavar="HEAD",
        help="fail unless the log still contains this head: what `minies head` printed, or a hash "
        "(at least 12 hex digits of it)",
    )
    export = command("export", _export, "every event as JSON Lines (or CSV), streamed")
    _filters(export)
    _imports(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    command("head", _head, "print the last position and its chain hash")
    backup = command("backup", _backup, "write a consistent single-file copy")
    backup.add_argument("output", metavar="OUT", help="the new file (must not exist)")
    command("types", _types, "event types with their schema versions and counts")
    copy = command("copy", _copy, "copy the log to another store (same positions, ids and hashes); incremental")
    copy.add_argument("target", metavar="TARGET", help="the store to copy to (created if missing)")
    check = command("check", _check, "read every event through today's classes and upcasters; list failures")
    _imports(check)
    rebuild = command("rebuild", _rebuild, "drop one projection's tables and rebuild them from the log")
    rebuild.add_argument("name", help="the projection's name")
    _imports(rebuild)
    forget = command(
        "forget", _forget, "forget a data subject: destroy its key, so its personal fields read as forgotten"
    )
    forget.add_argument("subject", help="the data subject's id")
    forget.add_argument("--reason", default="", help="why (recorded in the erasure event; no personal data)")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    grant = command("grant", _grant, "PostgreSQL: give ROLE exactly what an app, a reader or an auditor needs")
    grant.add_argument("role_name", metavar="ROLE", help="an existing PostgreSQL role")
    grant.add_argument(
        "--role",
        dest="access",
        choices=("app", "reader", "auditor"),
        required=True,
        help="app: append, read, run projections; reader: read; auditor: read the log and verify",
    )
    _cli_sync.add_commands(commands)  # sync, serve, device
    command("repair", _repair, "re-create minies' own triggers (and a server's functions) if the log verifies")
    keygen = commands.add_parser(
        "keygen", help="write an Ed25519 key pair: NAME.pem (private, mode 0600) and NAME.pub.pem"
    )
    keygen.set_defaults(run=_keygen)
    keygen.add_argument("name", metavar="NAME", help="the files' name, without .pem")
    seal = command("seal", _seal, "sign the log's head with an Ed25519 key (a seal inside the chain)")
    seal.add_argument("--key", metavar="PRIVATE.pem", required=True, help="the private key (`minies keygen NAME`)")
    seal.add_argument("--note", default="", help="signed and stored with the seal")
    report = command("report", _report, "write a self-contained HTML page for an auditor (verdict, summaries, events)")
    report.add_argument("-o", "--output", metavar="OUT", required=True, help="the HTML file to write (must not exist)")
    report.add_argument(
        "--latest", metavar="N", type=_count, default=2000, help="how many of the latest events its table holds"
    )
    _imports(report)
    report.add_argument(
        "--trust",
        metavar="PUBLIC.pem",
        action="append",
        help="check every seal against this Ed25519 public key (as verify --trust does); repeatable",
    )
    snapshots = command("snapshots", _snapshots, "snapshot counts and sizes; --drop TYPE deletes a type's")
    snapshots.add_argument("--drop", metavar="AGGREGATE_TYPE", help="delete every snapshot of this aggregate type")
    return parser


def _imports(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--import",
        dest="modules",
        metavar="MODULE",
        action="append",
        default=[],
        help="import this module first (where your events, upcasters and projections live); repeatable",
    )


def _import_all(modules: list[str]) -> None:
    sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ValueError(f"cannot import {module!r}: {type(e).__name__}: {e}") from None


def _filters(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--aggregate", metavar="ID", help="only this aggregate")
    sub.add_argument("--type", metavar="EVENT_TYPE", action="append", help="only this event type (repeatable)")
    sub.add_argument("--after", metavar="POSITION", type=_count, default=0, help="only positions after this one")
    sub.add_argument("--limit", metavar="N", type=_count, help="at most N events")
    sub.add_argument("--since", metavar="ISO_TIME", type=_time, help="only events at or after this time")
    sub.add_argument("--until", metavar="ISO_TIME", type=_time, help="only events before this time")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _open(args: argparse.Namespace) -> EventStore:
    return EventStore(args.file, readonly=True, key_encryption_key=_key_encryption_key())


def _key_encryption_key() -> bytes | None:
    """``MINIES_KEY_ENCRYPTION_KEY`` (64 hex digits), for files whose keys are wrapped."""
    text = os.environ.get("MINIES_KEY_ENCRYPTION_KEY")
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("MINIES_KEY_ENCRYPTION_KEY must be 64 hex digits (32 bytes)") from None


def _forget(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(f"forgetting {args.subject!r} cannot be undone; add --yes to confirm")
        answer = input(f"Forget {args.subject!r} in {shown(args.file)}? Its personal data cannot be recovered. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was changed")
            return 1
    with EventStore(args.file, key_encryption_key=_key_encryption_key()) as store:
        erasure = store.forget(args.subject, reason=args.reason, metadata={"user_id": getpass.getuser()})
    if not erasure.keys:
        print(f"{args.subject!r} has no personal data here (or was forgotten already); nothing was changed")
        return 0
    print(
        f"forgot {args.subject!r}: {_plural(erasure.keys, 'key')} destroyed, recorded at position {erasure.position}"
        + (f"; snapshots dropped for {', '.join(erasure.snapshots_dropped)}" if erasure.snapshots_dropped else "")
    )
    if not erasure.purged and not is_url(args.file):
        print("note: another connection kept the WAL in use; the key's bytes leave it at the next checkpoint")
    print(
        "applications' read models clean themselves when they next open the store; "
        "backups taken before still hold the key"
    )
    return 0


def _grant(args: argparse.Namespace) -> int:
    minies.grant(args.file, args.role_name, args.access)
    print(f"granted {args.access} to {args.role_name} on {shown(args.file)}")
    return 0


def _selected(store: EventStore, args: argparse.Namespace) -> Iterator[Recorded]:
    if args.aggregate is not None:
        records: Iterator[Recorded] = (r for r in store.read(args.aggregate) if r.position > args.after)
        if args.type:
            records = (r for r in records if r.event_type in args.type)
    else:
        records = store.read_all(after=args.after, event_types=args.type)
    count = 0
    for record in records:
        if args.since is not None and record.timestamp < args.since:
            continue
        if args.until is not None and record.timestamp >= args.until:
            continue
        if args.limit is not None and count >= args.limit:
            return
        count += 1
        yield _shown(record)


def _shown(record: Recorded) -> Recorded:
    """A record as the CLI prints it: a personal field this store cannot open (no key) shows
    ``"<sealed>"``, as in a dict payload, not its class's default."""
    hidden = minies.sealed(record)
    if not hidden or isinstance(record.data, dict):
        return record
    cls = type(record.data)
    data = msgspec.to_builtins(record.data)
    for attribute in hidden:
        data[cls.__struct_encode_fields__[cls.__struct_fields__.index(attribute)]] = "<sealed>"
    return msgspec.structs.replace(record, data=data)


def _progress(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        print(f"\r{label} {done:,}/{total:,}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return show


# ---------------------------------------------------------------------------- commands
def _demo(args: argparse.Namespace) -> int:
    from minies import _demo

    _demo.run(args.file)
    return 0


def _info(args: argparse.Namespace) -> int:
    with _open(args) as store:
        info = store.info()
        position, digest = store.head()
        out = sys.stdout.write
        if is_url(args.file):
            out(f"server          {shown(args.file)}\n")
        else:
            wal = args.file + "-wal"
            size = os.path.getsize(args.file)
            if os.path.exists(wal):
                wal_size = os.path.getsize(wal)
                out(f"file            {args.file} ({size + wal_size:,} bytes: {size:,} + {wal_size:,} in its -wal)\n")
            else:
                out(f"file            {args.file} ({size:,} bytes)\n")
        out(f"schema version  {info.schema_version}\n")
        out(f"events          {_plural(info.events, 'event')} in {_plural(info.aggregates, 'aggregate')}\n")
        out(f"head            {position} {digest or '-'}\n")
        if info.device is not None:  # (a device's own events wait in its pending tail)
            out(f"device          {info.device}: {_plural(info.pending, 'event')} pending its hub\n")
        out(f"forgotten       {_plural(info.forgotten_subjects, 'data subject')}\n")
        out("event types\n")
        for event_type, version, count in store.event_types():
            out(f"  {event_type + ('' if version == 1 else f' v{version}'):<30} {count:>10,}\n")
        out("projections\n")
        for name, version, at, updated in info.projections:
            out(f"  {name:<30} v{version:<4} at position {at:,} (updated {updated})\n")
        out("subscriptions\n")
        for name, at, updated in info.subscriptions:
            out(f"  {name:<30} at position {at:,} (updated {updated})\n")
        out("snapshots\n")
        for aggregate_type, count, size in store.snapshot_stats():
            out(f"  {aggregate_type:<30} {count:>10,} ({size:,} bytes)\n")
    return 0


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _events(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    with _open(args) as store:
        out = sys.stdout
        if args.json:
            for record in _selected(store, args):
                out.write(_encode(record).decode())
                out.write("\n")
            return 0
        out.write(f"{'position':>8}  {'time (UTC)':<26} {'aggregate':<20} {'version':>7}  {'type':<24} data\n")
        for r in _selected(store, args):
            data = visible(_encode(r.data).decode())
            data = data if len(data) <= 60 else data[:59] + "…"
            stamp = r.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")
            # Ids are never cut (one must paste back into --aggregate); invisible characters are written out.
            aggregate, event_type = visible(r.aggregate_id), visible(r.event_type)
            out.write(f"{r.position:>8}  {stamp:<26} {aggregate:<20} {r.version:>7}  {event_type:<24} {data}\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    with _open(args) as store:
        records = [_shown(r) for r in store.read(args.aggregate_id)]
        if not records:
            raise ValueError(f"{shown(args.file)} holds no aggregate {visible(args.aggregate_id)!r}")
        kind = records[0].aggregate_type
        out = sys.stdout
        out.write(f"{visible(args.aggregate_id)}: a {visible(kind)} at version {records[-1].version}\n\n")
        out.write(f"{'version':>7}  {'position':>8}  {'time (UTC)':<26} {'type':<24} data\n")
        for r in records:
            stamp = r.timestamp.strftime("%Y-%m-%d %H:%M:%S.%f")
            data = visible(_encode(r.data).decode())
            out.write(f"{r.version:>7}  {r.position:>8}  {stamp:<26} {visible(r.event_type):<24} {data}\n")
        # the class of that type in the modules imported (the least derived, if several)
        classes = sorted(
            (c for c in _snapshot_classes() if c.aggregate_type == kind),
            key=lambda c: (c.__module__ not in args.modules, len(c.__mro__)),
        )
        if not classes:
            out.write(f"\n(its state: pass --import MODULE with the {visible(kind)} class to fold the events)\n")
            return 0
        state = store.load(classes[0], args.aggregate_id)
        out.write(f"\nstate ({classes[0].__module__}.{classes[0].__qualname__}): {visible(_encode(state).decode())}\n")
    return 0


def _snapshot_classes() -> list[type[minies.Aggregate]]:
    from minies import _snapshots

    return list(_snapshots.classes())


def _verify(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    with _open(args) as store:
        try:
            checks = {"snapshots": args.snapshots, "trust": args.trust, "origins": args.origins}
            report = store.verify(expect_head=args.expect_head, progress=_progress("verifying"), **checks)
        except ValueError as e:
            raise ValueError(str(e).replace("expect_head", "--expect-head")) from None
    if report.ok:
        print(f"ok: {report.events_checked:,} events verified; head {report.head_position} {report.head_hash or '-'}")
        if args.snapshots:
            print(f"snapshots: {report.snapshots_checked:,} equal to a replay", end="")
            unchecked = report.snapshots_unchecked
            print(f"; {unchecked:,} not checked: no class imported (pass --import MODULE)" if unchecked else "")
        if args.trust:
            _sealed(report)
        if args.origins:
            print(f"origins: {_plural(report.devices, 'device')}, each sequence complete, in order and unaltered")
        return 0
    if report.first_bad_position is None:  # the file or its guards, not one event
        reason = report.reason if args.verbose else report.reason.strip().splitlines()[0]
        more = "" if reason == report.reason else " (--verbose for the details)"
        intact = f" (the chain of {report.events_checked:,} events is intact)" if report.events_checked else ""
        print(f"NOT OK: {reason}{more}{intact}")
    elif report.first_bad_position <= report.events_checked:  # a seal: the chain itself verified
        print(f"NOT OK: {report.reason} (the chain of {report.events_checked:,} events is intact)")
    else:
        print(
            f"NOT OK: first bad position {report.first_bad_position}: {report.reason} "
            f"({report.events_checked:,} events verified before it)",
        )
    return 1


def _sealed(report: minies.VerifyReport) -> None:
    print(
        f"sealed: up to position {report.sealed_position} by key {report.sealed_by} at {report.sealed_at} "
        f"({_plural(report.seals, 'seal')} checked)"
    )
    if report.unsealed:
        print(f"unsealed: {_plural(report.unsealed, 'event')} after the last seal (no seal vouches for them)")


def _keygen(args: argparse.Namespace) -> int:
    private, public = keygen(args.name)
    print(f"wrote {private} (private: keep it secret; mode 0600) and {public} (public: give it to auditors)")
    return 0


def _seal(args: argparse.Namespace) -> int:
    if not is_url(args.file) and not os.path.isfile(args.file):
        raise ValueError(f"cannot seal {args.file!r}: no such file")
    with EventStore(args.file, key_encryption_key=_key_encryption_key()) as store:
        seal = store.seal(args.key, note=args.note)
    print(f"sealed position {seal.position} {seal.head_hash} by key {seal.fingerprint} at {seal.sealed_at}")
    return 0


def _repair(args: argparse.Namespace) -> int:
    redone = minies.repair(args.file)
    where = shown(args.file)
    print(f"re-created {', '.join(redone)} on {where}" if redone else f"{where} is guarded: nothing to repair")
    return 0


_CSV_COLUMNS = (*Recorded.__struct_fields__, "schema_version", "hash")


def _export(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    with _open(args) as store, contextlib.ExitStack() as closing:
        target: IO[str] = sys.stdout
        if args.output:
            if os.path.exists(args.output):
                raise ValueError(f"{args.output!r} already exists; choose another output file")
            target = closing.enter_context(open(args.output, "x", encoding="utf-8", newline=""))
        if args.format == "jsonl":
            for record in _selected(store, args):
                target.write(_encode(record).decode())
                target.write("\n")
        else:
            writer = csv.writer(target)
            writer.writerow(_CSV_COLUMNS)
            records = _selected(store, args)
            while page := list(itertools.islice(records, 2000)):
                stored = dict(
                    store.query(
                        "SELECT position, schema_version || ',' || hex(hash) FROM events WHERE position IN"
                        " (SELECT value FROM json_each(?))",
                        (_encode([r.position for r in page]).decode(),),
                    )
                )
                writer.writerows(_csv_row(r, *stored[r.position].split(",")) for r in page)
    return 0


def _csv_row(r: Recorded, schema_version: str, digest: str) -> list[Any]:
    values: list[Any] = list(msgspec.structs.astuple(r))
    values[6] = _encode(r.timestamp).decode().strip('"')  # as stored: 2026-03-04T15:23:47.123456Z
    values[7:] = [_encode(r.data).decode(), _encode(r.metadata).decode(), schema_version, digest.lower()]
    return values


def _copy(args: argparse.Namespace) -> int:
    report = minies.copy(args.file, args.target, progress=_progress("copying"))
    print(
        f"copied {_plural(report.copied, 'event')} to {shown(args.target)} ({report.skipped:,} already there); "
        f"head {report.head_position} {report.head_hash or '-'}"
    )
    return 0


def _types(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(f"{'event type':<30} {'version':>7} {'events':>12}")
        for event_type, version, count in store.event_types():
            print(f"{event_type:<30} {version:>7} {count:>12,}")
    return 0


def _check(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    with _open(args) as store:
        problems = store.check_events(progress=_progress("checking"))
        total = store.head()[0]
        stored = store.event_types()
    for position, event_type, error in problems:
        print(f"position {position} ({event_type}): {error}")
    classless: dict[str, int] = {}
    for event_type, version, count in stored:
        known = event_type in registry or event_type in _upcasters.renames
        if not known and (event_type, version) not in _upcasters.upcasters:
            classless[event_type] = classless.get(event_type, 0) + count
    unchecked = sum(classless.values())
    checked = total - len(problems) - unchecked
    print(f"{checked:,} of {total:,} events read with today's classes; {len(problems):,} failed", end="")
    if unchecked:
        names = ", ".join(sorted(classless))
        print(f"; {unchecked:,} not checked: no class for {names} (pass --import MODULE)")
    else:
        print()
    return 1 if problems or unchecked else 0


def _rebuild(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    found = [cls for cls in _subclasses(Projection) if cls.name == args.name]
    if not found:
        raise ValueError(f"no Projection class named {args.name!r} was imported; pass --import MODULE")
    if not is_url(args.file) and not os.path.exists(args.file):
        raise ValueError(f"cannot open {args.file!r}: no such file")
    with EventStore(args.file, projections=[found[-1]()]) as store:
        report = store.rebuild(args.name, progress=_progress(f"rebuilding {args.name}"))
    print(
        f"rebuilt {report.name}: {report.events:,} events in {report.seconds:.2f}s ({report.events_per_second:,.0f}/s)"
    )
    return 0


def _subclasses(cls: type[Projection]) -> list[type[Projection]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _head(args: argparse.Namespace) -> int:
    with _open(args) as store:
        position, digest = store.head()
    print(f"{position} {digest or '-'}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.backup(args.output)
    print(f"backed up {args.file} to {args.output}")
    return 0


def _report(args: argparse.Namespace) -> int:
    _import_all(args.modules)
    verdict = write_report(
        args.file,
        args.output,
        snapshots=bool(args.modules),
        trust=args.trust,
        latest=args.latest,
        key_encryption_key=_key_encryption_key(),
    )
    print(f"wrote {args.output}: {'intact' if verdict.ok else 'NOT intact'}; open it in a browser")
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    if args.drop:
        with EventStore(args.file) as store:
            known = [t for (t,) in store.query("SELECT DISTINCT aggregate_type FROM events ORDER BY 1")]
            if args.drop not in known:
                raise ValueError(f"unknown aggregate type {args.drop!r}; this file has {', '.join(known) or 'none'}")
            print(f"dropped {_plural(store.drop_snapshots(args.drop), 'snapshot')} of {args.drop}")
        return 0
    with _open(args) as store:
        for aggregate_type, count, size in store.snapshot_stats():
            print(f"{aggregate_type:<30} {count:>10,} snapshots {size:>14,} bytes")
    return 0
