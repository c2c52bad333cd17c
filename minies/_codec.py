"""Turning events into stored text and back: one reused encoder, per-type decoders.

Payloads and metadata are JSON text (not JSONB) so that any SQLite tool, however old, can
``json_extract`` them. Timestamps are ISO-8601 UTC text with microseconds and a ``Z``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from minies import _events, _personal
from minies._events import Event

_encoder = msgspec.json.Encoder()
encode = _encoder.encode
"""Encode a payload or metadata mapping to JSON bytes."""

_decode_any = msgspec.json.Decoder().decode


class _DecoderTable(dict[str, Callable[[Any], Any]]):
    def __missing__(self, event_type: str) -> Callable[[Any], Any]:
        cls = _events.registry.get(event_type)
        decoder = msgspec.json.Decoder(cls).decode if cls is not None else _decode_any
        self[event_type] = decoder
        return decoder


_decoders = _DecoderTable()
_decoders_generation = -1


def decoders() -> dict[str, Callable[[Any], Any]]:
    """``event_type`` → a function turning stored JSON into the event (or a dict).

    The table is shared and filled lazily; unknown types decode to plain dicts. Call this
    once per read, not per event: it refreshes the table when event classes were redefined.
    """
    global _decoders_generation
    if _decoders_generation != _events.generation:
        _decoders.clear()
        _decoders_generation = _events.generation
    return _decoders


def decode_payload(text: str) -> dict[str, Any]:
    """A stored payload as a plain dict (the form upcasters work on)."""
    value = _decode_any(text)
    if not isinstance(value, dict):
        raise msgspec.ValidationError(f"a payload must be a JSON object, got {text!r:.80}")
    return value


def decode_metadata(text: str) -> dict[str, Any]:
    """Decode a stored metadata column."""
    if text == "{}":
        return {}
    value = _decode_any(text)
    return value if isinstance(value, dict) else {"value": value}


def encode_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Merge the enclosing ``metadata_scope`` with ``metadata`` and encode it.

    Raises:
        TypeError: ``metadata`` is not a mapping with str keys, or holds a value JSON cannot carry.
    """
    scope = _events.current_metadata()
    if metadata is None:
        if not scope:
            return "{}"
        merged: Mapping[str, Any] = scope
    else:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}: {metadata!r:.80}")
        merged = {**scope, **metadata} if scope else metadata
    for key in merged:
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be str, got {key!r}")
    try:
        text = encode(merged)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"metadata cannot be stored as JSON: {e}") from None
    except RecursionError:
        raise ValueError("metadata is nested too deeply to be stored as JSON") from None
    if b"null" in text and _not_finite(merged):  # msgspec writes NaN and infinity as null
        raise ValueError("metadata holds NaN or infinity, which JSON cannot carry (it would be stored as null)")
    return text.decode()


def _not_finite(value: Any) -> bool:
    """Does ``value`` (metadata: plain JSON values) hold a float NaN or infinity, at any depth?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, msgspec.Struct):
            stack.extend(msgspec.structs.astuple(item))
    return False


def encode_event(event: Event) -> str:
    """Encode one event's payload, checked against its own class.

    msgspec does not check types when a Struct is built, so ``Deposited(amount="lots")``
    exists. What is stored must decode back, through the class, to an equal event: that one
    check covers every field type msgspec knows (nested Structs, containers, Optional,
    unions, enums, datetimes, ``Meta`` constraints) and what JSON cannot carry (NaN, int keys).

    Raises:
        TypeError: ``event`` is not an ``Event``, or a field holds a value of another type.
        ValueError: a field's value breaks a constraint or would not read back as itself.
    """
    cls = type(event)
    decode = _checks.get(cls)
    if decode is None:
        if not isinstance(event, Event) or cls is Event:
            raise TypeError(f"expected an instance of a minies.Event subclass, got {cls.__name__}: {event!r:.80}")
        decode = _checks[cls] = msgspec.json.Decoder(cls).decode
    try:
        data = encode(event)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{cls.__name__} cannot be stored as JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{cls.__name__} is nested too deeply to be stored as JSON") from None
    try:
        if decode(data) == event:
            if _personal.MARK_BYTES in data:
                _personal.refuse_mark(cls.__name__)
            return data.decode()
    except msgspec.ValidationError as e:
        raise _contradiction(event, str(e)) from None
    except RecursionError:
        raise ValueError(f"{cls.__name__} is nested too deeply to be stored as JSON") from None
    raise _contradiction(event, None)


_checks: dict[type[Event], Callable[[bytes], Any]] = {}
_AT: Final = " - at `$."
_MISSING: Final = "Object missing required field `"  # and no path: a top-level field left UNSET


def field_named(problem: str, cls: type[msgspec.Struct]) -> str | None:
    """The top-level field a msgspec ``ValidationError`` message points at (``- at `$.x...```,
    or ``missing required field `x```).

    ``x`` is the name as encoded (``rename=`` may have made it ``first-name``, or anything), and
    the path goes on with ``.``, ``[`` or the closing backtick, so the longest encoded name the
    path starts with wins."""
    at = problem.rfind(_AT)
    if at >= 0:
        path = problem[at + len(_AT) :]
    elif problem.startswith(_MISSING):
        path = problem[len(_MISSING) :]
    else:
        return None
    names = cls.__struct_encode_fields__
    found = [name for name in names if path.startswith(name) and path[len(name) : len(name) + 1] in (".", "[", "`")]
    return attribute(cls, max(found, key=len)) if found else None


def attribute(cls: type[msgspec.Struct], encoded: str) -> str | None:
    """The attribute a field's encoded name (which ``rename=`` may have changed) belongs to."""
    names = cls.__struct_encode_fields__
    return cls.__struct_fields__[names.index(encoded)] if encoded in names else None


_PLAIN_JSON: Final = (type(None), str, int, float, bool, dict, list)
_LOST: Final = "JSON has no NaN or infinity, its object keys are strings, and an untyped field reads back as plain JSON"


def _contradiction(event: Event, problem: str | None) -> TypeError | ValueError:
    """The error for an event whose values contradict its class, naming the field and value."""
    cls = type(event)
    decoded = None
    if problem is None:
        decoded = msgspec.json.decode(encode(event), type=cls)
        field = next((f for f in cls.__struct_fields__ if getattr(event, f) != getattr(decoded, f)), None)
    else:
        field = field_named(problem, cls)
    spec = _personal.SEALED.get(cls)  # an error message must never carry personal data: name the field only
    personal = {attr for attr, _ in spec.fields} if spec is not None else set()
    if field is None:
        shown = f"{cls.__name__}(…)" if personal else f"{event!r:.200}"
        return ValueError(f"{cls.__name__} would not read back as itself ({_LOST}): {shown}")
    value = getattr(event, field)
    where = f"{cls.__name__}.{field} " + ("(personal data, not shown)" if field in personal else f"= {value!r:.80}")
    if problem is not None and value is None:  # (a NaN is encoded as null too: that one reads back as None)
        return TypeError(
            f"{where} does not match the class: {problem.replace('got `null`', 'got None')}; nothing was written"
        )
    if problem is not None and "got `null`" not in problem:
        kind = TypeError if "`, got `" in problem else ValueError  # else: a constraint (msgspec.Meta)
        return kind(f"{where} does not match the class: {problem}; nothing was written")
    declared = type(getattr(decoded, field)) if decoded is not None else type(None)
    if declared is not type(value) and declared not in _PLAIN_JSON:  # e.g. a dict where a Struct is declared
        return TypeError(
            f"{where} is a {type(value).__name__} where the class declares {declared.__name__}; nothing was written"
        )
    return ValueError(f"{where} would not read back as itself ({_LOST}); nothing was written")


_second = -1
_second_text = ""


def now_text() -> str:
    """The current UTC time as stored in ``created_at``: ``2026-03-04T15:23:47.123456Z``."""
    global _second, _second_text
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if second != _second:  # strftime once a second, not once an append
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_second_text}.{micros:06d}Z"


class _Timestamps(dict[str, datetime]):
    """``created_at`` text → datetime, parsed once: every event of a batch shares one."""

    def __missing__(self, text: str) -> datetime:
        if len(self) > 4096:
            self.clear()
        value = self[text] = datetime.fromisoformat(text)
        return value


timestamps = _Timestamps()
parse_timestamp = timestamps.__getitem__


def new_event_ids(n: int) -> list[str]:
    """``n`` fresh UUIDv7 strings (RFC 9562): time-ordered, so inserts hit the index's end.

    Random uuid4 ids scatter inserts over the whole ``event_id`` index; time-ordered ids
    keep it append-only and roughly double insert speed on large files.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    prefix = f"{stamp[:8]}-{stamp[8:]}-7"
    r = os.urandom(10 * n).hex()
    ids = []
    # 48-bit milliseconds | version 7 | 12 random bits | variant 0b10 | 62 random bits
    for i in range(0, 20 * n, 20):
        variant = "89ab"[int(r[i + 3], 16) & 3]
        ids.append(f"{prefix}{r[i : i + 3]}-{variant}{r[i + 4 : i + 7]}-{r[i + 7 : i + 19]}")
    return ids
