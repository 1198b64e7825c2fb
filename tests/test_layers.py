"""The package is a house in layers: every import goes down (or sideways within a layer), never up,
and no chain of imports closes a circle. Imports inside functions count; ``if TYPE_CHECKING:``
blocks do not (they never run)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom first. A module belongs to the layer of its top-level name under kdscope; the package root
# (kdscope/__init__.py, the public API) is above everything.
LAYERS: list[tuple[str, ...]] = [
    ("registry", "features", "config", "distributed"),
    ("models", "data", "metrics", "analysis"),
    ("methods",),
    ("train",),
    ("api", "evaluation", "explain"),
    ("pipelines", "study", "audit"),
    ("cli", "demo"),
    ("__init__",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST, module: str, is_package: bool, modules: set[str]):
    """(line, imported kdscope module) for every import that runs, nested ones included."""
    package = module if is_package else module.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "kdscope":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "kdscope":
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    yield node.lineno, candidate if candidate in modules else base
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path) -> dict[str, list[tuple[int, str, Path]]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = imports_of(tree, module, path.name == "__init__.py", modules)
        graph[module] = [(line, target, path) for line, target in edges if target != module]
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def problems(root: Path) -> list[str]:
    graph = import_graph(root)
    found = []
    for module, edges in graph.items():
        for line, target, path in edges:
            src, dst = layer_of(module), layer_of(target)
            if src not in RANK or dst not in RANK:
                unknown = src if src not in RANK else dst
                found.append(
                    f"{path}:{line}: kdscope.{unknown} is in no layer of tests/test_layers"
                )
            elif RANK[dst] > RANK[src]:
                found.append(
                    f"{path}:{line}: {module} (layer {RANK[src]}) imports {target} from the "
                    f"higher layer {RANK[dst]}"
                )
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, list[tuple[int, str, Path]]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for _, w, _ in graph.get(v, []):
            if w not in graph:
                continue
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_kdscope_imports_only_downward_and_without_cycles():
    found = problems(SRC)
    assert not found, "\n".join(found)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "kdscope" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "config.py": "def f():\n    from kdscope.methods import METHODS\n",
            "methods/__init__.py": "METHODS = {}\n",
        },
    )
    (found,) = problems(root)
    assert "config.py:2" in found and "higher layer" in found


def test_a_cycle_within_a_layer_is_caught_and_type_checking_is_not(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "analysis/__init__.py": "",
            "analysis/a.py": "from kdscope.analysis.b import g\n",
            "analysis/b.py": "def g():\n    from kdscope.analysis import a\n",
            "analysis/c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from kdscope.analysis.d import X\n"
            ),
            "analysis/d.py": "from kdscope.analysis.c import Y\n",
        },
    )
    (found,) = problems(root)
    assert found == "import cycle: kdscope.analysis.a -> kdscope.analysis.b"


def test_no_public_name_shadows_a_module():
    """``import kdscope.explain as E`` must give the subpackage, not a function bound over it."""
    import importlib
    import pkgutil

    import kdscope

    for info in pkgutil.iter_modules(kdscope.__path__):
        module = importlib.import_module(f"kdscope.{info.name}")
        assert getattr(kdscope, info.name) is module, f"kdscope.{info.name} is shadowed"


def test_import_explain_as_a_module_gives_its_functions():
    import kdscope.explain as E

    assert callable(E.grad_cam) and callable(E.unicam) and callable(E.explain_student)
