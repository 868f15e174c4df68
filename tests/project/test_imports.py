"""No import cycles in ``cxrcore``.

The graph: every module of the package (found with pkgutil) and the ``cxrcore`` modules it imports
anywhere in its text (``import x`` / ``from x import y`` / relative ``from . import y``), at module level,
inside ``if`` / ``try`` blocks, **and inside functions and methods**: a lazy import (torch kept out of
``cxr jobs list``, an optional library) still makes the importing module depend on the imported one, so a
cycle closed through a function is a cycle. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg`` (so ``from .. import name`` defined in a package's
``__init__`` is an edge to that package). Importing a package runs its ``__init__``, so an edge to ``a.b.c``
also stands for edges to ``a`` and ``a.b``, except to packages that hold the importing module (those run
first by construction).
"""
from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import cxrcore

# Cycles known to be in files this change does not own, each named by its modules; the test fails on any
# other cycle, and on an entry here that no longer is a cycle (so the list only shrinks).
KNOWN_CYCLES: dict[str, tuple[str, ...]] = {
}


def _modules() -> dict[str, Path]:
    root = Path(cxrcore.__file__).parent
    out = {"cxrcore": root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix="cxrcore."):
        rel = Path(*info.name.split(".")[1:])
        out[info.name] = root / rel / "__init__.py" if info.ispkg else root / rel.with_suffix(".py")
    return out


def _imports(tree: ast.Module):
    """Every import statement of a module, wherever it stands (module level, blocks, function bodies)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                    mod = ".".join(parts[:i])
                    if mod not in mods or mod == name:
                        continue
                    if i < len(parts) and name.startswith(mod + "."):
                        continue  # a package of this module: already being imported when this module runs
                    graph[name].add(mod)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[tuple[str, ...]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(cycle: tuple[str, ...], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in members]
    return f"{', '.join(cycle)} ({'; '.join(edges)})"


def test_the_graph_sees_real_imports():
    """The walker finds modules and edges it must find (guards against a test that passes by seeing nothing)."""
    graph = import_graph()
    assert {"cxrcore.jobs", "cxrcore.jobs.store", "cxrcore.train.trainer", "cxrcore.cli"} <= set(graph)
    assert "cxrcore.jobs.store" in graph["cxrcore.jobs"]            # relative `from .store import ...`
    assert "cxrcore.errors" in graph["cxrcore.jobs.store"]          # `from ..errors import JobError`
    assert "cxrcore.train.dist" in graph["cxrcore.train.trainer"]   # `from . import dist as dist_`
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_import_cycles_in_cxrcore():
    graph = import_graph()
    cycles = find_cycles(graph)
    known = set(KNOWN_CYCLES.values())
    new = [c for c in cycles if c not in known]
    gone = [name for name, c in KNOWN_CYCLES.items() if c not in cycles]
    assert not new, "import cycles in cxrcore:\n" + "\n".join(_describe(c, graph) for c in new)
    assert not gone, f"KNOWN_CYCLES entries that are no longer cycles (remove them): {gone}"


# The floors of ARCHITECTURE.md, ground first: a module may import its own floor and those below, never one
# above. Each entry is a module or a package (a package's modules share its floor).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("cxrcore", "cxrcore.errors", "cxrcore.workspace", "cxrcore.labels", "cxrcore.inference", "cxrcore.mdtext",
     "cxrcore.sqlitedb"),
    ("cxrcore.data",),
    ("cxrcore.models", "cxrcore.checkpoint"),
    ("cxrcore.explain",),
    ("cxrcore.predictor", "cxrcore.hosting"),
    ("cxrcore.compare", "cxrcore.results", "cxrcore.pacs", "cxrcore.score", "cxrcore.runtime", "cxrcore.monitorlog",
     "cxrcore.prior"),
    ("cxrcore.eval", "cxrcore.lens", "cxrcore.prior.evaluate"),
    ("cxrcore.train", "cxrcore.readerstudy", "cxrcore.lens.crossfit"),
    ("cxrcore.jobs",),
    ("cxrcore.cli", "cxrcore.api", "cxrcore.demo", "cxrcore.launch", "cxrcore.catalog", "cxrcore.runs"),
)
# Arrows that run up a floor on purpose, each with its reason (none may close a cycle: the test above).
UPWARD_ALLOWED: dict[tuple[str, str], str] = {
    ("cxrcore.eval.thresholds", "cxrcore.jobs.store"):
        "save rights: who owns a run is recorded in the job table (read inside save_target only)",
    ("cxrcore.eval.thresholds", "cxrcore.jobs"):
        "importing cxrcore.jobs.store runs the package's __init__ (the same lookup as above)",
}


def floor_of(module: str) -> int:
    best = None
    for i, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} stands on no floor of tests/project/test_imports.py FLOORS (and ARCHITECTURE.md)"
    return best[0]


def test_every_module_stands_on_a_floor():
    for module in import_graph():
        floor_of(module)


def test_imports_only_look_down():
    graph = import_graph()
    up = [f"{a} (floor {floor_of(a)}) -> {b} (floor {floor_of(b)})" for a in sorted(graph) for b in sorted(graph[a])
          if floor_of(b) > floor_of(a) and (a, b) not in UPWARD_ALLOWED]
    assert not up, "imports that run up a floor (ARCHITECTURE.md):\n" + "\n".join(up)
    used = {(a, b) for a in graph for b in graph[a]}
    assert set(UPWARD_ALLOWED) <= used, f"UPWARD_ALLOWED entries no longer imported: {set(UPWARD_ALLOWED) - used}"
