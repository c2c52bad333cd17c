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

import binascii
import os
import secrets
import typing
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple, NoReturn, TypeAlias, TypeVar

import msgspec

from minies._errors import PersonalDataError, SchemaError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from minies._backends import Connection
    from minies._events import Event

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


SEALED: dict[type[Event], Spec] = {}
"""Event classes with personal fields → their spec (filled when each class is defined)."""


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


def declare(cls: type[Event]) -> None:
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


# ---------------------------------------------------------------------------- the keys
class Keyring:
    """One store's view of ``minies_keys``: seals on append, opens on read, forgets.

    Keys are cached until another connection commits (the data version changes), a write is
    rolled back, or this store forgets a subject. With a key-encryption key, each data key is
    stored wrapped (AES-256-GCM under it), and a copy of the file alone reveals nothing.
    """

    def __init__(self, key_encryption_key: bytes | None, enabled: bool) -> None:
        if key_encryption_key is not None:
            if not isinstance(key_encryption_key, bytes) or len(key_encryption_key) != _KEY_BYTES:
                raise ValueError(
                    f"key_encryption_key must be {_KEY_BYTES} bytes (e.g. os.urandom(32), kept outside the file)"
                )
            self._wrapper: AESGCM | None = _cryptography()(key_encryption_key)
        else:
            self._wrapper = None
        self.enabled = enabled  # False for a file from before keys existed (schema < 4), read-only
        self._seen: int | None = None
        self._any: bool | None = None
        self._by_subject: dict[str, tuple[str, AESGCM]] = {}
        self._by_id: dict[str, AESGCM | _Unopenable | None] = {}

    def clear(self) -> None:
        self._seen = self._any = None
        self._by_subject.clear()
        self._by_id.clear()

    def _fresh(self, conn: Connection, commits: int | None = None) -> None:
        """Forget cached keys if another connection has committed (it may have forgotten one)."""
        version = conn.commit_counter() if commits is None else commits
        if version != self._seen:
            self.clear()
            self._seen = version

    def active(self, conn: Connection, commits: int | None = None) -> bool:
        """Must reads look for sealed values? (Yes if the file holds a key, or a class here
        declares personal fields.)"""
        if not self.enabled:
            return False
        self._fresh(conn, commits)
        if SEALED:  # (a log whose keys were all deleted must not read its sealed values as text)
            return True
        if self._any is None:
            self._any = bool(conn.execute(conn.sql.ANY_KEY).get)
        return self._any

    def check(self, conn: Connection) -> None:
        """Refuse a key-encryption key that does not open this file's keys (or one missing).

        Raises:
            PersonalDataError: the keys are wrapped under another key, or not wrapped at all.
        """
        if not self.enabled or self._wrapper is None:
            return
        row = conn.execute(conn.sql.SOME_KEY).fetchone()
        if row is not None:
            self._unwrap(row[0], bytes(row[1]), opening=True)

    # ------------------------------------------------------------------ keys
    def _unwrap(self, key_id: str, stored: bytes, opening: bool = False) -> AESGCM:
        aesgcm = _cryptography()
        wrapped = len(stored) != _KEY_BYTES
        if self._wrapper is None:
            if wrapped:
                raise PersonalDataError(
                    "this log's personal data keys are wrapped by a key-encryption key; open it with "
                    "key_encryption_key= to read or write personal fields"
                )
            return aesgcm(stored)
        if not wrapped:
            raise PersonalDataError(
                "this log's personal data keys are not wrapped, but a key_encryption_key was given; open it "
                "without one (keys cannot be wrapped in place)"
            )
        from cryptography.exceptions import InvalidTag

        try:
            return aesgcm(self._wrapper.decrypt(stored[:_NONCE], stored[_NONCE:], b"minies key " + key_id.encode()))
        except InvalidTag:
            raise PersonalDataError(
                "the key_encryption_key does not open this log's keys (a wrong key"
                + (", nothing was written)" if opening else ", or a damaged key row)")
            ) from None

    def _key_of(self, conn: Connection, subject: str, now: str) -> tuple[str, AESGCM]:
        found = self._by_subject.get(subject)
        if found is not None:
            return found
        row = conn.execute(conn.sql.KEY_OF_SUBJECT, (subject,)).fetchone()
        if row is not None:
            found = (row[0], self._unwrap(row[0], bytes(row[1])))
        else:
            if self._wrapper is None:  # never a plain key beside wrapped ones
                some = conn.execute(conn.sql.SOME_KEY).fetchone()
                if some is not None:
                    self._unwrap(some[0], bytes(some[1]))
            key_id = secrets.token_urlsafe(12)
            key = os.urandom(_KEY_BYTES)
            stored = key
            if self._wrapper is not None:
                nonce = os.urandom(_NONCE)
                stored = nonce + self._wrapper.encrypt(nonce, key, b"minies key " + key_id.encode())
            conn.execute(conn.sql.ADD_KEY, (key_id, subject, stored, now))
            found = (key_id, _cryptography()(key))
        self._by_subject[subject] = found
        self._by_id[found[0]] = found[1]
        return found

    def _key_by_id(self, conn: Connection, key_id: str, position: int | str) -> AESGCM | _Unopenable | None:
        row = conn.execute(conn.sql.KEY_BY_ID, (key_id,)).fetchone()
        if row is None:
            raise PersonalDataError(
                f"{_event_at(position)} is sealed with key {key_id!r}, which this log does not hold (damaged?)"
            )
        key: AESGCM | _Unopenable | None = None
        if row[0] is not None:
            stored = bytes(row[0])
            key = UNOPENABLE if self._wrapper is None and len(stored) != _KEY_BYTES else None
            if key is None:
                try:
                    key = self._unwrap(key_id, stored)
                except _Missing:  # an auditor without the package reads the plain fields
                    key = UNOPENABLE
        self._by_id[key_id] = key
        return key

    def remedy(self) -> str:
        """What opening the sealed fields this store cannot open would take."""
        if self._wrapper is None and _available():
            return "open the store with key_encryption_key="
        return 'install the cryptography package: pip install "minies[crypto]"'

    # ------------------------------------------------------------------ sealing
    def seal(
        self, conn: Connection, events: Sequence[Any], datas: list[str], ids: list[str], aggregate_id: str, now: str
    ) -> list[str]:
        """The stored payloads of ``events``: their personal fields sealed under their subjects' keys.

        Raises:
            ValueError: an event's data subject field is empty or not a str.
        """
        self._fresh(conn)
        sealed = list(datas)
        encode, b64, replace = _encode, binascii.b2a_base64, msgspec.structs.replace
        nonces = os.urandom(_NONCE * sum(len(SEALED[type(e)].fields) for e in events if type(e) in SEALED))
        n = 0
        for k, event in enumerate(events):
            spec = SEALED.get(type(event))
            if spec is None:
                continue
            subject = aggregate_id if spec.subject is None else getattr(event, spec.subject)
            if not isinstance(subject, str) or not subject:
                raise ValueError(
                    f"{type(event).__name__}.{spec.subject} = {subject!r} names the data subject: it must be a "
                    "non-empty str; nothing was written"
                )
            key_id, key = self._key_of(conn, subject, now)
            prefix = sealed_by(key_id)
            tokens = {}
            event_id = ids[k] + "/"
            for attr, name in spec.fields:
                nonce = nonces[n : n + _NONCE]
                n += _NONCE
                box = key.encrypt(nonce, encode(getattr(event, attr)), (event_id + name).encode())
                tokens[attr] = prefix + b64(nonce + box, newline=False).decode()
            sealed[k] = encode(replace(event, **tokens)).decode()
        return sealed

    def open(
        self, conn: Connection, text: str, event_id: str, position: int | str, strict: bool = False
    ) -> tuple[str, frozenset[str]]:
        """A stored payload with its sealed values opened, and the fields that were forgotten or
        that this store cannot open (``Absent``): both are taken out of the payload. (``position``
        names the event in messages: its position, or any text.)

        Raises:
            PersonalDataError: a sealed value does not decrypt (tampered or moved), or its key is
                missing; or, if ``strict``, this store cannot open it (its key is wrapped and the
                store has no key-encryption key, or ``cryptography`` is missing).
        """
        parts = []
        start = 0
        gone: list[str] = []
        hidden: list[str] = []
        find, rfind, keys, skip = text.find, text.rfind, self._by_id, len(MARK)
        a2b, aad = binascii.a2b_base64, event_id + "/"
        at = find(MARK)
        while at >= 0:
            end = find('"', at + skip)
            key_id, _, box = text[at + skip : end].partition(":")
            key = keys[key_id] if key_id in keys else self._key_by_id(conn, key_id, position)
            # "name":"minies-sealed:...": msgspec writes no spaces, and field names need no escapes
            name = text[rfind('"', 0, at - 2) + 1 : at - 2]
            if key is None:
                gone.append(name)
            elif isinstance(key, _Unopenable):
                hidden.append(name)
            else:
                try:
                    raw = a2b(box, strict_mode=True)
                    plain = key.decrypt(raw[:_NONCE], raw[_NONCE:], (aad + name).encode())
                except (binascii.Error, ValueError, _InvalidTag()) as e:
                    raise PersonalDataError(
                        f"{_event_at(position)}: the personal field {name!r} does not decrypt (altered, or "
                        f"moved from another event or field): {type(e).__name__}"
                    ) from None
                parts.append(text[start:at])
                parts.append(plain.decode())
            start = end + 1
            at = find(MARK, start)
        if hidden and strict:
            raise PersonalDataError(
                f"{_event_at(position)} holds personal fields this store cannot open ({', '.join(sorted(hidden))}); "
                + self.remedy()
            )
        if gone or hidden:
            payload = msgspec.json.decode(text)
            for name in gone + hidden:
                del payload[name]
            opened, _ = self.open(conn, _encode(payload).decode(), event_id, position)
            absent = Absent(gone + hidden)
            if hidden:
                absent.sealed = frozenset(hidden)
            return opened, absent
        if not parts:
            return text, _NONE
        parts.append(text[start:])
        return "".join(parts), _NONE

    # ------------------------------------------------------------------ snapshots
    @property
    def wraps(self) -> bool:
        """Is there a key-encryption key (so snapshots, which hold plaintext, are sealed too)?"""
        return self._wrapper is not None

    def seal_state(self, conn: Connection, state: str, where: str, now: str) -> str:
        """A snapshot's state sealed whole, as a JSON string, under minies' own snapshot key."""
        self._fresh(conn)
        key_id, key = self._key_of(conn, SNAPSHOTS, now)
        nonce = os.urandom(_NONCE)
        box = key.encrypt(nonce, state.encode(), ("snapshot/" + where).encode())
        return f'"{sealed_by(key_id)}{binascii.b2a_base64(nonce + box, newline=False).decode()}"'

    def open_state(self, conn: Connection, state: str, where: str) -> str | None:
        """A sealed snapshot state opened; None if it cannot be (no key-encryption key, its key
        destroyed, or altered): the snapshot is then not used, and the events are replayed."""
        self._fresh(conn)
        key_id, _, box = state[len(MARK) : -1].partition(":")
        try:
            key = self._by_id[key_id] if key_id in self._by_id else self._key_by_id(conn, key_id, 0)
            if key is None or isinstance(key, _Unopenable):
                return None
            raw = binascii.a2b_base64(box, strict_mode=True)
            return key.decrypt(raw[:_NONCE], raw[_NONCE:], ("snapshot/" + where).encode()).decode()
        except (PersonalDataError, binascii.Error, ValueError, _InvalidTag()):
            return None

    # ------------------------------------------------------------------ forgetting
    def forget(self, conn: Connection, subject: str, now: str, before: int | None = None) -> list[str]:
        """Destroy ``subject``'s live keys (in the caller's write); return their ids.

        ``before``: only the keys that sealed an event before this position (the keys a
        ``SubjectForgotten`` event at that position destroyed where it was written; a key
        made later, for data recorded after the erasure, stays).
        """
        rows: list[Any] = conn.execute(conn.sql.KEYS_OF_SUBJECT, (subject,)).fetchall()
        keys = [key_id for (key_id,) in rows]
        if before is not None:
            keys = [k for k in keys if conn.execute(conn.sql.SEALS_BEFORE, (before, sealed_by(k))).get]
        self.destroy(conn, keys, now)
        return keys

    def destroy(self, conn: Connection, keys: Sequence[str], now: str) -> None:
        """Destroy these keys (in the caller's write)."""
        for key_id in keys:
            conn.execute(conn.sql.FORGET_KEY, (now, key_id))
        self.clear()


class _Unopenable:
    def __repr__(self) -> str:
        return "minies.UNOPENABLE"


UNOPENABLE: Final = _Unopenable()
"""In the key cache: a key this store cannot open (wrapped, and no key-encryption key; or no
``cryptography``)."""


class _Missing(PersonalDataError):
    """The ``cryptography`` package is not installed."""


def _available() -> bool:
    try:
        _cryptography()
    except _Missing:
        return False
    return True


def _event_at(position: int | str) -> str:
    return f"event at position {position}" if isinstance(position, int) else position


def _InvalidTag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


_encode: Callable[[Any], bytes] = msgspec.json.Encoder().encode
