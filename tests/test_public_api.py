from __future__ import annotations

import inspect

import minies


def test_all_is_sorted_and_complete() -> None:
    assert minies.__all__ == sorted(minies.__all__)
    public = {name for name, value in vars(minies).items() if not name.startswith("_") and not inspect.ismodule(value)}
    assert public == set(minies.__all__)


def test_error_tree() -> None:
    for error in (
        minies.ConcurrencyError,
        minies.DuplicateEventError,
        minies.NotFound,
        minies.SchemaError,
        minies.ProjectionError,
        minies.StorageError,
    ):
        assert issubclass(error, minies.MiniesError)
    assert issubclass(minies.NotFound, LookupError)
    assert issubclass(minies.DuplicateEventError, ValueError)


def test_errors_pickle() -> None:
    import pickle

    for error in (
        minies.ConcurrencyError("a", 1, 2),
        minies.ProjectionError("p", "broke"),
        minies.DuplicateEventError("id", "by x"),
        minies.SchemaError("does not decode", position=7),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert str(copy) == str(error) and type(copy) is type(error)
        assert vars(copy) == vars(error)


def test_any_is_a_readable_sentinel() -> None:
    assert repr(minies.ANY) == "minies.ANY"
