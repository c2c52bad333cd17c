"""Signed seals: the head signed with an Ed25519 key inside the chain, and ``verify(trust=...)``."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from domain import MoneyDeposited

import minies
from minies._cli import main
from minies._seals import signed_bytes

DOCS = Path(__file__).parent.parent / "docs"


def fill(store: minies.EventStore, n: int, aggregate: str = "a") -> None:
    for i in range(n):
        store.append(aggregate, [MoneyDeposited(amount=i + 1)], aggregate_type="Account")


def seal_positions(store: minies.EventStore) -> list[int]:
    return [r.position for r in store.read(minies.SEALS)]


def verify(path: str, *trust: object) -> minies.VerifyReport:
    with minies.EventStore(path, readonly=True) as store:
        return store.verify(trust=list(trust))


# The stdlib sqlite3 module, in a process of its own (two SQLite libraries in one process break
# each other's POSIX locks): drop the guards, run the statements, recompute every hash from the
# canonical encoding, and put the guards back as they were. The chain verifies again afterwards.
REWRITE = r"""
import hashlib, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
triggers = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'").fetchall()
for name, _ in triggers:
    con.execute(f"DROP TRIGGER {name}")
for statement in sys.argv[2:]:
    con.execute(statement)
net = lambda v: b"%d:%s," % (len(str(v).encode()), str(v).encode())
previous = bytes(32)
rows = con.execute(
    "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at,"
    " schema_version FROM events ORDER BY position").fetchall()
for *fields, schema_version in rows:
    if schema_version != 1:
        fields.append(schema_version)
    previous = hashlib.sha256(previous + b"".join(net(v) for v in fields)).digest()
    con.execute("UPDATE events SET hash = ? WHERE position = ?", (previous, fields[0]))
for _, sql in triggers:
    con.execute(sql)
con.commit()
"""


def rewrite(path: str, *statements: str) -> None:
    subprocess.run([sys.executable, "-c", REWRITE, path, *statements], check=True, timeout=60)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_sealed_log_verifies_with_the_trusted_key(location: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(location) as store:
        fill(store, 5)
        head = store.head()
        seal = store.seal(key, note="month end")
        assert (seal.position, seal.head_hash, seal.note) == (*head, "month end")
        fill(store, 2)
        report = store.verify(trust=[key.public_key()])
        assert report.ok, report.reason
        assert (report.seals, report.sealed_position, report.unsealed) == (1, 5, 2)
        assert report.sealed_by == seal.fingerprint and report.sealed_at == seal.sealed_at
        (record,) = store.read(minies.SEALS)
        assert record.position == 6 and record.data == seal  # inside the chain, right after the head it signs
        assert store.verify().ok and store.verify().seals == 0  # a plain verify is as before


def test_the_seal_signs_the_head_hash_at_its_position(db_path: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 3)
        head = store.head()
        seal = store.seal(key)
    assert (seal.position, seal.head_hash) == head
    key.public_key().verify(
        base64.b64decode(seal.signature),
        signed_bytes(seal.position, seal.head_hash, seal.sealed_at, seal.fingerprint, seal.note),
    )


def test_a_rewritten_log_with_a_recomputed_chain_fails_trust(db_path: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 5)
        store.seal(key)
        fill(store, 1)
    rewrite(db_path, "UPDATE events SET data = '{\"amount\":1000}' WHERE position = 2")
    with minies.EventStore(db_path, readonly=True) as store:
        assert store.verify().ok  # the chain alone cannot tell: it was recomputed
        assert [r.data.amount for r in store.read("a")][1] == 1000
        report = store.verify(trust=[key.public_key()])
    assert not report.ok and report.first_bad_position == 6
    assert "rewritten after it was sealed" in report.reason


def test_events_after_the_last_seal_are_reported_as_unsealed_and_a_truncation_shows(
    db_path: str, key: Ed25519PrivateKey
) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 4)
        store.seal(key)  # signs 4, at 5
        fill(store, 3)  # 6..8
        store.seal(key)  # signs 8, at 9
        fill(store, 2)  # 10, 11
    report = verify(db_path, key.public_key())
    assert report.ok and (report.seals, report.sealed_position, report.unsealed) == (2, 8, 2)
    rewrite(db_path, "DELETE FROM events WHERE position > 7")  # the tail cut, the last seal with it
    report = verify(db_path, key.public_key())
    assert report.ok and report.head_position == 7  # no seal vouched for what was cut...
    assert (report.seals, report.sealed_position, report.unsealed) == (1, 4, 2)  # ...and the report says so


def test_a_seal_copied_from_another_log_fails(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    other, mine = str(tmp_path / "other.db"), str(tmp_path / "mine.db")
    with minies.EventStore(other) as store:
        fill(store, 3, "b")
        store.seal(key)
        (copied,) = [r.data for r in store.read(minies.SEALS)]
    with minies.EventStore(mine) as store:
        fill(store, 3)
        store.append(minies.SEALS, [copied], aggregate_type=minies.SEALS)
    report = verify(mine, key.public_key())
    assert not report.ok and report.first_bad_position == 4
    assert "copied from another log" in report.reason
    assert verify(other, key.public_key()).ok


def test_a_forged_or_altered_seal_fails(db_path: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 3)
        seal = store.seal(key)
        forged = minies.Sealed(
            position=seal.position,
            head_hash=seal.head_hash,
            sealed_at=seal.sealed_at,
            fingerprint=seal.fingerprint,
            note="another note",
            signature=seal.signature,
        )
        store.append(minies.SEALS, [forged], aggregate_type=minies.SEALS)
    report = verify(db_path, key.public_key())
    assert not report.ok and report.first_bad_position == 5 and "the seal was altered" in report.reason
    assert report.seals == 1 and report.sealed_position == 3  # the good one before it


def test_an_untrusted_key_and_an_unsealed_log_fail(db_path: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 3)
    report = verify(db_path, key.public_key())
    assert not report.ok and report.first_bad_position is None and "no seal" in report.reason
    assert report.unsealed == 3
    with minies.EventStore(db_path) as store:
        seal = store.seal(key)
    stranger = Ed25519PrivateKey.generate()
    report = verify(db_path, stranger.public_key())
    assert not report.ok and report.first_bad_position == 4
    assert f"is by key {seal.fingerprint}, which is not trusted" in report.reason
    assert verify(db_path, stranger.public_key(), key.public_key()).ok  # trust is a list


def test_seal_every_seals_automatically_and_on_close(location: str, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(location, seal_key=key, seal_every=10) as store:
        fill(store, 30)
        seals = seal_positions(store)
        assert seals == [11, 21, 31]  # after each append that takes the head past a multiple of 10
        assert store.head()[0] == 33
        store.append("big", [MoneyDeposited(amount=1)] * 25, aggregate_type="Account")  # 34..58: one seal
        assert seal_positions(store)[3:] == [59]
        fill(store, 2)  # 60 (past 60: sealed at 61), 62
    with minies.EventStore(location, readonly=True) as store:
        assert seal_positions(store) == [11, 21, 31, 59, 61, 63]  # and one on close
        report = store.verify(trust=[key.public_key()])
    assert report.ok and (report.seals, report.sealed_position, report.unsealed) == (6, 62, 0)
    with minies.EventStore(location, seal_key=key) as store:
        pass  # nothing new since the last seal: no seal on close
    with minies.EventStore(location, readonly=True) as store:
        assert len(seal_positions(store)) == 6


def test_seals_survive_a_copy_file_to_file_and_to_postgresql(
    tmp_path: Path, pg_url: str, key: Ed25519PrivateKey
) -> None:
    source = str(tmp_path / "source.db")
    with minies.EventStore(source, seal_key=key, seal_every=4) as store:
        fill(store, 9)
    for target in (str(tmp_path / "target.db"), pg_url):
        minies.copy(source, target)
        with minies.EventStore(target, readonly=True) as store:
            report = store.verify(trust=[key.public_key()])
        assert report.ok, report.reason
        assert (report.seals, report.sealed_position, report.unsealed) == (
            verify(source, key.public_key()).seals,
            11,
            0,
        )


def test_keys_are_objects_pem_bytes_or_paths(tmp_path: Path, db_path: str) -> None:
    private, public = minies._seals.keygen(tmp_path / "k")
    with minies.EventStore(db_path) as store:
        fill(store, 1)
        store.seal(private)
        store.seal(Path(private).read_bytes())
        assert store.verify(trust=[public]).ok
        assert store.verify(trust=[Path(public).read_bytes()]).ok
        with pytest.raises(ValueError, match="is a private key"):
            store.verify(trust=[private])
        with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
            store.seal(Path(public).read_bytes())
        with pytest.raises(ValueError, match="trust is empty"):
            store.verify(trust=[])
        with pytest.raises(ValueError, match="seal_every needs a seal_key"):
            minies.EventStore(db_path, seal_every=3)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    old = os.umask(0)  # even under a permissive umask
    try:
        private, public = minies._seals.keygen(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert Path(private).read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert Path(public).read_text().startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    with pytest.raises(FileExistsError):
        minies._seals.keygen(tmp_path / "k")


def test_the_command_line_keygen_seal_verify(
    tmp_path: Path, db_path: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with minies.EventStore(db_path) as store:
        fill(store, 4)
    assert main(["keygen", "ops"]) == 0
    assert stat.S_IMODE(os.stat("ops.pem").st_mode) == 0o600
    assert main(["keygen", "stranger"]) == 0
    assert main(["verify", db_path, "--trust", "ops.pub.pem"]) == 1
    assert "the log holds no seal" in capsys.readouterr().out
    assert main(["seal", db_path, "--key", "ops.pem", "--note", "Q3 close"]) == 0
    assert re.search(r"^sealed position 4 [0-9a-f]{64} by key [0-9a-f]{64} at ", capsys.readouterr().out)
    assert main(["verify", db_path, "--trust", "ops.pub.pem"]) == 0
    out = capsys.readouterr().out
    assert "sealed: up to position 4 by key" in out and "unsealed" not in out
    with minies.EventStore(db_path) as store:
        fill(store, 2)
    assert main(["verify", db_path, "--trust", "ops.pub.pem"]) == 0
    assert "unsealed: 2 events after the last seal" in capsys.readouterr().out
    assert main(["verify", db_path, "--trust", "stranger.pub.pem"]) == 1
    assert "NOT OK: the seal at position 5 is by key" in capsys.readouterr().out
    assert main(["verify", db_path, "--trust", "stranger.pub.pem", "--trust", "ops.pub.pem"]) == 0
    rewrite(db_path, "UPDATE events SET data = '{\"amount\":1000}' WHERE position = 1")
    assert main(["verify", db_path]) == 0
    assert main(["verify", db_path, "--trust", "ops.pub.pem"]) == 1
    assert "rewritten after it was sealed" in capsys.readouterr().out
    assert main(["seal", str(tmp_path / "missing.db"), "--key", "ops.pem"]) == 2
    assert main(["verify", db_path, "--trust", "ops.pem"]) == 2
    assert "is a private key" in capsys.readouterr().err


def test_without_cryptography_sealing_says_what_to_install(
    db_path: str, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    with minies.EventStore(db_path) as store:
        fill(store, 2)
        store.seal(key)
        monkeypatch.setitem(sys.modules, "cryptography", None)
        for call in (lambda: store.seal(key), lambda: store.verify(trust=[key.public_key()])):
            with pytest.raises(minies.MiniesError, match=re.escape('pip install "minies[crypto]"')):
                call()
        assert store.verify().ok  # a plain verify needs no cryptography


def test_a_seal_checks_with_nothing_but_sqlite3_and_openssl(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """The recipe in docs/how-to/audit-a-file.md, run as written."""
    if not shutil.which("openssl") or not shutil.which("sqlite3"):
        pytest.skip("needs the openssl and sqlite3 command line tools")
    from cryptography.hazmat.primitives import serialization as s

    (recipe,) = [
        b for b in re.findall(r"```sh\n(.*?)```", (DOCS / "how-to/audit-a-file.md").read_text(), re.S) if "openssl" in b
    ]
    (tmp_path / "ops.pub.pem").write_bytes(
        key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    )
    with minies.EventStore(tmp_path / "shop.db") as store:
        fill(store, 3)
        store.seal(key, note="Q3 clôture")  # (a note's length is counted in bytes)
    done = subprocess.run(["bash", "-c", recipe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Signature Verified Successfully" in done.stdout, done.stdout + done.stderr
    (tmp_path / "ops.pub.pem").write_bytes(
        Ed25519PrivateKey.generate().public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    )
    done = subprocess.run(["bash", "-c", recipe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Signature Verification Failure" in done.stdout + done.stderr


def test_an_empty_log_seals_as_position_0_and_a_rolled_back_seal_is_not_there(
    location: str, key: Ed25519PrivateKey
) -> None:
    with minies.EventStore(location) as store:
        seal = store.seal(key)
        assert (seal.position, seal.head_hash) == (0, "0" * 64)
        assert store.verify(trust=[key.public_key()]).ok
        with pytest.raises(RuntimeError), store.transaction():
            fill(store, 2)
            store.seal(key)
            raise RuntimeError
        assert seal_positions(store) == [1] and store.head()[0] == 1


def test_the_command_line_seals_a_postgresql_log(pg_url: str, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with minies.EventStore(pg_url) as store:
        fill(store, 3)
    private, public = minies._seals.keygen(tmp_path / "ops")
    assert main(["seal", pg_url, "--key", private]) == 0
    assert main(["verify", pg_url, "--trust", public]) == 0
    assert main(["verify", pg_url, "--trust", public, "--trust", public]) == 0


def test_the_readme_s_auditor_walkthrough_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (walkthrough,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "minies keygen" in b]
    subprocess.run([sys.executable, "-m", "minies", "demo", "shop.db"], cwd=tmp_path, check=True, capture_output=True)
    said = {}
    for line in walkthrough.splitlines():
        script = f'minies() {{ "{sys.executable}" -m minies "$@"; }}\n{line}'
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        said[line.split()[1]] = done.stdout
    assert re.search(r"^sealed: up to position \d+ by key [0-9a-f]{64}", said["verify"], re.M), said["verify"]
    assert stat.S_IMODE(os.stat(tmp_path / "ops.pem").st_mode) == 0o600 and (tmp_path / "audit.html").exists()
