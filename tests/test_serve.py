"""``minies serve``: a real server process on loopback, real device files syncing through it,
and every refusal (no token, a wrong, revoked or borrowed one, a forbidden type, a damaged or
oversized body) answered clearly with nothing written on the hub."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import minies
from minies import _wire
from minies._serve import add_device, authorize, devices, revoke_device


class ServeOrdered(minies.Event):
    sku: str


class ServeNoted(minies.Event):
    text: str


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minies", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@contextmanager
def served(hub: str, folder: Path, *options: str) -> Iterator[str]:
    """A ``minies serve`` process on a free port of 127.0.0.1; its URL once /health answers."""
    log = folder / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "minies", "serve", hub, "--port", "0", *options],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        url = ""
        for _ in range(600):
            said = log.read_text()
            if " at http" in said:
                url = said.split(" at ", 1)[1].split()[0]
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                        assert answer.read() == b"ok\n"
                    break
                except urllib.error.URLError:
                    pass
            assert server.poll() is None, said
            time.sleep(0.02)
        else:
            pytest.fail(f"minies serve did not come up: {log.read_text()}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = log.read_text()
    assert "Traceback" not in said, said
    assert server.returncode == 0, said


def head(hub: str) -> tuple[int, str]:
    with minies.EventStore(hub, readonly=True) as store:
        return store.head()


def post(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/vnd.minies.sync", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/sync", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def write(path: Path, device: str, aggregate_type: str, count: int, *, start: int = 0) -> None:
    with minies.EventStore(path, device=device) as store:
        for k in range(start, start + count):
            store.append(
                f"{device}-{k}", [ServeOrdered(sku=f"sku-{k}")], aggregate_type=aggregate_type, expected_version=0
            )


def test_devices_sync_through_a_served_hub_and_every_log_verifies(tmp_path: Path) -> None:
    hub = str(tmp_path / "hub.db")
    with minies.EventStore(hub) as store:
        phone_token = add_device(store, "phone", ["Order*"])
    added = cli("device", "add", hub, "laptop", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    laptop_token = added.stdout.strip()
    assert len(laptop_token) >= 40 and "registered device 'laptop'" in added.stderr
    assert phone_token.startswith("minies_") and laptop_token.startswith("minies_")  # never "-": not an option
    write(tmp_path / "phone.db", "phone", "Order", 3)
    write(tmp_path / "laptop.db", "laptop", "Note", 2)
    with served(hub, tmp_path) as url:
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            report = phone.sync(url, token=phone_token)
            assert (report.pushed, report.placed, report.pulled, report.pending) == (3, 3, 3, 0)
        synced = cli("sync", "laptop.db", url, "--token", laptop_token, cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        assert "pushed 2 (2 placed, 0 rejected), pulled 5" in synced.stdout
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            assert phone.sync(url, token=phone_token).pulled == 2  # the laptop's
        with_env = subprocess.run(
            [sys.executable, "-m", "minies", "sync", "laptop.db", url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={"MINIES_TOKEN": laptop_token, "PATH": "/usr/bin:/bin"},
        )
        assert with_env.returncode == 0, with_env.stderr
        served_head = head(hub)
    assert served_head[0] == 5
    expect = f"{served_head[0]} {served_head[1]}"
    for name in ("phone.db", "laptop.db"):
        with minies.EventStore(tmp_path / name) as device:
            assert device.head() == served_head and device.pending() == []
            assert device.verify(expect_head=expect).ok
            report = device.verify(origins=True)
            assert report.ok, report.reason
    with minies.EventStore(hub) as store:
        report = store.verify(origins=True, expect_head=expect)
        assert report.ok, report.reason
        assert [(r.device, r.push, r.revoked_at) for r in devices(store)] == [
            ("laptop", ("*",), None),
            ("phone", ("Order*",), None),
        ]
        raw = " ".join(str(v) for row in store.query("SELECT * FROM minies_devices") for v in row)
        assert phone_token not in raw and laptop_token not in raw  # only their SHA-256


def test_devices_syncing_at_once_are_settled_one_at_a_time(tmp_path: Path) -> None:
    """Four devices write and sync at the same time, five rounds each, on a shared stream too:
    every event is settled once, and every device ends with the hub's log."""
    hub = str(tmp_path / "hub.db")
    with minies.EventStore(hub) as store:
        tokens = {f"till-{k}": add_device(store, f"till-{k}") for k in range(4)}
    errors: list[BaseException] = []

    def till(device: str, url: str) -> None:
        try:
            with minies.EventStore(tmp_path / f"{device}.db", device=device) as store:
                for round_ in range(5):
                    store.append(
                        f"{device}-{round_}", [ServeOrdered(sku="a"), ServeOrdered(sku="b")], aggregate_type="Order"
                    )
                    store.append("shared", [ServeNoted(text=f"{device} {round_}")], aggregate_type="Note")
                    store.sync(url, token=tokens[device], conflicts={"Note": "accept"})
        except BaseException as e:
            errors.append(e)

    with served(hub, tmp_path) as url:
        threads = [threading.Thread(target=till, args=(device, url)) for device in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        for device, token in tokens.items():
            with minies.EventStore(tmp_path / f"{device}.db") as store:
                store.sync(url, token=token)
        final = head(hub)
    assert final[0] == 4 * 5 * 3
    for device in tokens:
        with minies.EventStore(tmp_path / f"{device}.db") as store:
            assert store.head() == final and store.pending() == []
            assert store.verify(origins=True).ok
    with minies.EventStore(hub) as store:
        assert store.verify(origins=True).ok and store.rejections() == []
        assert len(list(store.read("shared"))) == 20


def test_every_refusal_is_clear_and_writes_nothing_on_the_hub(tmp_path: Path) -> None:
    hub = str(tmp_path / "hub.db")
    with minies.EventStore(hub) as store:
        token = add_device(store, "phone", ["Order*", "Cart"])
        tablet_token = add_device(store, "tablet")
    write(tmp_path / "phone.db", "phone", "Order", 2)
    write(tmp_path / "tablet.db", "tablet", "Order", 1)
    with served(hub, tmp_path) as url:
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            phone.sync(url, token=token)
        before = head(hub)
        write(tmp_path / "phone.db", "phone", "Order", 1, start=10)
        write(tmp_path / "phone.db", "phone", "Invoice", 1, start=20)  # not Order*, not Cart
        cases = [
            (None, "(401): no token"),
            ("not-a-token", "(401): unknown token"),
            (tablet_token, "(403): this token belongs to device 'tablet', and the push comes from device 'phone'"),
            (token, "(403): device 'phone' may not write Invoice (it may push Order*, Cart); nothing was written"),
        ]
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            for given, said in cases:
                with pytest.raises(minies.SyncError, match="refused the sync") as refused:
                    phone.sync(url, token=given)
                assert said in str(refused.value), (said, str(refused.value))
                assert head(hub) == before and len(phone.pending()) == 2
        revoked = cli("device", "revoke", hub, "tablet", cwd=tmp_path)  # while the server runs
        assert revoked.returncode == 0 and "revoked device 'tablet'" in revoked.stdout, revoked.stderr
        synced = cli("sync", "tablet.db", url, "--token", tablet_token, cwd=tmp_path)
        assert synced.returncode == 2 and synced.stdout == ""
        assert synced.stderr.startswith("minies: error: the hub at") and synced.stderr.count("\n") == 1
        assert "(401): the token of device 'tablet' was revoked at" in synced.stderr
        assert head(hub) == before
        unknown = cli("device", "revoke", hub, "nobody", cwd=tmp_path)
        assert unknown.returncode == 2 and "no device 'nobody'" in unknown.stderr
        again = cli("device", "add", hub, "phone", cwd=tmp_path)
        assert again.returncode == 2 and "registered" in again.stderr and "revoke it first" in again.stderr
        listed = cli("device", "list", hub, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        phone_line, tablet_line = listed.stdout.splitlines()[1:]
        assert phone_line.startswith("phone ") and phone_line.endswith("Order*, Cart") and " - " in phone_line
        assert tablet_line.startswith("tablet ") and " - " not in tablet_line
        # A new token for the tablet: the old one stays refused.
        renewed = cli("device", "add", hub, "tablet", cwd=tmp_path)
        assert renewed.returncode == 0, renewed.stderr
        status, body = post(url, b"", tablet_token)
        assert status == 401 and b"unknown token" in body
        synced = cli("sync", "tablet.db", url, "--token", renewed.stdout.strip(), cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
    with minies.EventStore(hub) as store:
        assert store.verify(origins=True).ok
        assert [r.device for r in store.rejections()] == []


def test_a_replayed_push_places_nothing_twice_and_a_bad_body_is_refused(tmp_path: Path) -> None:
    hub = str(tmp_path / "hub.db")
    with minies.EventStore(hub) as store:
        token = add_device(store, "phone")
    write(tmp_path / "phone.db", "phone", "Order", 3)
    exported = cli("sync", "export", "phone.db", "-o", "push.bundle", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    body = (tmp_path / "push.bundle").read_bytes()
    with served(hub, tmp_path, "--max-body", str(64 * 1024)) as url:
        status, answer = post(url, body, token)
        assert status == 200, answer
        reply = _wire.decode(answer, _wire.Reply, "the reply")
        assert (reply.placed, reply.rejected, reply.head, len(reply.rows)) == (3, 0, 3, 3)
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            assert phone.sync(url, token=token).pulled == 3
            write(tmp_path / "phone.db", "phone", "Order", 1, start=3)
            assert phone.sync(url, token=token).placed == 1
        placed = head(hub)
        for _ in range(2):  # the old push again, by hand: settled already, so nothing is placed
            status, answer = post(url, body, token)
            assert status == 200, answer
            again = _wire.decode(answer, _wire.Reply, "the reply")
            assert (again.placed, again.rejected, again.acknowledged, again.head) == (0, 0, 4, 4)
        assert head(hub) == placed
        refusals = [
            (body[: len(body) // 2], 400, b"is damaged or cut short"),
            (b"", 400, b"is not a minies sync bundle"),
            (b"GET / HTTP/1.1", 400, b"is not a minies sync bundle"),
            (_wire.encode(reply), 400, b"is a hub's reply, not what this side takes"),
            (_wire.MAGIC + b"\x00" * (80 * 1024), 413, b"more than this hub takes (65,536)"),
        ]
        for sent, status_wanted, said in refusals:
            status, answer = post(url, sent, token)
            assert (status, said in answer) == (status_wanted, True), (status, answer)
            assert answer.count(b"\n") == 1 and b"Traceback" not in answer
        assert head(hub) == placed
        for path, method, status_wanted in [("/sync", "GET", 405), ("/health", "POST", 405), ("/", "GET", 404)]:
            request = urllib.request.Request(f"{url}{path}", method=method, data=b"" if method == "POST" else None)
            with pytest.raises(urllib.error.HTTPError) as answered:
                urllib.request.urlopen(request, timeout=10)
            answered.value.close()
            assert answered.value.code == status_wanted


@pytest.mark.parametrize("role", ["pg_url", "pg_app_url"])
def test_a_postgresql_hub_served_over_http(role: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """As the schema's owner, and as the role ``minies grant --role app`` set up."""
    pg_url = str(request.getfixturevalue(role))
    added = cli("device", "add", pg_url, "phone", "--push", "Order", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    write(tmp_path / "phone.db", "phone", "Order", 3)
    with served(pg_url, tmp_path) as url:
        synced = cli("sync", "phone.db", url, "--token", token, cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        write(tmp_path / "phone.db", "phone", "Cart", 1, start=3)
        refused = cli("sync", "phone.db", url, "--token", token, cwd=tmp_path)
        assert refused.returncode == 2 and "(403): device 'phone' may not write Cart" in refused.stderr
        revoked = cli("device", "revoke", pg_url, "phone", cwd=tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        refused = cli("sync", "phone.db", url, "--token", token, cwd=tmp_path)
        assert refused.returncode == 2 and "(401): the token of device 'phone' was revoked" in refused.stderr
    hub_head = head(pg_url)
    assert hub_head[0] == 3
    with minies.EventStore(tmp_path / "phone.db") as phone:
        assert phone.head() == hub_head and len(phone.pending()) == 1
        assert phone.verify(expect_head=f"{hub_head[0]} {hub_head[1]}", origins=True).ok
    with minies.EventStore(pg_url) as store:
        report = store.verify(expect_head=f"{hub_head[0]} {hub_head[1]}", origins=True)
        assert report.ok and report.devices == 1, report.reason
        assert [(r.device, r.push, r.revoked_at is not None) for r in devices(store)] == [("phone", ("Order",), True)]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, as an operator would make with openssl."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minies hub")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_a_hub_served_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cryptography")
    key_file, cert_file = self_signed(tmp_path)
    hub = str(tmp_path / "hub.db")
    with minies.EventStore(hub) as store:
        token = add_device(store, "phone")
    write(tmp_path / "phone.db", "phone", "Order", 2)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # the devices trust the hub's certificate
    with served(hub, tmp_path, "--ssl-keyfile", str(key_file), "--ssl-certfile", str(cert_file)) as url:
        assert url.startswith("https://127.0.0.1:")
        with minies.EventStore(tmp_path / "phone.db", device="phone") as phone:
            assert phone.sync(url, token=token).placed == 2
            with pytest.raises(minies.SyncError, match="cannot reach the hub at http://"):
                phone.sync(url.replace("https://", "http://"), token=token)
        write(tmp_path / "phone.db", "phone", "Order", 1, start=2)
        synced = cli("sync", "phone.db", url, "--token", token, cwd=tmp_path)
        assert synced.returncode == 0 and "pushed 1 (1 placed" in synced.stdout, synced.stderr
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = cli("sync", "phone.db", url, "--token", token, cwd=tmp_path)
        assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
    assert head(hub)[0] == 3


def test_the_registry_in_python(tmp_path: Path) -> None:
    with minies.EventStore(tmp_path / "hub.db") as hub:
        token = add_device(hub, "phone", ["Order*"])
        assert authorize(hub, token).may_push("OrderLine") and not authorize(hub, token).may_push("Cart")
        with pytest.raises(minies.SyncError, match="no token"):
            authorize(hub, "")
        with pytest.raises(ValueError, match="pattern"):
            add_device(hub, "laptop", [])
        with pytest.raises(ValueError, match="device id"):
            add_device(hub, "", ["*"])
        first = revoke_device(hub, "phone")
        assert revoke_device(hub, "phone").revoked_at == first.revoked_at  # twice: once
        with pytest.raises(minies.SyncError, match="was revoked"):
            authorize(hub, token)
        assert hub.verify().ok


def test_serve_refuses_what_it_cannot_serve_in_one_line(tmp_path: Path) -> None:
    result = cli("serve", "nowhere.db", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no hub at 'nowhere.db'" in result.stderr and not (tmp_path / "nowhere.db").exists()
    result = cli("serve", "nowhere.db", "--ssl-keyfile", "k.pem", cwd=tmp_path)
    assert result.returncode == 2 and "no hub" in result.stderr
    write(tmp_path / "phone.db", "phone", "Order", 1)
    minies.EventStore(tmp_path / "hub.db").close()
    for args, said in [
        (["phone.db"], "'phone.db' is a device (it syncs with a hub), not a hub"),
        (["hub.db", "--ssl-keyfile", "k.pem"], "TLS needs both --ssl-keyfile and --ssl-certfile"),
        (["hub.db", "--ssl-keyfile", "k.pem", "--ssl-certfile", "c.pem"], "cannot serve TLS with k.pem and c.pem"),
        (["hub.db", "--max-body", "0"], "max_body is a number of bytes"),
    ]:
        result = cli("serve", *args, "--port", "0", cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    result = cli("device", "add", "phone.db", "laptop", cwd=tmp_path)
    assert result.returncode == 2 and "is a device" in result.stderr
    without_uvicorn = "import sys; sys.modules['uvicorn'] = None; from minies._cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", without_uvicorn, "serve", "hub.db"], cwd=tmp_path, capture_output=True, text=True
    )
    assert (
        result.returncode == 2
        and result.stderr == 'minies: error: minies serve needs uvicorn: pip install "minies[serve]"\n'
    )
