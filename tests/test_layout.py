"""The package's shape: no import circles, imports only in the allowed directions, short modules
and functions. Read from the source with `ast`, so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "separator"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# A function longer than the limit says why in a comment containing this, on its `def` line or
# the line above it.
LONG_OK = "long function:"

# Part -> parts it must never import (DESIGN.md "Directions").
FORBIDDEN = {
    "nn": {"zoo", "inference", "evaluation", "training", "cli", "datasets", "files"},
    "names": {"nn", "zoo", "inference", "evaluation", "training", "cli", "datasets", "files"},
    "zoo": {"inference", "evaluation", "training", "cli", "datasets"},
    "inference": {"training", "evaluation", "cli", "datasets"},
    "evaluation": {"cli", "training"},
    "training": {"cli"},
    "datasets": {"cli", "training", "evaluation", "zoo"},
    "files": {"nn", "zoo", "inference", "evaluation", "training", "cli", "datasets"},
    "errors": {
        *("nn", "zoo", "inference", "evaluation", "training", "cli", "datasets", "files", "names")
    },
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `name` imports (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import sub` runs pkg/__init__ first: the package counts as imported too
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` imports a.b.c's package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circles(graph):
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_imports_follow_the_directions(graph):
    wrong = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        for t in targets
        if _part(t) in FORBIDDEN.get(_part(m), set())
    ]
    assert not wrong, "\n".join(wrong)


def test_nn_imports_only_errors_names_and_itself(graph):
    """`names` is a leaf (it imports only the errors): the one safe-name rule nn shares."""
    outside = {
        t for m, ts in graph.items() if _part(m) == "nn" for t in ts if _part(t) not in ("nn",)
    }
    assert outside <= {"separator.errors", "separator.names"}, outside
    assert graph["separator.names"] <= {"separator.errors"}


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for name, path in _modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            said = " ".join(lines[max(0, node.lineno - 2) : node.lineno])
            if length > MAX_FUNCTION_LINES and LONG_OK not in said:
                long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_public_api_imports_from_the_top():
    from separator import Separator, load_model, load_separator, separate_tensor
    from separator.nn import BSRoformer, MelBandRoformer

    assert callable(load_model) and callable(load_separator) and callable(separate_tensor)
    assert Separator.__name__ == "Separator"
    assert BSRoformer.__name__ == "BSRoformer" and MelBandRoformer.__name__ == "MelBandRoformer"
