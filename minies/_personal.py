"""Personal data in an immutable log: fields sealed per data subject, forgotten by
destroying the subject's key (crypto-shredding).

A field declared ``Personal[T]`` is stored as a token, ``"minies-sealed:v1:<key id>:<base64>"``:
its JSON value encrypted with AES-256-GCM under its data subject's key, the event's id and
the field's name as associated data, so a token moved to another event or field does not
decrypt. Keys live in ``minies_keys``, outside the hash chain (the chain covers the tokens,
so ``verify`` needs no key). Forgetting a subject destroys its key: its tokens become noise,
and every read shows the field as never written (the class's default).
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple, NoReturn, TypeAlias, TypeVar

import msgspec

from minies._errors import PersonalDataError, SchemaError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


__all__ = ["Personal", "forgotten", "sealed"]

T = TypeVar("T")


class _Mark:
    def __repr__(self) -> str:
        return "minies.PERSONAL"


PERSONAL: Final = _Mark()
Personal: TypeAlias = Annotated[T, PERSONAL]
"""``email: minies.Personal[str] = ""``: the field is personal data of the event's data subject.

It is stored encrypted under the subject's key; after ``store.forget(subject)`` every read
gives the field's default instead (``minies.forgotten(event)`` names such fields)."""

PREFIX: Final = "minies-sealed:v1:"
MARK: Final = '"' + PREFIX
"""How a sealed value starts inside stored JSON text (what readers look for)."""
MARK_BYTES: Final = MARK.encode()
_NONCE: Final = 12
_NONE: Final[frozenset[str]] = frozenset()
SNAPSHOTS: Final = "minies.snapshots"
"""The subject of minies' own key, which seals snapshots when the keys are wrapped."""
_KEY_BYTES: Final = 32


class Spec(NamedTuple):
    """Which fields of an event class are personal, and whose they are."""

    fields: tuple[tuple[str, str], ...]
    """``(attribute, name as encoded)`` of each personal field."""
    subject: str | None
    """The attribute naming the data subject; None: the aggregate id."""


SEALED: dict[type[Any], Spec] = {}
"""Event classes with personal fields → their spec (filled when each class is defined; typed
loosely so that this module needs nothing from ``_events``, which imports it)."""


def may_declare(annotations: dict[str, Any]) -> bool:
    """Could a class with these raw annotations declare personal fields? (Such classes get
    weak references, which ``forgotten`` needs; a false yes only costs a pointer.)"""
    for value in annotations.values():
        if isinstance(value, str):
            if "Personal" in value or "Annotated" in value:
                return True
        elif _is_personal(value) or any(_is_personal(arg) for arg in typing.get_args(value)):
            return True
    return False


def _is_personal(hint: Any) -> bool:
    return typing.get_origin(hint) is Annotated and any(m is PERSONAL for m in hint.__metadata__)


def declare(cls: type[msgspec.Struct]) -> None:
    """Record ``cls``'s personal fields and check the declaration (when the class is defined).

    Raises:
        SchemaError: a personal field has no default, or ``data_subject`` names no plain field.
        PersonalDataError: the class declares personal data and ``cryptography`` is missing.
    """
    name = cls.__qualname__
    subject = getattr(cls, "data_subject", None)
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError:  # a forward reference not defined yet: fine for msgspec, which resolves it later
        if subject is None and not may_declare(getattr(cls, "__annotations__", {})):
            return
        raise SchemaError(
            f"{name} may declare personal fields, but its annotations cannot be resolved yet; define the "
            "types it refers to before it"
        ) from None
    personal = []
    for info in msgspec.structs.fields(cls):
        hint = hints.get(info.name)
        if hint is None or not _is_personal(hint):
            if any(_is_personal(arg) for arg in typing.get_args(hint)):
                raise SchemaError(
                    f"{name}.{info.name}: write Personal[X | None], not Personal[X] | None "
                    "(the whole field is personal)"
                )
            continue
        if info.default is msgspec.NODEFAULT and info.default_factory is msgspec.NODEFAULT:
            raise SchemaError(
                f"{name}.{info.name} is personal but has no default: give it one (e.g. '' or None), the value "
                "every read shows once its subject is forgotten"
            )
        personal.append((info.name, info.encode_name))
    if subject is not None:
        names = {info.name for info in msgspec.structs.fields(cls)}
        if not isinstance(subject, str) or subject not in names:
            raise SchemaError(f"{name}.data_subject = {subject!r} does not name a field of {name}")
        if any(attr == subject for attr, _ in personal):
            raise SchemaError(
                f"{name}.data_subject = {subject!r} names a personal field; the subject's id must be plain"
            )
        if not personal:
            raise SchemaError(f"{name}.data_subject is set, but no field is Personal[...]")
    if not personal:
        return
    _cryptography()
    if not cls.__struct_config__.weakref:
        raise SchemaError(
            f"{name} declares personal fields through an alias minies cannot see; use minies.Personal[...]"
        )
    SEALED[cls] = Spec(tuple(personal), subject)


def _cryptography() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise _Missing(
            'personal fields are encrypted with the cryptography package: pip install "minies[crypto]"'
        ) from None
    return AESGCM


def sealed_by(key_id: str) -> str:
    """The text every value sealed under ``key_id`` starts with."""
    return f"{PREFIX}{key_id}:"


def key_ids(text: str) -> set[str]:
    """The ids of the keys that sealed the values in a stored payload."""
    found = set()
    at = text.find(MARK)
    while at >= 0:
        start = at + len(MARK)
        found.add(text[start : text.index(":", start)])
        at = text.find(MARK, start)
    return found


def refuse_mark(cls_name: str) -> NoReturn:
    """Refuse a payload that already holds something shaped like a sealed value."""
    raise ValueError(
        f"{cls_name} holds a string starting with {PREFIX!r}, which minies reserves for sealed personal "
        "data; nothing was written"
    )


# ---------------------------------------------------------------------------- forgotten fields
_forgotten: dict[int, tuple[weakref.ref[Any], frozenset[str], frozenset[str]]] = {}

SEALED_TEXT: Final = "<sealed>"
"""What a payload read as a dict holds in place of a personal field this store cannot open."""


class Absent(frozenset[str]):
    """The personal fields of a stored payload that a read cannot show, by their stored names:
    the forgotten ones, and (``sealed``) the ones whose key this store cannot open."""

    sealed: frozenset[str] = _NONE


class ForgottenPayload(dict[str, Any]):
    """A payload read as a plain dict whose personal fields were forgotten (they are absent) or
    cannot be opened here (they hold ``"<sealed>"``)."""


def mark(value: Any, fields: frozenset[str], attribute: Callable[[type[Any], str], str | None]) -> Any:
    """Remember that ``value`` (an event, or a payload dict) had ``fields`` forgotten, or sealed
    (``Absent.sealed``); ``attribute`` maps a stored name to a Struct's attribute."""
    hidden = getattr(fields, "sealed", _NONE)
    fields = fields - hidden
    if isinstance(value, msgspec.Struct):
        cls = type(value)
        fields = frozenset(attribute(cls, n) or n for n in fields)
        hidden = frozenset(attribute(cls, n) or n for n in hidden)
    elif type(value) is dict:
        value = ForgottenPayload(value)
        for name in sorted(hidden):  # (the same order in every process)
            value[name] = SEALED_TEXT
    key = id(value)
    try:
        ref = weakref.ref(value, lambda _, key=key: _forgotten.pop(key, None))  # type: ignore[misc]
    except TypeError:
        return value
    _forgotten[key] = (ref, frozenset(fields), frozenset(hidden))
    return value


def forgotten(value: Any) -> frozenset[str]:
    """The fields of an event (or a ``Recorded``, or a payload dict) whose data subject was
    forgotten: they read as the class's default (absent, in a dict). Empty for anything else.

    ``minies.forgotten(record)`` tells a forgotten email from one that was really ``""``.
    """
    data = getattr(value, "data", value)  # a Recorded's payload; an event or dict as it is
    entry = _forgotten.get(id(data))
    return entry[1] if entry is not None and entry[0]() is data else frozenset()


def sealed(value: Any) -> frozenset[str]:
    """The personal fields of an event (or a ``Recorded``, or a payload dict) that this store
    cannot open: its keys are wrapped and it has no ``key_encryption_key``, or the
    ``cryptography`` package is missing. They read as the class's default (``"<sealed>"`` in a
    dict). Empty for anything else.
    """
    data = getattr(value, "data", value)
    entry = _forgotten.get(id(data))
    return entry[2] if entry is not None and entry[0]() is data else frozenset()


class _Missing(PersonalDataError):
    """The ``cryptography`` package is not installed."""


def _available() -> bool:
    try:
        _cryptography()
    except _Missing:
        return False
    return True


_encode: Callable[[Any], bytes] = msgspec.json.Encoder().encode
