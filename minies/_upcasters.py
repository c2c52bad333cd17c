"""Schema evolution: old stored payloads read as today's events, history untouched.

Every stored event records the ``schema_version`` of its type (1 unless the class says
otherwise). When a class changes shape, bump its ``schema_version`` and register an
upcaster per old version: a plain function from the old payload dict to the next version's.
An upcaster may also return several events, or none, to split or drop one. ``rename`` maps
an old ``event_type`` to a new one. All of it applies on read, in every read path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeAlias

from minies import _events
from minies._errors import SchemaError
from minies._events import Event

Payload: TypeAlias = dict[str, Any]
Upcast: TypeAlias = Payload | list[tuple[str, int, Payload]] | None
"""What an upcaster returns: the next version's payload (same type), a list of
``(event_type, schema_version, payload)`` to split the event, or None (or []) to drop it."""
Upcaster: TypeAlias = Callable[[Payload], Upcast]

upcasters: dict[tuple[str, int], Upcaster] = {}
renames: dict[str, str] = {}
_MAX_STEPS: Final = 1_000


def _name(event_type: str | type[Event]) -> str:
    return event_type if isinstance(event_type, str) else event_type.event_type


def upcaster(event_type: str | type[Event], from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function to turn ``event_type`` payloads of ``from_version``
    into ``from_version + 1`` (or into other events):

        @minies.upcaster(OrderPlaced, 1)
        def add_currency(data):
            return {**data, "currency": "EUR"}

    Raises:
        ValueError: ``from_version`` is not an int >= 1.
        SchemaError: another function is already registered for that type and version.
    """
    name = _name(event_type)
    if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 1:
        raise ValueError(f"from_version must be an int >= 1, got {from_version!r}")

    def register(function: Upcaster) -> Upcaster:
        old = upcasters.get((name, from_version))
        if old is not None and (old.__module__, old.__qualname__) != (function.__module__, function.__qualname__):
            raise SchemaError(f"{name} v{from_version} already has an upcaster: {old.__qualname__}")
        upcasters[(name, from_version)] = function
        _events.generation += 1
        return function

    return register


def rename(old: str, new: str | type[Event]) -> None:
    """Read events stored as ``old`` as ``new`` (same schema version, then its upcasters)."""
    if not isinstance(old, str) or not old:
        raise ValueError(f"old must be an event type name, got {old!r}")
    renames[old] = _name(new)
    _events.generation += 1


_active: tuple[int, bool] = (-1, False)


def active() -> bool:
    """True if any stored event could need upcasting (else reads skip every check)."""
    global _active
    generation, value = _active
    if generation != _events.generation:
        value = bool(upcasters or renames) or any(cls.schema_version != 1 for cls in _events.registry.values())
        _active = (_events.generation, value)
    return value


def current_version(event_type: str) -> int | None:
    """The schema version the code writes for ``event_type``; None if no class claims it."""
    cls = _events.registry.get(event_type)
    return None if cls is None else cls.schema_version


def validate() -> None:
    """Check every chain: no cycle of renames, no gap, nothing newer than its class.

    Raises:
        SchemaError: naming the type and versions at fault.
    """
    for old in renames:
        seen = [old]
        name = old
        while name in renames:
            name = renames[name]
            if name in seen:
                raise SchemaError(f"event type renames form a cycle: {' -> '.join([*seen, name])}")
            seen.append(name)
    by_type: dict[str, set[int]] = {}
    for name, version in upcasters:
        by_type.setdefault(name, set()).add(version)
    for name, versions in sorted(by_type.items()):
        current = current_version(name)
        if current is not None:
            newer = sorted(v for v in versions if v >= current)
            if newer:
                raise SchemaError(
                    f"{name} has an upcaster from v{newer[0]}, but its class is at v{current}: "
                    f"an upcaster turns v{newer[0]} into v{newer[0] + 1}; bump {name}.schema_version"
                )
            top = current - 1
        else:
            top = max(versions)
        gaps = sorted(set(range(min(versions), top + 1)) - versions)
        if gaps:
            raise SchemaError(f"{name}'s upcasters have a gap: nothing turns v{gaps[0]} into v{gaps[0] + 1}")


Step: TypeAlias = tuple[str, int, Upcaster]
_paths: dict[tuple[str, int], tuple[str, tuple[Step, ...]]] = {}
_paths_generation = -1


def _path(event_type: str, version: int) -> tuple[str, tuple[Step, ...]]:
    """Where a stored ``(event_type, version)`` goes while every upcaster returns a dict:
    today's type name and the ``(name, version, upcaster)`` steps on the way (cached until
    the next registration).

    Raises:
        SchemaError: the version is newer than the class, or a step is missing.
    """
    global _paths_generation
    if _paths_generation != _events.generation:
        _paths.clear()
        _paths_generation = _events.generation
    found = _paths.get((event_type, version))
    if found is not None:
        return found
    name, v, steps = event_type, version, list[Step]()
    while True:
        while name in renames:
            name = renames[name]
        current = current_version(name)
        if current is not None and v > current:
            raise SchemaError(
                f"a stored {name} event is at schema version {v}, but this code knows up to v{current}: "
                "it was written by newer code; upgrade, or read raw dicts"
            )
        step = upcasters.get((name, v))
        if step is None:
            if current is not None and v != current:
                raise SchemaError(f"no upcaster turns {name} v{v} into v{v + 1}; register one")
            found = _paths[(event_type, version)] = (name, tuple(steps))
            return found
        steps.append((name, v, step))
        v += 1


def as_stored(event_type: str, version: int) -> bool:
    """True if stored ``(event_type, version)`` events read as they are: no rename, no step.

    Raises:
        SchemaError: as ``upcast`` would for them.
    """
    today, steps = _path(event_type, version)
    return today == event_type and not steps


def upcast(event_type: str, version: int, payload: Payload) -> list[tuple[str, Payload]]:
    """Bring one stored payload to today's shape: ``[(event_type, payload), ...]``.

    ``payload`` is the caller's to give away: upcasters may change it in place.

    Raises:
        SchemaError: the payload is newer than the code's class, or an upcaster misbehaves.
    """
    found = _paths.get((event_type, version)) if _paths_generation == _events.generation else None
    today, path = found or _path(event_type, version)
    for taken, (name, v, step) in enumerate(path, 1):  # the common case: a dict at every step
        result = step(payload)
        if type(result) is not dict:
            return _branched(event_type, version, (name, v, result), taken)
        payload = result
    return [(today, payload)]


def _branched(event_type: str, version: int, branch: tuple[str, int, Upcast], steps: int) -> list[tuple[str, Payload]]:
    """``upcast`` once a step has split or dropped the event: each part goes its own way."""
    done: list[tuple[str, Payload]] = []
    pending: list[tuple[str, int, Payload]] = []
    while True:
        name, v, result = branch
        if isinstance(result, list):
            pending.extend(reversed([_checked(name, v, item) for item in result]))
        elif result is not None:
            raise SchemaError(
                f"the upcaster for {name} v{v} returned {type(result).__name__}, not a dict, a list or None"
            )
        while pending:
            part, part_version, data = pending.pop()
            today, path = _path(part, part_version)
            for name, v, step in path:
                steps += 1
                if steps > _MAX_STEPS:
                    raise SchemaError(f"upcasting {event_type} v{version} did not finish after {_MAX_STEPS} steps")
                result = step(data)
                if type(result) is not dict:
                    branch = (name, v, result)
                    break
                data = result
            else:
                done.append((today, data))
                continue
            break  # settle the new branch first, as a depth-first walk
        else:
            return done


def _checked(name: str, version: int, item: object) -> tuple[str, int, Payload]:
    if (
        isinstance(item, tuple)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and isinstance(item[2], dict)
    ):
        return item
    raise SchemaError(
        f"the upcaster for {name} v{version} returned {item!r:.80} in its list; "
        "each item must be (event_type, schema_version, payload)"
    )


def signature() -> list[object]:
    """What snapshots depend on besides the aggregate's shape: event versions and renames."""
    versions = sorted((name, cls.schema_version) for name, cls in _events.registry.items() if cls.schema_version != 1)
    return [versions, sorted(renames.items())]
