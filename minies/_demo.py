"""`minies demo FILE`: a small shop written to a real file, so a newcomer sees the engine work."""

from __future__ import annotations

from typing import ClassVar

import msgspec

import minies


class OrderPlaced(minies.Event):
    customer_id: str
    total: float
    items: list[dict[str, object]] = msgspec.field(default_factory=list)


class OrderShipped(minies.Event):
    carrier: str = "post"


class AccountOpened(minies.Event):
    owner: str
    balance: int


class MoneyDeposited(minies.Event):
    amount: int


class MoneyWithdrawn(minies.Event):
    amount: int


class Account(minies.Aggregate):
    snapshot_every: ClassVar[int] = 5
    owner: str = ""
    balance: int = 0

    def apply(self, event: minies.Event) -> None:
        match event:
            case AccountOpened(owner=owner, balance=balance):
                self.owner, self.balance = owner, balance
            case MoneyDeposited(amount=amount):
                self.balance += amount
            case MoneyWithdrawn(amount=amount):
                self.balance -= amount

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.record(MoneyDeposited(amount=amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise ValueError(f"cannot withdraw {amount}: the balance is {self.balance}")
        self.record(MoneyWithdrawn(amount=amount))


class OrderSummaries(minies.Projection):
    name = "order_summaries"
    version = 1

    def setup(self, db: minies.Database) -> None:
        db.execute(
            "CREATE TABLE order_summaries (order_id TEXT PRIMARY KEY, customer_id TEXT,"
            " total REAL, status TEXT, placed_at TEXT, shipped_at TEXT)"
        )

    def on_OrderPlaced(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO order_summaries VALUES (?, ?, ?, 'placed', ?, NULL)",
            (event.aggregate_id, event.data.customer_id, event.data.total, event.timestamp.isoformat()),
        )

    def on_OrderShipped(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "UPDATE order_summaries SET status = 'shipped', shipped_at = ? WHERE order_id = ?",
            (event.timestamp.isoformat(), event.aggregate_id),
        )


def run(path: str) -> None:
    say = print
    with minies.EventStore(path, projections=[OrderSummaries()]) as store:
        run_no = len(store.query("SELECT 1 FROM order_summaries")) // 3 + 1
        say(f"minies demo, run {run_no}, writing to {path}")

        with minies.metadata_scope(user_id="usr_demo", correlation_id=f"demo-run-{run_no}"):
            for n, (sku, qty, price) in enumerate([("BOOT-001", 1, 129.99), ("SOCK-7", 3, 4.5), ("HAT-2", 1, 25.0)]):
                order_id = f"order-{run_no}-{n + 1}"
                store.append(
                    order_id,
                    [
                        OrderPlaced(
                            customer_id=f"cust-{n}", items=[{"sku": sku, "qty": qty, "price": price}], total=qty * price
                        )
                    ],
                    aggregate_type="Order",
                    expected_version=0,
                )
            store.append(f"order-{run_no}-1", [OrderShipped(carrier="DHL")], aggregate_type="Order", expected_version=1)

            account_id = f"acc-{run_no}"
            account = Account(id=account_id)
            account.record(AccountOpened(owner="ann", balance=1000))
            account.deposit(500)
            account.withdraw(100)
            store.save(account)
            for amount in (10, 20, 30, 40):
                account.deposit(amount)
                store.save(account)

        say("\nread model (updated in the same transaction as each append):")
        for row in store.query(
            "SELECT order_id, status, total FROM order_summaries WHERE order_id LIKE ? ORDER BY order_id",
            (f"order-{run_no}-%",),
        ):
            say(f"  {row[0]:<12} {row[1]:<8} {row[2]:>8.2f}")

        loaded = store.load(Account, account_id)
        first = store.load(Account, account_id, upto=1)
        say(
            f"\naccount {account_id}: balance {loaded.balance} at version {loaded.version}"
            f" (was {first.balance} at version 1)"
        )
        stale = store.load(Account, account_id)
        loaded.deposit(1)
        store.save(loaded)
        stale.withdraw(1)
        try:
            store.save(stale)
        except minies.ConcurrencyError as e:
            say(f"a stale save was refused: {e}")

        say("\nthe log of that account:")
        for event in store.read(account_id):
            say(
                f"  #{event.position:<5} v{event.version}  {event.event_type:<15}"
                f" {msgspec.json.encode(event.data).decode()}"
            )

        report = store.verify()
        position, digest = store.head()
        say(f"\nverify: ok={report.ok}, {report.events_checked} events re-hashed; head {position} {digest[:16]}…")
        say(f"try:  minies info {path}   minies events {path} --aggregate {account_id}   minies verify {path}")
