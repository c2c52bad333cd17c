"""Events, their registry, the recorded envelope, and the ``ANY`` sentinel."""

from __future__ import annotations

import contextlib
import contextvars
import enum
import re
import typing
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, ClassVar, Final, Literal, dataclass_transform

import msgspec

from minies import _personal
from minies._errors import SchemaError

__all__ = ["ANY", "Event", "EventRejected", "Recorded", "Sealed", "SubjectForgotten", "metadata_scope", "registry"]

_EVENT_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,199}")

registry: dict[str, type[Event]] = {}
"""``event_type`` → the class that decodes it. Mutated only by ``Event`` subclassing."""

generation = 0
"""Bumped on every registration, so caches keyed on the registry know to refresh."""


class _EventMeta(msgspec.StructMeta):
    # msgspec applies frozen/kw_only to the class that sets them, not to its subclasses;
    # every event class must be both, so they are the default for each one.
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any) -> Any:
        options.setdefault("frozen", True)
        if _personal.may_declare(namespace.get("__annotations__", {})):
            options.setdefault("weakref", True)  # minies.forgotten(event) keeps a weak reference
        options.setdefault("kw_only", True)
        if options.get("array_like"):
            raise SchemaError(
                f"{namespace['__qualname__']} is array_like, but a payload is stored as a JSON object (so that "
                "json_extract finds its fields by name, and raw reads and upcasters get a dict): drop array_like=True"
            )
        cls = super().__new__(mcls, name, bases, namespace, **options)
        if any(isinstance(base, _EventMeta) for base in bases):  # every subclass of Event
            _register(typing.cast("type[Event]", cls))
        return cls


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(msgspec.field,))
class Event(msgspec.Struct, frozen=True, kw_only=True, metaclass=_EventMeta):
    """A domain event: a frozen, keyword-only msgspec Struct, registered by ``event_type``.

    Subclass it with the event's fields. ``event_type`` defaults to the class name; set the
    ClassVar to keep a stable stored name when you rename the class.

    Raises:
        SchemaError: another class already claims the same ``event_type``.
    """

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    """Bump it when the payload's shape changes, and register an upcaster for the old one."""
    data_subject: ClassVar[str | None] = None
    """The field holding the id of the person whose ``Personal[...]`` fields these are (None:
    the aggregate id)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__


def _register(cls: type[Event]) -> None:
    global generation
    name = cls.event_type
    if not isinstance(name, str) or not _EVENT_TYPE.fullmatch(name):
        raise SchemaError(
            f"{cls.__qualname__}.event_type = {name!r} is not a valid event type; use letters, "
            "digits and _ . : - (at most 200 characters, not starting with a digit)"
        )
    version = cls.schema_version
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"{cls.__qualname__}.schema_version must be an int >= 1, got {version!r}")
    old = registry.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise SchemaError(
            f"event type {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__module__}.{cls.__qualname__} another event_type"
        )
    _personal.declare(cls)
    registry[name] = cls
    generation += 1


class SubjectForgotten(Event, frozen=True, kw_only=True):
    """Recorded by ``store.forget``: a data subject's key was destroyed (no personal data in it).

    It is appended to the stream ``ERASURES``; who asked goes in its metadata (``user_id``).
    """

    event_type: ClassVar[str] = "minies.SubjectForgotten"
    subject: str
    reason: str = ""


ERASURES: Final = "minies.erasures"
"""The stream (aggregate id and type) of ``SubjectForgotten`` events."""


class EventRejected(Event, frozen=True, kw_only=True):
    """Recorded by a hub for a device's event it did not place (see ``EventStore.sync``).

    It carries the whole event as the device wrote it, so nothing is dropped silently: the
    device learns it on its next sync, and ``verify(origins=True)`` proves the device's
    sequence complete with it. It is appended to the stream ``REJECTIONS``.

    Attributes:
        device: the device that wrote the event.
        seq: the event's number in that device's sequence (its origin position).
        reason: why the hub did not place it (for a conflict: the version it found).
        event_id: the rejected event's id, as written (the other fields describe it too).
        aggregate_id: its aggregate.
        aggregate_type: its aggregate's type.
        rejected_type: its event type.
        rejected_schema: its schema version.
        data: its payload, as stored JSON text.
        metadata: its metadata, as stored JSON text.
        created_at: when the device wrote it.
        expected: the version the device expected the aggregate at (None: any).
        base: the last hub position the device had seen when it wrote the event.
        origin: the event's origin hash (hex), chained on the device's previous one.
    """

    event_type: ClassVar[str] = "minies.EventRejected"
    device: str
    seq: int
    reason: str
    event_id: str
    aggregate_id: str
    aggregate_type: str
    rejected_type: str
    rejected_schema: int
    data: str
    metadata: str
    created_at: str
    expected: int | None
    base: int
    origin: str


REJECTIONS: Final = "minies.rejections"
"""The stream (aggregate id and type) of ``EventRejected`` events."""


class Sealed(Event, frozen=True, kw_only=True):
    """A seal: the log's head signed with an Ed25519 key (``store.seal``; docs/how-to/audit-a-file.md).

    It is appended to the stream ``SEALS``, right after the head it signs, so the next seal
    covers it. ``signature`` (Ed25519, base64) is over canonical bytes made of the other fields
    (docs/how-to/audit-a-file.md). ``fingerprint`` is the SHA-256 of the raw public key, hex.
    """

    event_type: ClassVar[str] = "minies.Sealed"
    position: int
    head_hash: str
    sealed_at: str
    fingerprint: str
    note: str = ""
    signature: str = ""


SEALS: Final = "minies.seals"
"""The stream (aggregate id and type) of ``Sealed`` events."""


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: the payload plus its envelope. Immutable.

    Attributes:
        position: global order in the file; starts at 1, gap-free, never reused.
        event_id: the event's UUID string.
        aggregate_id: the aggregate (stream) the event belongs to.
        aggregate_type: the aggregate's type name.
        event_type: the registered name of the payload's type.
        version: the event's number within its aggregate; starts at 1, no gaps.
        timestamp: when the event was committed (timezone-aware, UTC).
        data: the ``Event`` instance, or a ``dict`` if no class is registered for the type.
        metadata: who and why: ``user_id``, ``correlation_id``, ``causation_id``, anything else.
    """

    position: int
    event_id: str
    aggregate_id: str
    aggregate_type: str
    event_type: str
    version: int
    timestamp: datetime
    data: Any
    metadata: dict[str, Any]


def type_names(types: str | type[Event] | Iterable[str | type[Event]]) -> frozenset[str]:
    """Event type names from names, Event classes, or a mix of both (one of them alone too)."""
    if isinstance(types, (str, type)):
        types = [types]
    return frozenset(t if isinstance(t, str) else t.event_type for t in types)


class _Any(enum.Enum):
    ANY = "ANY"

    def __repr__(self) -> str:
        return "minies.ANY"


ANY: Final = _Any.ANY
"""``expected_version=ANY``: append whatever version the aggregate is at."""

AnyVersion = Literal[_Any.ANY]


# The default is shared, and never mutated: a scope sets a new dict.
_scope: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("minies_metadata", default={})  # noqa: B039


@contextlib.contextmanager
def metadata_scope(**metadata: Any) -> Iterator[dict[str, Any]]:
    """Add metadata to every event appended inside the block (this thread/task only).

    Typical keys are ``correlation_id``, ``causation_id`` and ``user_id``; scopes nest, the
    inner value winning, and ``metadata=`` passed to ``append``/``save`` wins over both:

        with minies.metadata_scope(correlation_id=request.id, user_id=user.id):
            store.save(order)

    Yields:
        The merged metadata now in force.
    """
    merged = {**_scope.get(), **metadata}
    token = _scope.set(merged)
    try:
        yield merged
    finally:
        _scope.reset(token)


def current_metadata() -> dict[str, Any]:
    """The metadata set by the enclosing ``metadata_scope`` blocks (shared; do not mutate)."""
    return _scope.get()
