"""Aggregates: state rebuilt from events, commands that record new ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, dataclass_transform

import msgspec

from minies._events import Event


class _AggregateMeta(msgspec.StructMeta):
    # Keyword-only fields for every subclass, so state fields may be declared in any order.
    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any) -> Any:
        options.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **options)


@dataclass_transform(kw_only_default=True, field_specifiers=(msgspec.field,))
class Aggregate(msgspec.Struct, kw_only=True, dict=True, metaclass=_AggregateMeta):
    """A consistency boundary: its state is a fold of its events; commands record new ones.

    Subclass it with your state's fields (defaults make a fresh aggregate), an ``apply`` that
    evolves the state from one event (no I/O, no checks: the event already happened), and
    command methods that check rules and call ``record``.

    Attributes:
        id: the aggregate's id (its stream in the log).
        version: the version of the last event applied, recorded ones included.
        aggregate_type: ClassVar, stored with each event; defaults to the class name.
        snapshot_every: ClassVar, save a snapshot whenever a save crosses a multiple of it.
        snapshot_version: ClassVar, bump it when ``apply`` changes meaning so old snapshots
            are ignored (field and type changes are detected without it).
    """

    id: str
    version: int = 0

    aggregate_type: ClassVar[str] = "Aggregate"
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "aggregate_type" not in cls.__dict__:
            cls.aggregate_type = cls.__name__

    def apply(self, event: Event) -> None:
        """Evolve the state by one event. Override it."""
        raise NotImplementedError(f"{type(self).__name__}.apply is not defined")

    def record(self, event: Event) -> None:
        """Apply a new event and queue it for the next ``store.save``.

        Raises:
            TypeError: ``event`` is not a ``minies.Event``.
        """
        if not isinstance(event, Event):
            raise TypeError(f"record() takes a minies.Event, got {type(event).__name__}: {event!r:.80}")
        self.apply(event)
        self.version += 1
        self.__dict__.setdefault("_pending", []).append(event)

    @property
    def pending(self) -> tuple[Event, ...]:
        """Events recorded since the aggregate was loaded or last saved."""
        return tuple(self.__dict__.get("_pending", ()))

    def _event_ids(self, new: Callable[[int], list[str]]) -> tuple[list[str], bool]:
        """The pending events' ids, made (by ``new(n)``) at the first save that tries them and
        kept until one succeeds; and whether an earlier save tried some of them (its outcome
        may be unknown)."""
        ids: list[str] = self.__dict__.setdefault("_ids", [])
        retried = bool(ids)
        missing = len(self.__dict__.get("_pending", ())) - len(ids)
        if missing > 0:
            ids += new(missing)
        return list(ids), retried

    def _clear_pending(self) -> None:
        self.__dict__.pop("_pending", None)
        self.__dict__.pop("_ids", None)

    def _restore_pending(self, events: tuple[Event, ...]) -> None:
        """Its save was rolled back: the events are pending again (in front of newer ones)."""
        self.__dict__["_pending"] = [*events, *self.__dict__.get("_pending", ())]
        self.__dict__.pop("_ids", None)  # none of them is in the log: new ids at the next save
