from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from domain import AccountOpened, MoneyDeposited, OrderPlaced

import minies


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minies", *args], capture_output=True, text=True, input=stdin, timeout=120
    )


@pytest.fixture
def shop(db_path: str) -> str:
    with minies.EventStore(db_path) as store:
        for i in range(20):
            store.append(f"acc-{i % 4}", [MoneyDeposited(amount=i)], aggregate_type="Account")
        store.append("o1", [OrderPlaced(customer_id='c\n"1"', total=9.5)], aggregate_type="Order")
    return db_path


def test_demo_runs_on_a_fresh_file_and_again(tmp_path: object, db_path: str) -> None:
    first = cli("demo", db_path)
    assert first.returncode == 0, first.stderr
    assert "shipped" in first.stdout and "verify: ok=True" in first.stdout
    second = cli("demo", db_path)
    assert second.returncode == 0 and "run 2" in second.stdout
    assert cli("verify", db_path).returncode == 0


def test_events_json_lines_parse(shop: str) -> None:
    result = cli("events", shop, "--json")
    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["position"] for line in lines] == list(range(1, 22))
    assert lines[-1]["data"] == {"customer_id": 'c\n"1"', "total": 9.5, "items": []}
    assert set(lines[0]) == {
        "position",
        "event_id",
        "aggregate_id",
        "aggregate_type",
        "event_type",
        "version",
        "timestamp",
        "data",
        "metadata",
    }


def test_events_filters_and_table(shop: str) -> None:
    only = cli("events", shop, "--json", "--aggregate", "acc-1", "--after", "5")
    assert [json.loads(x)["position"] for x in only.stdout.splitlines()] == [6, 10, 14, 18]
    typed = cli("events", shop, "--json", "--type", "OrderPlaced")
    assert [json.loads(x)["aggregate_id"] for x in typed.stdout.splitlines()] == ["o1"]
    assert len(cli("events", shop, "--json", "--limit", "3").stdout.splitlines()) == 3
    assert cli("events", shop, "--json", "--since", "2999-01-01").stdout == ""
    table = cli("events", shop)
    assert table.returncode == 0 and "MoneyDeposited" in table.stdout and "position" in table.stdout.splitlines()[0]


def test_export_jsonl_and_csv(shop: str, tmp_path: object) -> None:
    out = str(shop) + ".jsonl"
    assert cli("export", shop, "-o", out).returncode == 0
    with open(out) as f:
        assert len([json.loads(line) for line in f]) == 21
    again = cli("export", shop, "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr
    rows = list(csv.reader(io.StringIO(cli("export", shop, "--format", "csv").stdout)))
    assert rows[0] == [*minies.Recorded.__struct_fields__, "schema_version", "hash"] and len(rows) == 22
    assert json.loads(rows[-1][7])["customer_id"] == 'c\n"1"'
    con = sqlite3.connect(shop)
    stored = con.execute(
        "SELECT created_at, schema_version, lower(hex(hash)) FROM events WHERE position = 21"
    ).fetchone()
    con.close()
    assert (rows[-1][6], rows[-1][9], rows[-1][10]) == (stored[0], str(stored[1]), stored[2])
    assert stored[0].endswith("Z")  # the file's own timestamp text, not a re-formatted one


def test_verify_head_and_info(shop: str) -> None:
    head = cli("head", shop).stdout.split()
    assert head[0] == "21" and len(head[1]) == 64
    ok = cli("verify", shop, "--expect-head", head[1])
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 21 events")
    printed = cli("head", shop).stdout.strip()
    for accepted in (printed, head[1][:12], head[1].upper(), f"21 {head[1][:16]}"):
        result = cli("verify", shop, "--expect-head", accepted)
        assert result.returncode == 0, (accepted, result.stdout, result.stderr)
    assert cli("verify", shop, "--expect-head", f"20 {head[1]}").returncode == 1  # the hash is not at 20
    short = cli("verify", shop, "--expect-head", head[1][:11])
    assert short.returncode == 2 and "--expect-head must be what `minies head` prints" in short.stderr
    info = cli("info", shop)
    assert info.returncode == 0 and "21 events in 5 aggregates" in info.stdout and head[1] in info.stdout
    con = sqlite3.connect(shop)
    con.execute("DROP TRIGGER events_no_update")
    con.execute("UPDATE events SET data = '{\"amount\":5000}' WHERE position = 3")
    con.commit()
    con.close()
    bad = cli("verify", shop)
    assert bad.returncode == 1 and "first bad position 3" in bad.stdout
    assert cli("verify", shop, "--expect-head", head[1]).returncode == 1


def test_backup_and_snapshots(shop: str) -> None:
    out = shop + ".copy"
    result = cli("backup", shop, out)
    assert result.returncode == 0 and os.path.exists(out)
    assert cli("verify", out).returncode == 0
    assert cli("snapshots", shop).returncode == 0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("text", "not a SQLite database"),
        ("foreign", "not a minies one"),
        ("directory", "cannot"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: object, db_path: str, setup: str, message: str) -> None:
    if setup == "text":
        with open(db_path, "w") as f:
            f.write("just text" * 200)
    elif setup == "foreign":
        con = sqlite3.connect(db_path)
        con.execute("CREATE TABLE t (x)")
        con.close()
    elif setup == "directory":
        os.mkdir(db_path)
    for command in ("info", "events", "verify", "export", "head"):
        result = cli(command, db_path)
        assert result.returncode == 2, (command, result)
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_arguments(shop: str) -> None:
    result = cli("events", shop, "--since", "yesterday")
    assert result.returncode == 2 and "not an ISO-8601 time" in result.stderr
    assert cli("verify", shop, "--expect-head", "zz").returncode == 2
    assert cli().returncode == 2


def test_console_script_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "minies")
    if not os.path.exists(script):
        pytest.skip("minies is not installed as a package in this environment")
    assert subprocess.run([script, "--help"], capture_output=True, text=True).returncode == 0


def test_rebuild_a_projection_from_the_command_line(tmp_path: object, db_path: str) -> None:
    tests = os.path.dirname(__file__)
    with minies.EventStore(db_path) as store:
        store.append("o1", [OrderPlaced(customer_id="c", total=2.5)], aggregate_type="Order")
    env = {**os.environ, "PYTHONPATH": tests}
    result = subprocess.run(
        [sys.executable, "-m", "minies", "rebuild", db_path, "order_summaries", "--import", "domain"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt order_summaries: 1 events" in result.stdout
    with minies.EventStore(db_path) as store:
        assert store.query("SELECT order_id, status FROM order_summaries") == [("o1", "placed")]
    missing = subprocess.run(
        [sys.executable, "-m", "minies", "rebuild", db_path, "nope", "--import", "domain"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert missing.returncode == 2 and "no Projection class named 'nope'" in missing.stderr


def test_small_things_said_right(shop: str, db_path: str) -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"minies {minies.__version__}"
    negative = cli("events", shop, "--limit", "-1")
    assert negative.returncode == 2 and "must be a whole number >= 0, got '-1'" in negative.stderr
    unknown = cli("snapshots", shop, "--drop", "Nope")
    assert unknown.returncode == 2 and "unknown aggregate type 'Nope'; this file has Account, Order" in unknown.stderr
    dropped = cli("snapshots", shop, "--drop", "Account")
    assert dropped.returncode == 0 and dropped.stdout.strip() == "dropped 0 snapshots of Account"
    one = db_path + ".one"
    with minies.EventStore(one) as store:
        store.append("a", [MoneyDeposited(amount=1)], aggregate_type="Account")
    assert "1 event in 1 aggregate\n" in cli("info", one).stdout


def test_ctrl_c_is_one_line(tmp_path: object, db_path: str) -> None:
    with minies.EventStore(db_path) as store:
        store.append("a", [MoneyDeposited(amount=i) for i in range(20_000)], aggregate_type="Account")
    process = subprocess.Popen(
        [sys.executable, "-m", "minies", "events", db_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.read(1000)  # it is running, and blocked on the full pipe
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.decode() == "minies: interrupted\n"


def test_events_and_export_upcast_with_import(tmp_path: Path) -> None:
    shop = tmp_path / "shop_v1.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "shop_v1.db", shop)
    (tmp_path / "deploy.py").write_text("import shop_today\nshop_today.install()\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    for command in (["events", "--json"], ["export"]):
        args = [sys.executable, "-m", "minies", *command, str(shop), "--import", "deploy", "--type", "Ordered"]
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["data"] for line in result.stdout.splitlines()] == [
            {"customer_id": "cust-1", "total": 129.99, "currency": "EUR"},
            {"customer_id": "cust-1", "total": 5.5, "currency": "EUR"},
        ]


def test_what_an_auditor_reads_is_whole_and_visible(db_path: str) -> None:
    """events prints an id whole (it can be pasted back) and a bidi override written out;
    info counts the -wal, where a store still open keeps its newest pages."""
    long_id = "3f2b8c1e-5d4a-4e8b-9c7d-1a2b3c4d5e6f"
    with minies.EventStore(db_path) as store:
        store.append(long_id, [MoneyDeposited(amount=1)], aggregate_type="Account")
        store.append("evil\u202etxt.exe", [OrderPlaced(customer_id="\u2066x\u2069", total=1.0)], aggregate_type="Order")
        table = cli("events", db_path).stdout
        assert long_id in table and cli("events", db_path, "--aggregate", long_id).stdout.count(long_id) == 1
        assert "evil\\u202etxt.exe" in table and "\\u2066x\\u2069" in table and "\u202e" not in table
        wal = os.path.getsize(db_path + "-wal")
        assert wal > 0
        size = os.path.getsize(db_path)
        assert f"({size + wal:,} bytes: {size:,} + {wal:,} in its -wal)" in cli("info", db_path).stdout


def test_show_prints_one_aggregate_s_history_and_its_state_when_its_class_is_imported(tmp_path: Path) -> None:
    path = str(tmp_path / "bank.db")
    with minies.EventStore(path) as store:
        store.append("acc-1", [AccountOpened(owner="ann", balance=10), MoneyDeposited(amount=5)], aggregate_type="Account")
        store.append("acc-2", [MoneyDeposited(amount=1)], aggregate_type="Account")
    plain = cli("show", path, "acc-1")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == "acc-1: a Account at version 2"
    assert [line.split()[:2] for line in lines[3:5]] == [["1", "1"], ["2", "2"]]
    assert "pass --import MODULE with the Account class" in plain.stdout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    folded = subprocess.run(
        [sys.executable, "-m", "minies", "show", path, "acc-1", "--import", "domain"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert folded.returncode == 0, folded.stderr
    assert '"balance":15' in folded.stdout and "state (domain.Account)" in folded.stdout
    missing = cli("show", path, "nobody")
    assert missing.returncode == 2 and "holds no aggregate 'nobody'" in missing.stderr


def test_verify_names_a_problem_of_the_file_without_blaming_an_event(tmp_path: Path) -> None:
    path = str(tmp_path / "bank.db")
    with minies.EventStore(path) as store:
        store.append("acc-1", [MoneyDeposited(amount=5)] * 21, aggregate_type="Account")
    subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DROP TRIGGER events_no_delete'); c.commit()", path],
        check=True,
    )
    result = cli("verify", path)
    assert result.returncode == 1
    assert result.stdout == "NOT OK: immutability triggers are missing: events_no_delete (the chain of 21 events is intact)\n"
    assert "first bad position" not in result.stdout
