"""The layering ARCHITECTURE.md draws, checked on the source: every import statement (module level or inside a
function) of planner/, runner/ and benchmarks/ is an arrow between two files."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("planner", "runner", "benchmarks")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The file a dotted name lives in: the longest known module prefix."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> dict[str, int]:
    """{imported project module: line} of one file; `from pkg import sub` is an arrow to pkg.sub itself."""
    known = modules()
    path = known[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            owner = _owner(target, known)
            if owner is not None and owner != module:
                found.setdefault(owner, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    return {m: imports_of(m) for m in modules()}


def loops(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _describe(comp: list[str], graph) -> str:
    arrows = [f"{a} -> {b} (line {graph[a][b]})" for a in comp for b in sorted(graph[a]) if b in comp]
    return "loop: " + "; ".join(arrows)


def test_the_loop_finder_finds_a_loop():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert loops(graph) == [["a", "b", "c"]]
    assert loops({"a": {"b": 1}, "b": {}}) == []


def test_no_import_loops():
    graph = import_graph()
    assert len(graph) > 100  # the walk found the project
    found = loops(graph)
    assert not found, "\n".join(_describe(c, graph) for c in found)


def _third_party_imports(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.setdefault(a.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.setdefault(node.module.split(".")[0], node.lineno)
    return out


def test_click_only_in_the_command_line():
    bad = [f"{p.relative_to(ROOT)}:{line}" for m, p in modules().items()
           if not m.startswith("planner.cli") and (line := _third_party_imports(p).get("click"))]
    assert not bad, f"click imported outside planner/cli: {bad}"


def test_the_planner_core_never_imports_the_runner():
    graph = import_graph()
    bad = [f"{modules()[m].relative_to(ROOT)}:{line} imports {t}" for m, targets in graph.items()
           if m.startswith("planner") and not m.startswith("planner.cli")
           for t, line in targets.items() if t.startswith("runner")]
    assert not bad, bad


def test_the_runner_imports_nothing_from_the_command_line():
    graph = import_graph()
    bad = [f"{modules()[m].relative_to(ROOT)}:{line} imports {t}" for m, targets in graph.items()
           if m.startswith("runner") for t, line in targets.items() if t.startswith("planner.cli")]
    assert not bad, bad
