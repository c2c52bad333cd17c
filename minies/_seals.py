"""Seals: the log's head signed with an Ed25519 key, recorded inside the chain.

A seal is a ``Sealed`` event of the stream ``SEALS``, appended right after the head it signs,
so the next seal covers it and a copy carries it. Its signature is over canonical bytes
(stable across versions; docs/how-to/audit-a-file.md repeats them for auditors)::

    signed = netstring("minies-seal-v1") || netstring(position) || netstring(head_hash)
             || netstring(sealed_at) || netstring(fingerprint) || netstring(note)

    position    the sealed head's position, decimal ASCII (0: an empty log)
    head_hash   its chain hash, 64 lowercase hex digits (64 zeros for an empty log)
    sealed_at   the time of sealing, as created_at is written (2026-03-04T15:23:47.123456Z)
    fingerprint SHA-256 of the signing key's raw 32-byte Ed25519 public key, lowercase hex
    signature   Ed25519 (RFC 8032, pure) over ``signed``, stored base64

Keys are standard PEM: PKCS#8 private keys, SubjectPublicKeyInfo public keys. Signing and
checking signatures need the ``cryptography`` package (``pip install "minies[crypto]"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgspec

from minies import _codec
from minies._append import Appender
from minies._audit import GENESIS, VerifyReport, _net
from minies._backends import Connection
from minies._errors import MiniesError
from minies._events import ANY, SEALS, Sealed
from minies._transactions import Transactions

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KeySource: TypeAlias = "Ed25519PrivateKey | Ed25519PublicKey | bytes | str | os.PathLike[str]"
"""A key: a ``cryptography`` Ed25519 key object, its PEM bytes, or the path of a PEM file."""

_PAGE: Final = 1000


def _require() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise MiniesError('seals are signed with the cryptography package: pip install "minies[crypto]"') from None


def _pem(source: object, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, what
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return f.read(), f"{what} {os.fspath(source)!r}"
    raise TypeError(f"{what} must be an Ed25519 key, PEM bytes or a PEM file's path, got {type(source).__name__}")


def private_key(source: KeySource) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, PEM (PKCS#8) bytes or a PEM file's path.

    Raises:
        MiniesError: ``cryptography`` is not installed.
        ValueError: not an unencrypted Ed25519 private key in PEM.
        OSError: the file cannot be read.
    """
    _require()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if isinstance(source, Ed25519PrivateKey):
        return source

    pem, where = _pem(source, "the seal key")
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where} is not an Ed25519 key (make one with `minies keygen NAME`)")
    return key


def public_key(source: KeySource) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM (SubjectPublicKeyInfo) bytes or a path.

    Raises:
        MiniesError: ``cryptography`` is not installed.
        ValueError: not an Ed25519 public key in PEM.
        OSError: the file cannot be read.
    """
    _require()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(source, Ed25519PublicKey):
        return source

    pem, where = _pem(source, "the trusted key")
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        hint = " (it is a private key: trust the .pub.pem)" if b"PRIVATE KEY" in pem else ""
        raise ValueError(f"{where} is not a PEM public key{hint}: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where} is not an Ed25519 key")
    return key


def public_keys(trust: object) -> list[Ed25519PublicKey]:
    """``verify``'s ``trust``: a non-empty list of public keys (see ``public_key``)."""
    if isinstance(trust, (str, bytes, os.PathLike)) or not isinstance(trust, Iterable):
        raise TypeError(f"trust must be a list of public keys, got {type(trust).__name__}")
    keys = [public_key(key) for key in trust]
    if not keys:
        raise ValueError("trust is empty: give the public keys whose seals you trust")
    return keys


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, lowercase hex."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def signed_bytes(position: int, head_hash: str, sealed_at: str, fingerprint: str, note: str) -> bytes:
    """The canonical bytes a seal's signature is over (see the module's docstring)."""
    return b"".join(_net(s) for s in ("minies-seal-v1", str(position), head_hash, sealed_at, fingerprint, note))


def keygen(name: str | os.PathLike[str]) -> tuple[str, str]:
    """Write a new Ed25519 key pair: ``NAME.pem`` (PKCS#8, file mode 0600) and ``NAME.pub.pem``.

    Returns:
        The two paths.

    Raises:
        MiniesError: ``cryptography`` is not installed.
        FileExistsError: either file exists already (nothing is overwritten).
    """
    _require()
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    base = os.fspath(name)
    private, public = f"{base}.pem", f"{base}.pub.pem"
    for path in (private, public):
        if os.path.exists(path):
            raise FileExistsError(f"{path!r} exists already; keygen never overwrites a key")
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(private, 0o600)  # (a umask may have taken the owner's bits too)
    with open(public, "xb") as f:
        f.write(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    return private, public


class Sealer:
    """One store's seals: ``seal``, the automatic ones (every N events, on close), and checking."""

    def __init__(
        self, tx: Transactions, appender: Appender, key: KeySource | None, every: int | None, readonly: bool
    ) -> None:
        """``key`` seals on close (and every ``every`` events); a read-only store never seals."""
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"seal_every must be an int >= 1 or None, got {every!r}")
        if every is not None and key is None:
            raise ValueError("seal_every needs a seal_key to sign with")
        self._tx = tx
        self._appender = appender
        self.key = None if key is None or readonly else private_key(key)
        every = None if readonly else every
        self._every = every
        self._sealing = False
        if every is not None:
            appender.appended = self._appended

    def seal(self, key: KeySource, note: str) -> Sealed:
        """``EventStore.seal``, its arguments checked."""
        signer = private_key(key)
        with self._tx.lock, self._tx.write(), self._tx.translate("cannot seal"):
            return self._seal(signer, note)

    def _seal(self, key: Ed25519PrivateKey, note: str) -> Sealed:
        """Sign the head and append the seal right after it. Inside the caller's write."""
        conn = self._tx.conn
        state: Any = conn.execute(conn.sql.APPEND_STATE, (SEALS,)).fetchone()  # (PostgreSQL: locks the head)
        head, digest = (int(state[2]), bytes(state[3])) if state and state[2] else (0, GENESIS)
        print_ = fingerprint(key.public_key())
        at = _codec.now_text()
        signature = key.sign(signed_bytes(head, digest.hex(), at, print_, note))
        event = Sealed(
            position=head,
            head_hash=digest.hex(),
            sealed_at=at,
            fingerprint=print_,
            note=note,
            signature=base64.b64encode(signature).decode(),
        )
        self._sealing = True
        try:
            self._appender.append(SEALS, SEALS, ANY, "{}", [event], [_codec.encode_event(event)], None)
        finally:
            self._sealing = False
        return event

    def _appended(self, before: int, after: int) -> None:
        """After each append (inside its write): seal when the head crossed a multiple of N."""
        assert self.key is not None and self._every is not None
        if not self._sealing and before // self._every != after // self._every:
            self._seal(self.key, f"every {self._every} events")

    def on_close(self) -> None:
        """Seal the head if events came after the last seal (the store has a ``seal_key``)."""
        if self.key is None:
            return
        with self._tx.lock, self._tx.translate("cannot seal"):
            conn = self._tx.open()
            head = int(conn.execute(conn.sql.HEAD_POSITION).get or 0)
            last = _last_seal(conn)
            if head > last:
                with self._tx.write():
                    self._seal(self.key, "on close")


def _last_seal(conn: Connection) -> int:
    version = conn.execute(conn.sql.AGGREGATE_VERSION, (SEALS,)).get
    if not version:
        return 0
    row: Any = conn.execute(conn.sql.READ_AGGREGATE, (SEALS, version - 1, version, 1)).fetchone()
    return int(row[0])


def seals(conn: Connection, upto: int) -> Iterable[tuple[int, str, str]]:
    """``(position, event_type, data)`` of each event of the seals stream at or below ``upto``."""
    after = 0
    while True:
        rows: list[Any] = conn.execute(conn.sql.READ_AGGREGATE, (SEALS, after, 1 << 62, _PAGE)).fetchall()
        for row in rows:
            if row[0] > upto:
                return
            yield int(row[0]), row[4], row[7]
        if len(rows) < _PAGE:
            return
        after = rows[-1][5]


def check(tx: Transactions, report: VerifyReport, trust: list[Ed25519PublicKey]) -> VerifyReport:
    """``verify(trust=...)``: every seal up to the verified head is by a trusted key, its
    signature verifies, and the hash it sealed is the chain's hash at its position."""
    if not report.ok:
        return report
    with tx.lock, tx.translate("cannot read the seals"):
        return _check(tx.open(), report, trust)


def _check(conn: Connection, report: VerifyReport, trust: list[Ed25519PublicKey]) -> VerifyReport:
    from cryptography.exceptions import InvalidSignature

    trusted = {fingerprint(key): key for key in trust}
    count, last_at, position, by, at = 0, 0, 0, "", ""

    def bad(where: int, why: str) -> VerifyReport:
        return msgspec.structs.replace(
            report,
            ok=False,
            first_bad_position=where,
            reason=f"the seal at position {where} {why}",
            seals=count,
            sealed_position=position,
            sealed_by=by,
            sealed_at=at,
            unsealed=report.head_position - last_at if count else report.head_position,
        )

    for where, event_type, data in seals(conn, report.head_position):
        try:
            seal = msgspec.json.decode(data, type=Sealed) if event_type == Sealed.event_type else None
        except msgspec.ValidationError:
            seal = None
        if seal is None:
            return bad(where, f"is not a seal ({event_type} with {data!r:.80}): the seals stream was written to")
        key = trusted.get(seal.fingerprint)
        if key is None:
            return bad(where, f"is by key {seal.fingerprint}, which is not trusted (give its public key to trust)")
        try:
            signed = signed_bytes(seal.position, seal.head_hash, seal.sealed_at, seal.fingerprint, seal.note)
            key.verify(base64.b64decode(seal.signature, validate=True), signed)
        except (InvalidSignature, binascii.Error, ValueError):
            return bad(where, f"does not verify with key {seal.fingerprint}: the seal was altered")
        stored = conn.execute(conn.sql.HASH_AT, (seal.position,)).get if 0 < seal.position < where else None
        actual = GENESIS.hex() if seal.position == 0 else bytes(stored).hex() if stored is not None else "-"
        if actual != seal.head_hash:
            return bad(
                where,
                f"signed hash {seal.head_hash[:16]}… at position {seal.position}, but the chain's is "
                f"{actual[:16]}…: the log was rewritten after it was sealed, or the seal was copied from another log",
            )
        count, last_at, position, by, at = count + 1, where, seal.position, seal.fingerprint, seal.sealed_at
    if not count:
        return msgspec.structs.replace(
            report,
            ok=False,
            unsealed=report.head_position,
            reason="the log holds no seal (seal it: `minies seal FILE --key KEY.pem`, or store.seal(key))",
        )
    return msgspec.structs.replace(
        report,
        seals=count,
        sealed_position=position,
        sealed_by=by,
        sealed_at=at,
        unsealed=report.head_position - last_at,
    )
