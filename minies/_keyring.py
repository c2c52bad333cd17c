"""The keys of personal data: one store's view of ``minies_keys``.

A ``Keyring`` seals personal fields on append, opens them on read, and destroys a data
subject's keys when the store forgets it. Keys are cached until another connection commits.
With a key-encryption key, every data key is stored wrapped, so the file alone reveals no
personal field. What is sealed and how a token looks is ``_personal``'s; this room only holds
and uses the keys, through the backend's ``Connection``.
"""

from __future__ import annotations

import binascii
import os
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from minies import _personal
from minies._errors import PersonalDataError
from minies._personal import (
    _KEY_BYTES,
    _NONCE,
    _NONE,
    MARK,
    SNAPSHOTS,
    Absent,
    _available,
    _cryptography,
    _encode,
    _Missing,
    sealed_by,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from minies._backends import Connection


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
        if _personal.SEALED:  # (a log whose keys were all deleted must not read its sealed values as text)
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
        specs = _personal.SEALED
        nonces = os.urandom(_NONCE * sum(len(specs[type(e)].fields) for e in events if type(e) in specs))
        n = 0
        for k, event in enumerate(events):
            spec = _personal.SEALED.get(type(event))
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
        rows: list[Any] = conn.execute(
            conn.sql.KEYS_OF_SUBJECT, (subject, len(subject) + 1, subject + _ALSO)
        ).fetchall()
        keys = [key_id for (key_id,) in rows]
        if before is not None:
            keys = [k for k in keys if conn.execute(conn.sql.SEALS_BEFORE, (before, sealed_by(k))).get]
        self.destroy(conn, keys, now)
        return keys

    @staticmethod
    def fitting(conn: Connection, row: Sequence[Any]) -> tuple[Any, ...]:
        """A key row received from another store (a sync's), as this one keeps it: a subject
        has one live key per store, so a second live key (made for the same subject on another
        device, offline) is kept under ``subject + "\x1f" + key_id``, which ``forget`` finds too."""
        key_id, subject, key, created, forgotten = row
        if key is not None:
            live = conn.execute(conn.sql.KEY_OF_SUBJECT, (subject,)).fetchone()
            if live is not None and live[0] != key_id:
                subject = f"{subject}{_ALSO}{key_id}"
        return key_id, subject, key, created, forgotten

    def destroy(self, conn: Connection, keys: Sequence[str], now: str) -> None:
        """Destroy these keys (in the caller's write)."""
        for key_id in keys:
            conn.execute(conn.sql.FORGET_KEY, (now, key_id))
        self.clear()


_ALSO: Final = "\x1f"  # (a subject's other live keys: see fitting)


class _Unopenable:
    def __repr__(self) -> str:
        return "minies.UNOPENABLE"


UNOPENABLE: Final = _Unopenable()
"""In the key cache: a key this store cannot open (wrapped, and no key-encryption key; or no
``cryptography``)."""


def _event_at(position: int | str) -> str:
    return f"event at position {position}" if isinstance(position, int) else position


def _InvalidTag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag
