"""Today's shop events: what tests/fixtures/shop_v1.db's events have become.

``install()`` registers the upcasters (tests undo it afterwards: upcasters are global).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import minies
from minies import _events, _upcasters


class Ordered(minies.Event):
    schema_version: ClassVar[int] = 3  # v2 renamed amount -> total; v3 added currency
    customer_id: str
    total: float
    currency: str


class CustomerRegistered(minies.Event):
    name: str


class StreetChanged(minies.Event):
    street: str


class CityChanged(minies.Event):
    city: str


class Customer(minies.Aggregate):
    name: str = ""
    street: str = ""
    city: str = ""

    def apply(self, event: minies.Event) -> None:
        match event:
            case CustomerRegistered(name=name):
                self.name = name
            case StreetChanged(street=street):
                self.street = street
            case CityChanged(city=city):
                self.city = city


def ordered_v1(data: dict[str, Any]) -> dict[str, Any]:
    data["total"] = data.pop("amount")
    return data


def ordered_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


def split_address(data: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    return [("StreetChanged", 1, {"street": data["street"]}), ("CityChanged", 1, {"city": data["city"]})]


def drop(data: dict[str, Any]) -> None:
    return None


def install() -> None:
    minies.upcaster(Ordered, 1)(ordered_v1)
    minies.upcaster(Ordered, 2)(ordered_v2)
    minies.upcaster("AddressChanged", 1)(split_address)
    minies.upcaster("Ping", 1)(drop)
    minies.rename("CustomerSignedUp", CustomerRegistered)


@contextlib.contextmanager
def todays_upcasters() -> Iterator[None]:
    """Today's upcasters, removed again afterwards (they are process-wide)."""
    saved = dict(_upcasters.upcasters), dict(_upcasters.renames)
    install()
    try:
        yield
    finally:
        _upcasters.upcasters.clear()
        _upcasters.upcasters.update(saved[0])
        _upcasters.renames.clear()
        _upcasters.renames.update(saved[1])
        _events.generation += 1
