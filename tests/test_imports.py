"""The project's modules import each other without cycles.

Every `import pipelines...` / `from operators... import ...` in operators/ and pipelines/ counts, at module
level and inside functions alike (a function-local import is a dependency too; hiding one in a function
only defers the cycle). Imports under `if TYPE_CHECKING:` never run and are left out. Importing a.b.c runs
a/__init__ and a/b/__init__ first, so those count as well.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("operators", "pipelines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, anywhere in the tree, except the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """`name` and the packages above it that are project modules (their __init__ runs first)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def _resolve(node: ast.Import | ast.ImportFrom, importer: str, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return set().union(*(_with_parents(alias.name, modules) for alias in node.names))
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer.split(".") if modules[importer].name == "__init__.py" else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(filter(None, [*package, base]))
    targets = _with_parents(base, modules)
    for alias in node.names:  # `from pipelines.verbs import audit`: the submodule
        if f"{base}.{alias.name}" in modules:
            targets.add(f"{base}.{alias.name}")
    return targets


def imported_by(source: str, name: str, modules: dict[str, Path]) -> dict[str, int]:
    """{project module that module `name` (whose text is `source`) imports: line of the first such import}."""
    edges: dict[str, int] = {}
    for node in _imports(ast.parse(source)):
        for target in _resolve(node, name, modules):
            if target != name:
                edges.setdefault(target, node.lineno)
    return edges


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    modules = project_modules()
    return {name: imported_by(path.read_text(), name, modules) for name, path in modules.items()}


def knots(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, {})):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per knot."""
    return [_cycle_in(graph, knot) for knot in knots(graph)]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target not in component:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    modules = project_modules()
    steps = [f"  {a} -> {b}  ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_graph_sees_module_level_and_local_imports():
    graph = import_graph()
    assert "pipelines.core.storage" in graph["pipelines.core.duck"]  # module level
    assert "pipelines.demo" in graph["pipelines.demo.train_clip"]  # the parent package of .training
    assert "pipelines.demo.web.world" in graph["pipelines.demo.train_clip"]  # `from pkg import module`
    source = """
from typing import TYPE_CHECKING
import pipelines.core.sources
if TYPE_CHECKING:
    from pipelines.verbs.annotate import annotate
else:
    from pipelines.verbs.select import select
def run():
    from pipelines.verbs.metaclip import balance
    class Step:
        def go(self):
            from operators import table
"""
    edges = imported_by(source, "pipelines.example", project_modules())
    assert edges == {"pipelines": 3, "pipelines.core": 3, "pipelines.core.sources": 3, "pipelines.verbs": 7,
                     "pipelines.verbs.select": 7, "pipelines.verbs.metaclip": 9, "operators": 12, "operators.table": 12}


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    found = knots(graph)
    assert not found, "import cycles among the project's modules:\n" + "\n".join(
        f"{describe(graph, _cycle_in(graph, knot))}\n  (all modules in this knot: {', '.join(sorted(knot))})"
        for knot in found)


# ---------------------------------------------------------------- one owner of the run folder's layout

RUN_FOLDERS = ("annotations", "images", "embeddings", "input", "_done", "_staging", "logs", "metadata", "match",
               "subsets", "fetch-inputs", "dedup", "captions", "audit", "evaluate")
RUN_FILES = ("manifest.parquet", "decisions.parquet", "stats.json", "recipe.yaml", "_audit.json", "_summary.json",
             "_settings.json", "_match.json", "fetched_from.json", "entry_counts.parquet")
OWNER = "pipelines.core.storage"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (documentation may name the layout)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _run_paths_named(tree: ast.AST) -> list[str]:
    """Where a module builds a RUN/ path from a string: a literal naming a RUN/ folder as a path part
    ('subsets/', '/tags' after one) or a run file name, or a folder name given to join/list. Text that says
    "RUN/" is a message naming the layout to the user, not a path."""
    skip = _docstrings(tree)
    folder = "|".join(re.escape(f) for f in RUN_FOLDERS)
    path_part = re.compile(rf"(^|/)({folder})/")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if "RUN/" in text:
                continue
            if path_part.search(text) or any(text == f or text.endswith("/" + f) for f in RUN_FILES):
                found.append(f"line {node.lineno}: {text[:60]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("join", "list") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and first.value in RUN_FOLDERS:
                found.append(f"line {node.lineno}: .{node.func.attr}({first.value!r}, ...)")
    return found


def test_only_the_run_folder_owner_names_paths_under_RUN():
    """pipelines/core/storage.py (RunPaths and the Subset, Audit, CaptionSet, Evaluation it hands out) names every path
    under RUN/; a module that builds one from a string would be a second answer to where a thing lives."""
    offenders = {}
    for name, path in project_modules().items():
        if name == OWNER:
            continue
        found = _run_paths_named(ast.parse(path.read_text()))
        if found:
            offenders[name] = found
    assert offenders == {}


def test_the_owner_check_finds_a_path_built_from_a_string():
    tree = ast.parse('def f(paths, name):\n    """RUN/subsets/NAME/stats.json"""\n'
                     '    return paths.join("subsets", name, "stats.json"), f"{paths.root}/audit/{name}/tags"\n')
    assert len(_run_paths_named(tree)) == 3
