"""Turning events into stored text and back: one reused encoder, per-type decoders.

Payloads and metadata are JSON text (not JSONB) so that any SQLite tool, however old, can
``json_extract`` them. Timestamps are ISO-8601 UTC text with microseconds and a ``Z``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from minies import _events
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


def from_payload(event_type: str, payload: dict[str, Any]) -> Any:
    """A payload dict as the registered class's event (or the dict if there is no class)."""
    cls = _events.registry.get(event_type)
    return payload if cls is None else msgspec.convert(payload, cls)


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
        return encode(merged).decode()
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"metadata cannot be stored as JSON: {e}") from None
    except RecursionError:
        raise ValueError("metadata is nested too deeply to be stored as JSON") from None


def encode_event(event: Event) -> str:
    """Encode one event's payload.

    Raises:
        TypeError: ``event`` is not an ``Event`` or holds a value JSON cannot carry.
    """
    if not isinstance(event, Event):
        raise TypeError(f"expected a minies.Event instance, got {type(event).__name__}: {event!r:.80}")
    try:
        data = encode(event)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{type(event).__name__} cannot be stored as JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{type(event).__name__} is nested too deeply to be stored as JSON") from None
    check = _float_checks.get(type(event)) or _float_check(type(event))
    if check is not _NO_FLOATS and not _reads_back(check, data, event):
        raise ValueError(
            f"{type(event).__name__} would not read back as itself (JSON has no NaN or infinity, its object "
            f"keys are strings, and an untyped field reads back as plain JSON): {event!r:.200}"
        )
    return data.decode()


# JSON has no NaN or infinity: msgspec writes null, which would not read back as the event.
# Classes that may hold a float anywhere (a float field, or an untyped one: "{}" in the
# schema) are checked by decoding what was encoded.
_NO_FLOATS: Final[Callable[[bytes], Any]] = bytes
_float_checks: dict[type[Event], Callable[[bytes], Any]] = {}


def _reads_back(decode: Callable[[bytes], Any], data: bytes, event: Event) -> bool:
    try:
        return bool(decode(data) == event)
    except (msgspec.ValidationError, RecursionError):
        return False


def _float_check(cls: type[Event]) -> Callable[[bytes], Any]:
    try:
        schema = msgspec.json.encode(msgspec.json.schema(cls))
    except Exception:  # a type msgspec cannot describe: check every time
        schema = b"{}"
    has_floats = b'"number"' in schema or b"{}" in schema
    check = msgspec.json.Decoder(cls).decode if has_floats else _NO_FLOATS
    _float_checks[cls] = check
    return check


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
