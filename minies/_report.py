"""The report an auditor opens: one self-contained HTML file (``minies report``).

Built on the public API only: the file is opened read-only, ``verify`` gives the verdict, the
summaries are SQL aggregates over the whole log (``query``), and the events table holds the
latest events, so the report stays small on a big file. The page fetches nothing: its CSS,
SVG and JavaScript are inline, and its Content-Security-Policy forbids every request.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import msgspec

import minies

LATEST: Final = 2000
"""How many of the latest events the report's table holds."""

_encode = msgspec.json.Encoder().encode
_PALETTE: Final = ("#3b6ea8", "#e08a2c", "#4c9a6a", "#b5484b", "#7a5ea8", "#2f9aa6", "#a8874c", "#c6669a")
_MAX_TYPES: Final = len(_PALETTE)
_SPAN: Final = (  # (at most this many days between the first and last event, chars of created_at, label)
    (1 / 24, 16, "minute"),
    (2, 13, "hour"),
    (92, 10, "day"),
    (366 * 8, 7, "month"),
    (None, 4, "year"),
)
_BUCKETS: Final = (
    "SELECT substr(created_at, 1, ?) AS bucket, aggregate_type, count(*) FROM events"
    " GROUP BY bucket, aggregate_type ORDER BY bucket, aggregate_type"
)
# The first and the last event by position (the primary key: no scan).
_SPAN_SQL: Final = (
    "SELECT (SELECT created_at FROM events ORDER BY position LIMIT 1),"
    " (SELECT created_at FROM events ORDER BY position DESC LIMIT 1)"
)
_LARGEST: Final = (
    "SELECT aggregate_id, aggregate_type, max(version), max(position) FROM events"
    " GROUP BY aggregate_id ORDER BY max(version) DESC, aggregate_id LIMIT ?"
)
_DEAD_LETTERS: Final = "SELECT subscription, count(*) FROM minies_dead_letters GROUP BY subscription"


def visible(text: str) -> str:
    """``text`` with control, bidi, zero-width and other invisible characters written out as
    ``\\u202e`` (so U+202E cannot reverse what an auditor reads, nor a tab hide in an id)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in text
    )


def write(
    path: str,
    output: str,
    *,
    snapshots: bool = False,
    trust: Sequence[Any] | None = None,
    latest: int = LATEST,
    key_encryption_key: bytes | None = None,
) -> minies.VerifyReport:
    """Write the report on the minies file ``path`` to ``output`` (which must not exist).

    Args:
        path: a minies SQLite file; it is opened read-only and left byte for byte as it was.
        output: the HTML file to create.
        snapshots: also compare every snapshot whose class is imported with a replay.
        trust: public keys (as ``verify(trust=...)`` takes them): check every seal, and say up
            to where the log is sealed, by whom and when.
        latest: how many of the latest events the events table holds.
        key_encryption_key: for a file whose personal-data keys are wrapped.

    Returns:
        What ``verify`` found (the report's verdict).

    Raises:
        ValueError: ``output`` exists, or ``path`` is a server URL (the report reads a file).
        MiniesError: the file cannot be opened as a minies file.
    """
    if "://" in path:
        raise ValueError("the report reads a minies file; copy the server's log to one first (minies copy URL FILE)")
    if os.path.exists(output):
        raise ValueError(f"{output!r} already exists; choose another output file")
    with minies.EventStore(path, readonly=True, key_encryption_key=key_encryption_key) as store:
        page, verdict = render(store, path, snapshots=snapshots, trust=trust, latest=latest)
    with open(output, "x", encoding="utf-8") as target:
        target.write(page)
    return verdict


def render(
    store: minies.EventStore,
    path: str,
    *,
    snapshots: bool = False,
    trust: Sequence[Any] | None = None,
    latest: int = LATEST,
) -> tuple[str, minies.VerifyReport]:
    """The report's HTML text, and the verdict, for an open store on the file ``path``."""
    verdict = store.verify(snapshots=snapshots, trust=trust)
    seals = [r for r in store.read(minies.SEALS, raw=True) if r.event_type == minies.Sealed.event_type]
    info = store.info()
    head = store.head()
    span = store.query(_SPAN_SQL)[0]
    sections = [
        _verdict(verdict, head, snapshots, trust is not None, len(seals)),
        _file(store, path, info, head, span),
        _chart(store, info.events, span, seals),
        _types(store.event_types()),
        _largest(store),
        _erasures(store),
        _seals(seals, verdict if trust is not None else None),
        _consumers(store, info, head[0]),
        _events(store, head[0], latest, verdict.first_bad_position),
    ]
    title = f"Audit of {os.path.basename(path)}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(sections)
    page = _PAGE.format(
        title=_e(title),
        subtitle=_e(f"{os.path.abspath(path)} · generated {stamp} by minies {minies.__version__}"),
        body=body,
        css=_CSS,
        script=_SCRIPT,
    )
    return page, verdict


# ---------------------------------------------------------------------------- sections
def _e(value: object) -> str:
    """Escaped for HTML, with invisible characters written out."""
    return html.escape(visible(str(value)))


def _n(value: int) -> str:
    return f"{value:,}"


def _section(anchor: str, title: str, content: str, note: str = "") -> str:
    lead = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{lead}{content}</section>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], empty: str, numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; ``numeric`` columns are right-aligned."""
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(report: minies.VerifyReport, head: tuple[int, str], snapshots: bool, trusted: bool, seals: int) -> str:
    bad = report.first_bad_position
    reason = f"{report.reason[:1].upper()}{report.reason[1:]}."
    # What failed: the log (chain, guards, file), a seal (the chain verified past it), or a snapshot.
    failed = "" if report.ok else "seal" if bad is not None and bad <= report.events_checked else "log"
    if failed == "log" and bad is None and snapshots and "snapshot" in report.reason:
        failed = "snapshot"
    if report.ok:
        headline = "Intact"
        sentence = (
            f"All {_n(report.events_checked)} events were re-hashed and the chain holds; the guards that keep "
            "history immutable are in place and SQLite's integrity check passed."
        )
    elif bad is None:
        headline, sentence = "Not intact", reason
    else:
        headline = f"Not intact: first problem at position {_n(bad)}"
        if failed == "seal":
            sentence = f"{reason} The chain of {_n(report.events_checked)} events is intact; a seal is what fails."
        else:
            sentence = f"{reason} The {_n(report.events_checked)} events before it verified; nothing from this "
            sentence += "position on can be trusted."
    chain = failed != "log"
    checks = [("Chain and guards", "ok" if chain else "bad", "verified" if chain else "failed")]
    if not snapshots:
        checks.append(("Snapshots", "muted", "not checked: pass --import MODULE to replay them"))
    elif failed == "snapshot":
        checks.append(("Snapshots", "bad", "a snapshot differs from a replay: see above"))
    elif chain:
        text = f"{_n(report.snapshots_checked)} equal to a replay"
        if report.snapshots_unchecked:
            text += f"; {_n(report.snapshots_unchecked)} not checked (no class imported)"
        checks.append(("Snapshots", "ok", text))
    else:
        checks.append(("Snapshots", "muted", "not compared: the log failed first"))
    if not trusted:
        text = f"{_n(seals)} in the log, not checked: pass --trust PUB.pem" if seals else "none in the log"
        checks.append(("Seals", "muted", text))
    elif failed == "seal":
        checks.append(("Seals", "bad", "not all verified: see above"))
    elif chain:
        text = (
            f"sealed up to position {_n(report.sealed_position)} by key {report.sealed_by[:16]}… at {report.sealed_at}"
        )
        after = f"{_n(report.unsealed)} event after the last seal is" if report.unsealed == 1 else ""
        after = after or f"{_n(report.unsealed)} events after the last seal are"
        text += f"; {after} unsealed" if report.unsealed else ""
        checks.append(("Seals", "ok", f"{_n(report.seals)} checked: {text}"))
    else:
        checks.append(("Seals", "muted", "not checked: the log failed first"))
    position, digest = head
    checks.append(("Head" if report.ok else "Head (as stored)", "muted", f"position {_n(position)} · {digest or '-'}"))
    items = "".join(f'<li class="{k}"><span>{_e(name)}</span> {_e(text)}</li>' for name, k, text in checks)
    status = "ok" if report.ok else "bad"
    return (
        f'<section id="verdict" class="verdict {status}" data-ok="{str(report.ok).lower()}"'
        f' data-first-bad="{report.first_bad_position or ""}">'
        f'<div class="badge">{"✓" if report.ok else "✗"}</div><div><h2>{_e(headline)}</h2>'
        f'<p class="sentence">{_e(sentence)}{_jump(report.first_bad_position)}</p><ul class="checks">{items}</ul>'
        '<p class="note">Publish the head; <code>minies verify FILE --expect-head HASH</code> later proves the '
        "file still extends this exact history.</p></div></section>"
    )


def _jump(position: int | None) -> str:
    """A link to the event at ``position`` in the events table."""
    return "" if position is None else f' <a id="first-bad" href="#position={position}">Show event {_n(position)}</a>'


def _file(
    store: minies.EventStore, path: str, info: minies.StoreInfo, head: tuple[int, str], span: tuple[Any, ...]
) -> str:
    size = os.path.getsize(path)
    wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    ((sqlite_version, application_id),) = store.query(
        "SELECT sqlite_version(), (SELECT * FROM pragma_application_id())"
    )
    first, last = span
    app = int(application_id).to_bytes(4, "big", signed=True)
    snapshots = store.snapshot_stats()
    facts = [
        ("File", os.path.basename(path)),
        (
            "Size",
            f"{_n(size + wal)} bytes" + (f" ({_n(size)} in the file, {_n(wal)} in its -wal)" if wal else ", no -wal"),
        ),
        ("Schema version", str(info.schema_version)),
        ("Application id", f"0x{app.hex()} ({app.decode('ascii', 'replace')!r})"),
        ("SQLite", str(sqlite_version)),
        ("First event", first or "-"),
        ("Last event", f"{last} (position {_n(head[0])})" if last else "-"),
        ("Events", _n(info.events)),
        ("Aggregates", _n(info.aggregates)),
        ("Forgotten data subjects", _n(info.forgotten_subjects)),
        ("Snapshots", f"{_n(sum(c for _, c, _ in snapshots))} ({_n(sum(s for _, _, s in snapshots))} bytes)"),
    ]
    rows = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    return _section("file", "The file", f'<dl class="facts">{rows}</dl>')


def _granularity(first: str | None, last: str | None) -> tuple[int, str]:
    if not first or not last:
        return 10, "day"
    days = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds() / 86400
    for limit, width, label in _SPAN:
        if limit is None or days <= limit:
            return width, label
    raise AssertionError("unreachable")


def _chart(store: minies.EventStore, total: int, span: tuple[Any, ...], seals: list[minies.Recorded]) -> str:
    width, label = _granularity(*span)
    counts: dict[str, dict[str, int]] = {}
    by_type: dict[str, int] = {}
    for bucket, aggregate_type, count in store.query(_BUCKETS, (width,)):
        counts.setdefault(bucket, {})[aggregate_type] = count
        by_type[aggregate_type] = by_type.get(aggregate_type, 0) + count
    if not counts:
        return _section("chart", "Events over time", '<p class="empty">The log is empty.</p>')
    types = sorted(by_type, key=lambda t: (-by_type[t], t))
    if len(types) > _MAX_TYPES:  # the smallest types share one colour, named "other types"
        kept = set(types[: _MAX_TYPES - 1])
        types = [*types[: _MAX_TYPES - 1], "other types"]
        for bucket in counts:
            rest = sum(c for t, c in counts[bucket].items() if t not in kept)
            counts[bucket] = {t: c for t, c in counts[bucket].items() if t in kept} | (
                {"other types": rest} if rest else {}
            )
    colour = dict(zip(types, _PALETTE, strict=False))
    buckets = sorted(counts)
    tallest = max(sum(c.values()) for c in counts.values())
    w, h, left, bottom = 900, 240, 48, 28
    step = (w - left) / len(buckets)
    bar = min(max(step * 0.8, 1.0), 56.0)
    parts = [
        f'<svg id="chart-svg" viewBox="0 0 {w} {h + bottom}" role="img" aria-label="events per {label}"'
        f' data-granularity="{label}" data-total="{total}">',
        f'<line x1="{left}" y1="{h}" x2="{w}" y2="{h}" class="axis"/>',
        f'<text x="{left - 6}" y="12" class="tick" text-anchor="end">{_n(tallest)}</text>',
        f'<text x="{left - 6}" y="{h}" class="tick" text-anchor="end">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x, y = left + i * step + (step - bar) / 2, float(h)
        total_here = sum(counts[bucket].values())
        parts.append(f'<g class="bucket" data-bucket="{_e(bucket)}" data-total="{total_here}">')
        for aggregate_type in types:
            count = counts[bucket].get(aggregate_type, 0)
            if not count:
                continue
            height = (h - 16) * count / tallest
            y -= height
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}"'
                f' fill="{colour[aggregate_type]}" data-bucket="{_e(bucket)}" data-type="{_e(aggregate_type)}"'
                f' data-count="{count}"><title>{_e(bucket)} · {_e(aggregate_type)}: {_n(count)}</title></rect>'
            )
        parts.append("</g>")
    for i in sorted({0, len(buckets) // 2, len(buckets) - 1}):
        x = left + i * step + step / 2
        parts.append(f'<text x="{x:.1f}" y="{h + 18}" class="tick" text-anchor="middle">{_e(buckets[i])}</text>')
    marked = False
    for r in seals:  # a seal on the timeline: a mark over its bucket
        bucket = r.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:width]
        if bucket in counts:
            x, marked = left + buckets.index(bucket) * step + step / 2, True
            parts.append(
                f'<path class="seal-mark" d="M{x - 5:.1f} 2h10l-5 9z" data-position="{r.position}">'
                f"<title>sealed at position {_n(r.position)}</title></path>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<li><i style="background:{colour[t]}"></i>{_e(t)} <b>{_n(sum(c.get(t, 0) for c in counts.values()))}</b></li>'
        for t in types
    )
    legend += '<li><i class="seal-key"></i>seal</li>' if marked else ""
    note = f"Events per {label}, stacked by aggregate type, over the whole log."
    return _section("chart", "Events over time", "".join(parts) + f'<ul class="legend">{legend}</ul>', note)


def _types(stored: list[tuple[str, int, int]]) -> str:
    rows = [(_e(t), _n(v), _n(c)) for t, v, c in stored]
    table = _table(("event type", "schema version", "events"), rows, "No events yet.", numeric=(1, 2))
    return _section("types", "Event types", table)


def _anchor(aggregate_id: str) -> str:
    shown = visible(aggregate_id)
    return f'<a href="#aggregate={html.escape(quote(shown, safe=""))}" class="agg">{html.escape(shown)}</a>'


def _largest(store: minies.EventStore) -> str:
    rows = [(_anchor(a), _e(t), _n(v), _n(p)) for a, t, v, p in store.query(_LARGEST, (10,))]
    header = ("aggregate", "type", "version", "last position")
    return _section("largest", "Largest aggregates", _table(header, rows, "No aggregates yet.", numeric=(2, 3)))


def _erasures(store: minies.EventStore) -> str:
    rows = []
    for r in store.read(minies.ERASURES, raw=True):  # the stream's index, not a scan of the log
        if r.event_type != minies.SubjectForgotten.event_type:
            continue
        data = r.data if isinstance(r.data, dict) else {}
        who = r.metadata.get("user_id", "") if isinstance(r.metadata, dict) else ""
        when = r.timestamp.strftime("%Y-%m-%d %H:%M:%S UTC")
        rows.append((_n(r.position), _e(when), _e(data.get("subject", "")), _e(data.get("reason", "") or "-"), _e(who)))
    note = (
        "Each erasure destroyed a data subject's key: its personal fields read as &lt;forgotten&gt; while the chain"
        " still verifies. Only what the erasure event records is shown here, never personal data."
    )
    header = ("position", "when", "subject", "why", "asked by")
    return _section("erasures", "Erasures", _table(header, rows, "No data subject was forgotten.", (0,)), note)


def _seals(seals: list[minies.Recorded], report: minies.VerifyReport | None) -> str:
    rows = []
    for r in seals:
        data = r.data if isinstance(r.data, dict) else {}
        rows.append(
            (
                _n(r.position),
                _e(data.get("sealed_at", "")),
                _n(data.get("position", 0)),
                f"<code>{_e(str(data.get('fingerprint', ''))[:16])}…</code>",
                _e(data.get("note", "") or "-"),
            )
        )
    if report is None:
        note = "Listed as the log records them; <code>minies report FILE --trust PUB.pem</code> checks each signature."
    elif report.ok:
        note = f"Each signature checked against the trusted keys: {_n(report.seals)} good."
    else:
        note = f"<b class=problem>Not every seal verified: {_e(report.reason)}.</b>"
    header = ("position", "sealed at", "head it signs", "key", "note")
    table = _table(header, rows, "No seal: nothing vouches for who wrote this log.", numeric=(0, 2))
    return _section("seals", "Seals", table, note)


def _consumers(store: minies.EventStore, info: minies.StoreInfo, head: int) -> str:
    try:
        dead = dict(store.query(_DEAD_LETTERS))
    except minies.QueryError:  # an old file, before dead letters
        dead = {}
    rows = [
        (_e(name), f"read model v{version}", _n(at), _n(head - at), _e(updated), "-")
        for name, version, at, updated in info.projections
    ] + [
        (_e(name), "subscription", _n(at), _n(head - at), _e(updated), _n(dead.get(name, 0)))
        for name, at, updated in info.subscriptions
    ]
    header = ("name", "kind", "checkpoint", "lag (events)", "updated", "dead letters")
    table = _table(header, rows, "No read model or subscription has a checkpoint here.", numeric=(2, 3, 5))
    return _section("consumers", "Read models and subscriptions", table)


def _payload(record: minies.Recorded) -> str:
    """The payload as JSON, personal fields this store cannot open as ``<sealed>`` and forgotten
    ones as ``<forgotten>``."""
    data = record.data
    hidden, gone = minies.sealed(record), minies.forgotten(record)
    if isinstance(data, dict):
        shown = dict(data) | dict.fromkeys(gone, "<forgotten>") | dict.fromkeys(hidden, "<sealed>")
    else:
        cls = type(data)
        shown = msgspec.to_builtins(data)
        for attribute, text in [*((a, "<forgotten>") for a in gone), *((a, "<sealed>") for a in hidden)]:
            shown[cls.__struct_encode_fields__[cls.__struct_fields__.index(attribute)]] = text
    return _encode(shown).decode()


def _events(store: minies.EventStore, head: int, latest: int, bad: int | None) -> str:
    rows: list[list[Any]] = []
    problem = ""
    start = max(0, head - latest)
    # The latest events, and those around the first problem when it lies before them.
    reads = [(start, None)] + ([(max(0, bad - 6), min(11, start - max(0, bad - 6)))] if bad and bad <= start else [])
    try:
        for after, limit in reads:
            for r in store.read_all(after=after, limit=limit):
                stamp = r.timestamp.strftime("%Y-%m-%d %H:%M:%S")
                row = [r.position, stamp, visible(r.aggregate_id), r.version, visible(r.event_type)]
                rows.append([*row, visible(_payload(r))])
    except minies.MiniesError as e:
        problem = f"Reading the events stopped: {e}"
    rows.sort(key=lambda row: -row[0])  # the newest first
    data = json.dumps(rows, ensure_ascii=True, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    held = f"the latest {_n(head - start)} of {_n(head)} events" if start else f"all {_n(len(rows))} events"
    if len(rows) > head - start:
        held += f" (and the {_n(len(rows) - head + start)} around position {_n(bad or 0)}, the first problem)"
    note = f"This report holds {held}, newest first. Personal fields read as &lt;forgotten&gt; or &lt;sealed&gt;;"
    note += " invisible characters are written out (\\u202e)."
    if problem:
        note += f' <b class="problem">{_e(problem)}</b>'
    content = (
        '<div id="aggregate-view" hidden><h3></h3><p class="note"></p><a href="#events">Show all events</a></div>'
        '<div class="tools"><input id="search" type="search" placeholder="Search ids, types, data…"'
        ' aria-label="Search events"> <span id="page-status"></span>'
        ' <button id="prev" type="button">← Newer</button><button id="next" type="button">Older →</button></div>'
        '<table id="events-table"><thead><tr><th class=num>position</th><th>time (UTC)</th><th>aggregate</th>'
        "<th class=num>version</th><th>type</th><th>data</th></tr></thead><tbody></tbody></table>"
        f'<script type="application/json" id="minies-events">{data}</script>'
    )
    return _section("events", "Events", content, note)


_CSS: Final = """
:root{--ink:#1d2430;--muted:#5f6b7a;--line:#e3e7ee;--bg:#f5f7fa;--ok:#1f7a4d;--bad:#b3261e;--accent:#3b6ea8}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}header{background:#1d2430;color:#fff;padding:20px 32px}
header h1{margin:0;font-size:20px;font-weight:600}header p{margin:4px 0 0;color:#b8c2d0;font-size:12px}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;position:sticky;top:0;z-index:2}
nav a{color:var(--muted);text-decoration:none;margin-right:18px;font-size:13px}nav a:hover{color:var(--accent)}
main{max-width:1180px;margin:0 auto;padding:20px 32px 48px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 10px}h3{font-size:15px;margin:0 0 6px}
.note{color:var(--muted);font-size:12.5px;margin:0 0 10px}
.verdict{display:flex;gap:18px;align-items:flex-start;border-width:2px}.verdict.ok{border-color:var(--ok)}
.verdict.bad{border-color:var(--bad);background:#fdf3f2}.badge{flex:none;width:52px;height:52px;border-radius:50%;
color:#fff;font-size:28px;display:flex;align-items:center;justify-content:center}.ok .badge{background:var(--ok)}
.verdict.bad .badge{background:var(--bad)}.verdict h2{font-size:22px;margin:2px 0 4px}.verdict.ok h2{color:var(--ok)}
.verdict.bad h2{color:var(--bad)}.sentence{font-size:15px;margin:0 0 10px}
.checks{list-style:none;padding:0;margin:0 0 10px}
.checks li{padding:3px 0;display:flex;gap:4px}.checks li span{flex:none;width:180px;font-weight:600}
.checks li.ok span::before{content:"● ";color:var(--ok)}.checks li.bad span::before{content:"● ";color:var(--bad)}
.checks li.muted span::before{content:"○ ";color:var(--muted)}code{background:#eef1f5;padding:1px 5px;border-radius:4px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px 24px;margin:0}
.facts dt{color:var(--muted);font-size:12px}.facts dd{margin:0;font-weight:500;overflow-wrap:anywhere}
svg{width:100%;height:auto}.axis{stroke:#9aa5b4}.seal-mark{fill:#1d2430}
.legend i.seal-key{background:none;border-radius:0;height:0;border:6px solid transparent;border-top:10px solid #1d2430}
.tick{font-size:11px;fill:var(--muted)}rect.bar:hover{opacity:.8}
.legend{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13px}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px}
table{border-collapse:collapse;width:100%;font-size:13px}th{text-align:left;color:var(--muted);font-weight:600;
border-bottom:2px solid var(--line);padding:6px 8px}td{border-bottom:1px solid var(--line);padding:5px 8px;
vertical-align:top}.num{text-align:right;font-variant-numeric:tabular-nums}tbody tr:hover{background:#f8fafc}
#events-table td:nth-child(6){font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
#events-table td:nth-child(2){white-space:nowrap}
#events-table td:nth-child(3){overflow-wrap:anywhere;max-width:240px}a{color:var(--accent)}
.tools{display:flex;gap:10px;align-items:center;margin:0 0 10px}
#search{flex:1;padding:7px 10px;border:1px solid #c9d1dc;
border-radius:6px;font:inherit}#page-status{color:var(--muted);font-size:12.5px}button{padding:6px 12px;border:1px solid
#c9d1dc;background:#fff;border-radius:6px;font:inherit;cursor:pointer}button:disabled{opacity:.4;cursor:default}
#aggregate-view{background:#eef4fb;border-radius:8px;padding:10px 14px;margin:0 0 12px}.empty{color:var(--muted)}
.problem{color:var(--bad)}tr.hit td{background:#fdecea}
"""

_SCRIPT: Final = """
(function () {
  "use strict";
  var rows = JSON.parse(document.getElementById("minies-events").textContent);
  var PAGE = 50, shown = rows, page = 0, only = null;
  var body = document.querySelector("#events-table tbody"), search = document.getElementById("search");
  var status = document.getElementById("page-status"), prev = document.getElementById("prev");
  var next = document.getElementById("next"), view = document.getElementById("aggregate-view");
  function cell(tr, text, cls) {
    var td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls;
    tr.appendChild(td); return td;
  }
  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    body.replaceChildren();
    shown.slice(page * PAGE, page * PAGE + PAGE).forEach(function (r) {
      var tr = document.createElement("tr");
      cell(tr, r[0].toLocaleString("en-US"), "num"); cell(tr, r[1]);
      var link = document.createElement("a");
      link.href = "#aggregate=" + encodeURIComponent(r[2]); link.textContent = r[2];
      cell(tr, "").appendChild(link); cell(tr, String(r[3]), "num"); cell(tr, r[4]); cell(tr, r[5]);
      body.appendChild(tr);
    });
    status.textContent = shown.length ? "events " + (page * PAGE + 1).toLocaleString("en-US") + "\\u2013" +
      Math.min(shown.length, page * PAGE + PAGE).toLocaleString("en-US") + " of " +
      shown.length.toLocaleString("en-US") + " · page " + (page + 1) + " of " + pages : "no event matches";
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
  }
  function filter() {
    var q = search.value.trim().toLowerCase();
    shown = rows.filter(function (r) {
      return (only === null || r[2] === only) && (!q || r.join(" ").toLowerCase().indexOf(q) >= 0);
    });
    page = 0; draw();
  }
  function route() {
    var hash = location.hash;
    if (hash.indexOf("#position=") === 0) {
      var wanted = Number(hash.slice(10));
      only = null; view.hidden = true; search.value = ""; filter();
      var at = rows.findIndex(function (r) { return r[0] === wanted; });
      if (at >= 0) {
        page = Math.floor(at / PAGE); draw();
        var hit = body.children[at % PAGE]; hit.className = "hit"; hit.scrollIntoView({block: "center"});
      }
      return;
    }
    only = hash.indexOf("#aggregate=") === 0 ? decodeURIComponent(hash.slice(11)) : null;
    view.hidden = only === null;
    if (only !== null) {
      var mine = rows.filter(function (r) { return r[2] === only; });
      view.querySelector("h3").textContent = "History of aggregate " + only;
      view.querySelector("p").textContent = mine.length + " of its events are in this report (newest first)" +
        (mine.length ? ", up to version " + mine[0][3] + "." : ".");
      document.getElementById("events").scrollIntoView();
    }
    filter();
  }
  search.addEventListener("input", filter);
  prev.addEventListener("click", function () { page -= 1; draw(); });
  next.addEventListener("click", function () { page += 1; draw(); });
  window.addEventListener("hashchange", route);
  route();
})();
"""

_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline';
 script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1><p>{subtitle}</p></header>
<nav><a href="#verdict">Verdict</a><a href="#file">File</a><a href="#chart">Over time</a>
<a href="#types">Event types</a>
<a href="#largest">Largest aggregates</a><a href="#erasures">Erasures</a><a href="#seals">Seals</a>
<a href="#consumers">Read models</a>
<a href="#events">Events</a></nav>
<main>
{body}
</main><script>{script}</script></body></html>
"""
