"""The package's layout: no import cycles, and no function-level imports of
its own modules except where one keeps an optional front end (click,
tabulate, gdb, or drgn, which the gdb front end runs without) out of the
library's import path.

Both read the sources with ``ast``; nothing is imported."""

import ast
import pathlib
import sys
from typing import Dict, List, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "mminspect"
#: Imported lazily by design: a module that pulls one of these in may be
#: imported inside a function, so that the library's import path stays free of it.
OPTIONAL = {"click", "tabulate", "gdb", "drgn"}

#: Modules allowed a lazy import of the package's own modules for another
#: reason than an optional front end: none.
PENDING: set = set()


def _modules() -> Dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(mod: str, is_pkg: bool, node: ast.AST) -> List[str]:
    """The modules (of this package or not) an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _own(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else ""


def _imports() -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """Per module: the modules it imports at module level (its own and
    others'), and every function-level import of its own modules."""
    top: Dict[str, Set[str]] = {m: set() for m in MODULES}
    lazy: List[Tuple[str, int, str]] = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, in_func: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue  # annotations only
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for name in _resolve(mod, is_pkg, child):
                        own = _own(name)
                        if in_func and own and own != mod:
                            lazy.append((mod, child.lineno, own))
                        elif not in_func:
                            top[mod].add(own or name.split(".")[0])
                visit(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(tree, False)
    own_top = {m: {t for t in ts if t in MODULES and t != m} for m, ts in top.items()}
    return top, own_top, lazy


TOP, OWN_TOP, LAZY = _imports()


def _pulls_optional(mod: str) -> bool:
    """Whether importing ``mod`` imports an optional front end."""
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if TOP.get(m, set()) & OPTIONAL:
            return True
        todo += OWN_TOP.get(m, ())
    return False


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_checks_see_the_package():
    assert "mminspect.walk.walker" in MODULES and "mminspect.kernel" in MODULES
    assert "mminspect.kernel" in OWN_TOP["mminspect.walk.walker"]
    assert "numpy" in TOP["mminspect.walk.walker"]
    assert _pulls_optional("mminspect.target.drgn") and not _pulls_optional("mminspect.walk.walker")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Module-level and function-level imports alike (a lazy import only
    hides a cycle); the lazy imports of PENDING modules wait for them."""
    graph = {m: set(OWN_TOP[m]) for m in MODULES}
    for mod, _, target in LAZY:
        if mod not in PENDING:
            graph[mod].add(target)
    assert _cycles(graph) == []


def test_no_function_level_imports_of_own_modules():
    bad = [f"{mod}:{line} imports {target} inside a function"
           for mod, line, target in LAZY
           if mod not in PENDING and not _pulls_optional(target)]
    assert bad == []

