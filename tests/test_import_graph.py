"""The package's import graph: no cycles, and the storage layer never reaches up into the zoo or the root."""

import ast
from pathlib import Path

import lowbit

SRC = Path(lowbit.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("lowbit", *path.relative_to(SRC).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every lowbit module each module imports, at the top or inside a function."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lowbit":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges[name].add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in mods}
    return {m: {t for t in targets if t in mods and t != m} for m, targets in edges.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_imports(_modules())) == []


def test_a_cycle_is_found_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_io_imports_nothing_above_it():
    edges = _imports(_modules())
    for name, targets in edges.items():
        if name.startswith("lowbit.io"):
            above = {t for t in targets if t == "lowbit" or t.startswith(("lowbit.models", "lowbit.cli", "lowbit.api"))}
            assert not above, (name, above)
