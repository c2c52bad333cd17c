"""ARCHITECTURE.md kept true: imports go down the layers, with no circle, and no module grows
past 600 lines. The debts it lists are the only exceptions, and they may only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "minies"
LAYERS = [
    {"_errors"},
    {"_personal", "_events", "_aggregate", "_upcasters", "_codec", "_origins", "_wire"},
    {
        "_backends.base",
        "_database",
        "_backends.sqlite_sql",
        "_backends.postgres_sql",
        "_backends.device_sql",
        "_backends.sqlite",
        "_backends.postgres_connection",
        "_backends.postgres_screen",
        "_backends.postgres",
        "_backends",
    },
    {"_transactions", "_keyring", "_stored_types", "_log", "_audit", "_snapshots", "_projections", "_append", "_replay", "_erasure", "_seals", "_device"},
    {"_subscriptions", "_processors", "_hub", "_sync"},
    {"_store", "_aio"},
    {"_copy", "_roles", "eventsourcing", "_report", "_cli", "_demo", "testing", "__init__", "__main__"}
    | {"_cli_sync", "_serve"},
]
# The debts ARCHITECTURE.md names: (importer, imported) and module sizes, as they are today.
UPWARD_DEBTS: set[tuple[str, str]] = set()
SIZE_DEBTS = {"_store": 716, "_backends.postgres_sql": 606}
LIMIT = 600


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts)
        found["__init__" if name == "__init__" else name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in the file."""
    found = set()
    package = name.rsplit(".", 1)[0] if "." in name else ""
    if path.name == "__init__.py" and name != "__init__":
        package = name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = (node.module or "").removeprefix("minies").removeprefix(".")
            for alias in node.names:
                target = f"{module}.{alias.name}" if module else alias.name
                found.add(target if target in known else module or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("minies.") for a in node.names if a.name.startswith("minies.")}
    return (found & known) - {name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    (index,) = [k for k, members in enumerate(LAYERS) if name in members]
    return index


def test_every_module_has_a_layer() -> None:
    assert set(modules()) == set().union(*LAYERS)


def test_imports_go_down_the_layers() -> None:
    upward = {(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)}
    assert upward - UPWARD_DEBTS == set(), "an import goes up a layer (see ARCHITECTURE.md)"
    assert UPWARD_DEBTS - upward == set(), "a debt was paid: take it off UPWARD_DEBTS and ARCHITECTURE.md"


def test_no_circles_but_the_listed_debts() -> None:
    edges = {a: {b for b in targets if (a, b) not in UPWARD_DEBTS} for a, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in edges[node]:
            if state.get(target) == 1:
                pytest.fail(f"a circle: {' -> '.join([*path[path.index(target):], target])}")
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])


def test_no_module_grows_past_the_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    over = {name for name, size in sizes.items() if size > LIMIT and size > SIZE_DEBTS.get(name, 0)}
    assert over == set(), {name: sizes[name] for name in over}
    paid = {name for name in SIZE_DEBTS if sizes[name] <= LIMIT}
    assert paid == set(), "a module is back under the limit: take it off SIZE_DEBTS and ARCHITECTURE.md"


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test can fail: a backend that imports the store is caught both ways."""
    real = graph()
    real["_backends.sqlite"] = {*real["_backends.sqlite"], "_store"}
    monkeypatch.setattr(__import__(__name__), "graph", lambda: real)
    with pytest.raises(AssertionError, match="goes up a layer"):
        test_imports_go_down_the_layers()
    with pytest.raises(pytest.fail.Exception, match="a circle"):
        test_no_circles_but_the_listed_debts()
