"""The package's shape: every import of every lczmap module (at module level, inside functions, under TYPE_CHECKING)
follows one direction, the layer order of the data flow, with no cycle; the pipeline's largest modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# lczmap's modules and packages from the bottom up: each may import only those before it (a package's own modules
# import each other freely, without a cycle). The pipeline reads grid -> sources -> stage -> tiling -> plan ->
# inference -> mosaic -> report -> outputs -> predict -> region -> batch; the others sit where their imports put them.
LAYERS = (
    "lczmap",  # the package itself: its version
    "lczmap.errors",
    "lczmap.classes",
    "lczmap.console",
    "lczmap.data",
    "lczmap.ground",
    "lczmap.process",
    "lczmap.metrics",
    "lczmap.locking",
    "lczmap.atomic",
    "lczmap.cluster",
    "lczmap.grid",
    "lczmap.sources",
    "lczmap.config",
    "lczmap.aoi",
    "lczmap.fetch",
    "lczmap.reference",
    "lczmap.demo",
    "lczmap.nets",
    "lczmap.card",
    "lczmap.stage",
    "lczmap.models_store",
    "lczmap.tiling",
    "lczmap.plan",
    "lczmap.guard",
    "lczmap.inference",
    "lczmap.mosaic",
    "lczmap.report",
    "lczmap.outputs",
    "lczmap.predict",
    "lczmap.region",
    "lczmap.batch",
    "lczmap.train",
    "lczmap.evaluate",
    "lczmap.cli",
)
# The modules the issue that split them keeps under this many lines, each describable in one sentence.
SMALL = ("lczmap/predict.py", "lczmap/region.py", "lczmap/sources/**/*.py")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every lczmap module by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in (REPO / "lczmap").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lczmap modules `path` imports anywhere in its text: module level, functions, `if TYPE_CHECKING:` blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg's own names
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ that imports its own modules (to re-export or register them) is their sum, not something
    # they build on: those edges are left out, so a module that imports its package's own names is no cycle.
    return {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}


def _layer(name: str) -> int:
    """The index in LAYERS of the module or package that holds `name` ("lczmap" holds only the package's __init__)."""
    for i, unit in enumerate(LAYERS):
        if name == unit or (unit != "lczmap" and name.startswith(unit + ".")):
            return i
    raise AssertionError(f"{name} has no place in tests/test_architecture.py LAYERS: add it where its imports put it")


def test_no_import_cycle_in_lczmap():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_every_module_imports_only_from_the_layers_below_it():
    """No module imports from one above it in the data flow (a package's own modules share their package's layer)."""
    upward = [f"{module} imports {dep}, which sits above it in LAYERS"
              for module, deps in sorted(_graph().items()) for dep in sorted(deps) if _layer(dep) > _layer(module)]
    assert not upward, "\n".join(upward)


def test_plans_sit_below_inference_and_predict():
    """The plan of a map is data the pipeline's steps read, never a module that imports them."""
    graph = _graph()
    assert not graph["lczmap.plan"] & {"lczmap.inference", "lczmap.predict", "lczmap.outputs", "lczmap.region"}
    assert "lczmap.predict" not in graph["lczmap.inference"]


def test_the_pipelines_largest_modules_stay_under_400_lines():
    for pattern in SMALL:
        for path in sorted(REPO.glob(pattern)):
            lines = len(path.read_text().splitlines())
            assert lines < MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it by job (issue 19)"
