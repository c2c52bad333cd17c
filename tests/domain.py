"""A small domain shared by the tests (and by the helper processes they start)."""

from __future__ import annotations

from typing import ClassVar

import minies
from minies._demo import Account as DemoAccount
from minies._demo import (  # the demo's events, and the seed's order summary projection
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    OrderPlaced,
    OrderShipped,
    OrderSummaries,
)

__all__ = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn", "OrderPlaced", "OrderShipped", "OrderSummaries"]


class AccountRenamed(minies.Event):
    event_type: ClassVar[str] = "Renamed"
    name: str


class Account(DemoAccount):
    """The demo's account, without snapshots, and with a name."""

    snapshot_every: ClassVar[int | None] = None
    name: str = ""

    def apply(self, event: minies.Event) -> None:
        if isinstance(event, AccountRenamed):
            self.name = event.name
        else:
            super().apply(event)


class SnappedAccount(Account):
    """The same stream as Account, loaded through a snapshot every 40 events."""

    aggregate_type: ClassVar[str] = "Account"
    snapshot_every: ClassVar[int | None] = 40


class Balances(minies.Projection):
    """Per-type handlers, and an UPSERT per event."""

    def setup(self, db: minies.Database) -> None:
        db.execute("CREATE TABLE balances (account_id TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        db.execute("CREATE INDEX balances_by_balance ON balances (balance)")

    def on_AccountOpened(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute("INSERT INTO balances VALUES (?, ?)", (event.aggregate_id, event.data.balance))

    def on_MoneyDeposited(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO balances VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET balance = balances.balance + ?",
            (event.aggregate_id, event.data.amount, event.data.amount),
        )

    def on_MoneyWithdrawn(self, db: minies.Database, event: minies.Recorded) -> None:
        db.execute(
            "INSERT INTO balances VALUES (?, ?) ON CONFLICT (account_id) DO UPDATE SET balance = balances.balance - ?",
            (event.aggregate_id, -event.data.amount, event.data.amount),
        )
