"""A small domain shared by the tests (and by the helper processes they start)."""

from __future__ import annotations

from typing import ClassVar

import minies


class AccountOpened(minies.Event):
    owner: str
    balance: int


class MoneyDeposited(minies.Event):
    amount: int


class MoneyWithdrawn(minies.Event):
    amount: int


class AccountRenamed(minies.Event):
    event_type: ClassVar[str] = "Renamed"
    name: str


class OrderPlaced(minies.Event):
    customer_id: str
    total: float


class OrderShipped(minies.Event):
    carrier: str = "post"


class Account(minies.Aggregate):
    snapshot_every: ClassVar[int | None] = None
    owner: str = ""
    balance: int = 0
    name: str = ""

    def apply(self, event: minies.Event) -> None:
        match event:
            case AccountOpened(owner=owner, balance=balance):
                self.owner, self.balance = owner, balance
            case MoneyDeposited(amount=amount):
                self.balance += amount
            case MoneyWithdrawn(amount=amount):
                self.balance -= amount
            case AccountRenamed(name=name):
                self.name = name

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.record(MoneyDeposited(amount=amount))


class OrderSummaries(minies.Projection):
    """The seed's OrderSummaryProjection."""

    name = "order_summaries"
    version = 1

    def setup(self, db: minies.Database) -> None:
        db.execute(
            "CREATE TABLE order_summaries (order_id TEXT PRIMARY KEY, customer_id TEXT, total REAL,"
            " status TEXT, placed_at TEXT, shipped_at TEXT)"
        )

    def handle(self, db: minies.Database, event: minies.Recorded) -> None:
        if event.event_type == "OrderPlaced":
            db.execute(
                "INSERT INTO order_summaries (order_id, customer_id, total, status, placed_at)"
                " VALUES (?, ?, ?, 'placed', ?)",
                (event.aggregate_id, event.data.customer_id, event.data.total, event.timestamp.isoformat()),
            )
        elif event.event_type == "OrderShipped":
            db.execute(
                "UPDATE order_summaries SET status = 'shipped', shipped_at = ? WHERE order_id = ?",
                (event.timestamp.isoformat(), event.aggregate_id),
            )


class Balances(minies.Projection):
    """Per-type handlers, and an UPSERT per event."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE balances (account_id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        db.execute("CREATE INDEX balances_by_balance ON balances (balance)")

    def on_AccountOpened(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO balances VALUES (?, ?)", (event.aggregate_id, event.data.balance))

    def on_MoneyDeposited(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO balances VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET balance = balance + ?",
            (event.aggregate_id, event.data.amount, event.data.amount),
        )

    def on_MoneyWithdrawn(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO balances VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET balance = balance - ?",
            (event.aggregate_id, -event.data.amount, event.data.amount),
        )
