"""minies report: one self-contained HTML file, checked in a real browser (headless Chromium).

Each case opens the report from a file:// URL and checks what an auditor sees: the verdict, the
chart's bars against the log's counts, search and paging in the events table, invisible
characters written out, no request leaving the page and no console error. A screenshot of each
case is saved under the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import minies
from minies._report import visible

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class Opened(minies.Event, frozen=True):
    event_type = "report_test.Opened"
    owner: str


class Deposited(minies.Event, frozen=True):
    event_type = "report_test.Deposited"
    amount: int


class Registered(minies.Event, frozen=True):
    event_type = "report_test.Registered"
    customer: str
    email: minies.Personal[str] = ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and DRIVER):
        missing = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        if os.environ.get("MINIES_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,3000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shop(path: Path, events: int = 130) -> None:
    """Two aggregate types, one id with a right-to-left override in it."""
    with minies.EventStore(path) as store:
        for n in range(events // 10):
            store.append(f"acc-{n}", [Opened(owner=f"owner {n}")], aggregate_type="Account")
            store.append(f"acc-{n}", [Deposited(amount=k) for k in range(1, 9)], aggregate_type="Account")
            store.append(f"cart-{n}", [Deposited(amount=n)], aggregate_type="Cart")
        store.append("evil\u202etxt.exe", [Opened(owner="<script>alert(1)</script>")], aggregate_type="Account")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(path: Path, *extra: str) -> Path:
    out = path.with_suffix(".html")
    before = digest(path)
    result = subprocess.run(
        [sys.executable, "-m", "minies", "report", str(path), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert digest(path) == before  # read-only: the evidence is left byte for byte as it was
    return out


def open_page(browser: Any, page: Path, shot: Path) -> None:
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get(page.as_uri())
    browser.save_screenshot(str(shot))


def check_clean_page(browser: Any) -> None:
    """Nothing left the page, and nothing went wrong in it."""
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def settled(browser: Any, script: str) -> None:
    """Wait until ``script`` returns true: a link's hashchange is handled after the click returns."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: b.execute_script(script))


def text(browser: Any, selector: str) -> str:
    return str(browser.find_element("css selector", selector).text)


def bars(browser: Any) -> dict[str, int]:
    """The chart's bars summed by aggregate type, from their data attributes."""
    found: dict[str, int] = {}
    for bar in browser.find_elements("css selector", "#chart-svg rect.bar"):
        kind = bar.get_attribute("data-type")
        found[kind] = found.get(kind, 0) + int(bar.get_attribute("data-count"))
    return found


def test_visible_writes_out_invisible_characters() -> None:
    assert visible("plain text, ünïcödé") == "plain text, ünïcödé"
    assert visible("evil\u202etxt") == "evil\\u202etxt"
    assert visible("a\tb\x00c\u200bd\U000e0041") == "a\\u0009b\\u0000c\\u200bd\\U000e0041"


def test_a_clean_file(browser: Any, tmp_path: Path) -> None:
    db = tmp_path / "clean.db"
    shop(db)
    page = report(db)
    assert "http://" not in page.read_text() and "https://" not in page.read_text()
    open_page(browser, page, tmp_path / "clean.png")
    assert browser.find_element("id", "verdict").get_attribute("data-ok") == "true"
    assert text(browser, "#verdict h2") == "Intact"
    assert "All 131 events were re-hashed" in text(browser, "#verdict")
    with minies.EventStore(db, readonly=True) as store:
        counts = dict(store.query("SELECT aggregate_type, count(*) FROM events GROUP BY 1"))
    assert bars(browser) == counts == {"Account": 118, "Cart": 13}

    rows = browser.find_elements("css selector", "#events-table tbody tr")
    assert len(rows) == 50
    assert rows[0].find_elements("css selector", "td")[0].text == "131"  # newest first
    assert "page 1 of 3" in text(browser, "#page-status")
    browser.find_element("id", "next").click()
    browser.find_element("id", "next").click()
    assert text(browser, "#page-status") == "events 101\u2013131 of 131 · page 3 of 3"
    assert len(browser.find_elements("css selector", "#events-table tbody tr")) == 31
    assert not browser.find_element("id", "prev").get_attribute("disabled")
    assert browser.find_element("id", "next").get_attribute("disabled")

    search = browser.find_element("id", "search")
    search.send_keys("cart-7")
    rows = browser.find_elements("css selector", "#events-table tbody tr")
    assert [r.find_elements("css selector", "td")[2].text for r in rows] == ["cart-7"]
    search.clear()
    search.send_keys("\\u202e")  # what an auditor sees, they can search for
    (row,) = browser.find_elements("css selector", "#events-table tbody tr")
    cells = [c.text for c in row.find_elements("css selector", "td")]
    assert cells[2] == "evil\\u202etxt.exe"  # written out, not obeyed
    assert cells[5] == '{"owner":"<script>alert(1)</script>"}'  # a value, not markup
    assert browser.execute_script("return window.alert.toString().indexOf('native') >= 0")

    row.find_element("css selector", "a").click()  # the aggregate's history, by its anchor
    settled(browser, "return !document.getElementById('aggregate-view').hidden")
    assert browser.execute_script("return location.hash") == "#aggregate=evil%5Cu202etxt.exe"
    assert text(browser, "#aggregate-view h3") == "History of aggregate evil\\u202etxt.exe"
    browser.get(page.as_uri() + "#aggregate=acc-3")
    browser.refresh()
    ids = {
        r.find_elements("css selector", "td")[2].text
        for r in browser.find_elements("css selector", "#events-table tbody tr")
    }
    assert ids == {"acc-3"} and "9 of its events" in text(browser, "#aggregate-view")
    check_clean_page(browser)


def test_a_tampered_file(browser: Any, tmp_path: Path) -> None:
    db = tmp_path / "tampered.db"
    shop(db)
    tamper = textwrap.dedent(
        f"""
        import sqlite3
        con = sqlite3.connect({str(db)!r})
        (trigger,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'events_no_update'").fetchone()
        con.execute("DROP TRIGGER events_no_update")
        con.execute("UPDATE events SET data = '{{\\"amount\\":1000000}}' WHERE position = 21")
        con.execute(trigger)  # the guard is back: only the chain can tell
        con.commit()
        """
    )
    subprocess.run([sys.executable, "-c", tamper], check=True, timeout=60)
    page = report(db, "--latest", "50")  # position 21 is older than the latest 50: the table holds it too
    open_page(browser, page, tmp_path / "tampered.png")
    verdict = browser.find_element("id", "verdict")
    assert verdict.get_attribute("data-ok") == "false" and verdict.get_attribute("data-first-bad") == "21"
    assert text(browser, "#verdict h2") == "Not intact: first problem at position 21"
    assert "The 20 events before it verified" in text(browser, "#verdict")
    assert "the latest 50 of 131 events (and the 11 around position 21, the first problem)" in text(browser, "#events")
    browser.find_element("id", "first-bad").click()
    settled(browser, "return document.querySelector('#events-table tbody tr.hit') !== null")
    (hit,) = browser.find_elements("css selector", "#events-table tbody tr.hit")
    assert [c.text for c in hit.find_elements("css selector", "td")][::5] == ["21", '{"amount":1000000}']
    assert text(browser, "#page-status") == "events 51\u201361 of 61 · page 2 of 2"
    browser.save_screenshot(str(tmp_path / "tampered-event.png"))
    browser.find_element("id", "search").send_keys("1000000")
    assert len(browser.find_elements("css selector", "#events-table tbody tr")) == 1  # the forged value, shown
    check_clean_page(browser)


def test_a_file_with_erasures(browser: Any, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    db = tmp_path / "erased.db"
    shop(db, events=20)
    with minies.EventStore(db) as store:
        for who in ("ada", "bob"):
            store.append(who, [Registered(customer=who, email=f"{who}@example.com")], aggregate_type="Customer")
        store.forget("ada", reason="erasure request 2026-41", metadata={"user_id": "dpo"})
    page = report(db)
    open_page(browser, page, tmp_path / "erased.png")
    assert browser.find_element("id", "verdict").get_attribute("data-ok") == "true"
    erasures = text(browser, "#erasures tbody")
    assert "ada" in erasures and "erasure request 2026-41" in erasures and "dpo" in erasures
    assert "ada@example.com" not in page.read_text() and "example.com" in page.read_text()  # bob's is still there
    browser.get(page.as_uri() + "#aggregate=ada")
    browser.refresh()
    (row,) = browser.find_elements("css selector", "#events-table tbody tr")
    assert row.find_elements("css selector", "td")[5].text == '{"customer":"ada","email":"<forgotten>"}'
    check_clean_page(browser)

    # Through the classes (--import): the same, from the Struct's fields; and the file's bytes unchanged.
    before = digest(db)
    minies_report = pytest.importorskip("minies._report")
    verdict = minies_report.write(str(db), str(tmp_path / "classes.html"), snapshots=True)
    assert verdict.ok and digest(db) == before
    assert '\\"email\\":\\"\\u003cforgotten\\u003e\\"' in (tmp_path / "classes.html").read_text()
    with pytest.raises(ValueError, match="already exists"):
        minies_report.write(str(db), str(tmp_path / "classes.html"))


def test_a_big_file_keeps_the_latest_events_and_sums_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    shop(db, events=3000)
    page = report(db, "--latest", "100")
    text = page.read_text()
    assert text.count('"report_test.') == 100  # the table holds only the latest hundred
    assert "the latest 100 of 3,001" in text and 'data-total="3001"' in text
    assert len(text) < 60_000


def test_a_sealed_file(browser: Any, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    db = tmp_path / "sealed.db"
    shop(db, events=20)

    def cli(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "minies", *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    cli("keygen", "ops")
    cli("keygen", "stranger")
    cli("seal", str(db), "--key", "ops.pem", "--note", "Q3 close")
    with minies.EventStore(db) as store:
        store.append("late", [Opened(owner="after the seal")], aggregate_type="Account")
    page = report(db, "--trust", str(tmp_path / "ops.pub.pem"))
    open_page(browser, page, tmp_path / "sealed.png")
    assert browser.find_element("id", "verdict").get_attribute("data-ok") == "true"
    checks = [" ".join(li.text.split()) for li in browser.find_elements("css selector", "#verdict li")]
    seals = [check for check in checks if check.startswith("Seals")]
    assert "1 checked: sealed up to position 21 by key" in seals[0]
    assert "1 event after the last seal is unsealed" in seals[0]
    (row,) = browser.find_elements("css selector", "#seals tbody tr")
    assert [c.text for c in row.find_elements("css selector", "td")][::2] == ["22", "21", "Q3 close"]
    assert "1 good" in text(browser, "#seals")
    (mark,) = browser.find_elements("css selector", "#chart-svg .seal-mark")
    assert mark.get_attribute("data-position") == "22"
    check_clean_page(browser)

    unchecked = report(db.rename(tmp_path / "unchecked.db"))
    open_page(browser, unchecked, tmp_path / "unchecked.png")
    assert "1 in the log, not checked: pass --trust PUB.pem" in text(browser, "#verdict")
    page = report((tmp_path / "unchecked.db").rename(tmp_path / "stranger.db"), "--trust", str(tmp_path / "stranger.pub.pem"))
    open_page(browser, page, tmp_path / "stranger.png")
    assert browser.find_element("id", "verdict").get_attribute("data-ok") == "false"
    assert "Not every seal verified" in text(browser, "#seals")
    checks = [" ".join(li.text.split()) for li in browser.find_elements("css selector", "#verdict li")]
    assert checks[0].endswith("verified") and checks[2] == "Seals not all verified: see above"
    assert "The chain of 23 events is intact; a seal is what fails." in text(browser, "#verdict")
    check_clean_page(browser)


def test_a_forged_snapshot_many_types_and_a_file_still_open(tmp_path: Path) -> None:
    """Without a browser: the snapshot verdict (classes imported), the chart's "other types", and a
    report on a file whose writer still holds its -wal, which is counted and left as it was."""
    from domain import AccountOpened, MoneyDeposited, SnappedAccount

    from minies import _report

    db = tmp_path / "open.db"
    with minies.EventStore(db) as store:
        account = SnappedAccount(id="acc-1")
        account.record(AccountOpened(owner="ann", balance=1))
        for _ in range(39):
            account.record(MoneyDeposited(amount=1))
        store.save(account)  # a snapshot at version 40, balance 40
        for n in range(10):
            store.append(f"x-{n}", [Opened(owner="x")], aggregate_type=f"Type{n}")
        wal = Path(f"{db}-wal")
        before = digest(db), digest(wal)
        _report.write(str(db), str(tmp_path / "open.html"), snapshots=True)
        assert (digest(db), digest(wal)) == before
        page = (tmp_path / "open.html").read_text()
        assert f"({db.stat().st_size:,} in the file, {wal.stat().st_size:,} in its -wal)" in page
        assert "1 equal to a replay" in page
        assert 'data-type="other types"' in page and page.count("<li><i style=") == 8
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE minies_snapshots SET state = replace(state, '\"balance\":40', '\"balance\":1000000')")
        _report.write(str(db), str(tmp_path / "forged.html"), snapshots=True)
    page = (tmp_path / "forged.html").read_text()
    assert 'data-ok="false"' in page and "a snapshot differs from a replay" in page
    assert "<span>Chain and guards</span> verified" in page


def test_an_empty_log_and_a_server(browser: Any, tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    minies.EventStore(db).close()
    open_page(browser, report(db), tmp_path / "empty.png")
    assert text(browser, "#verdict h2") == "Intact" and text(browser, "#page-status") == "no event matches"
    assert "The log is empty." in text(browser, "#chart")
    check_clean_page(browser)
    result = subprocess.run(
        [sys.executable, "-m", "minies", "report", "postgresql://u@localhost/db", "-o", str(tmp_path / "pg.html")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "copy the server's log to one first" in result.stderr


def test_personal_fields_this_store_cannot_open_read_sealed(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from minies import _report

    db = tmp_path / "wrapped.db"
    with minies.EventStore(db, key_encryption_key=bytes(range(32))) as store:
        store.append("cy", [Registered(customer="cy", email="cy@example.com")], aggregate_type="Customer")
    _report.write(str(db), str(tmp_path / "wrapped.html"))  # no key-encryption key: the field stays sealed
    page = (tmp_path / "wrapped.html").read_text()
    assert '\\"email\\":\\"\\u003csealed\\u003e\\"' in page and "cy@example.com" not in page
