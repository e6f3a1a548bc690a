"""The floors of docs/architecture.md: no import circle, no import back up or beside.

Every import of every module under src/cellae/ is read, those inside functions too (an import
hidden in a function still ties the modules), and resolved to the module it loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cellae"

# docs/architecture.md's table; a module is on the floor of the longest prefix that names it
FLOORS = {
    "cellae.errors": 0, "cellae.files": 0, "cellae.images": 0, "cellae.naming": 0,
    "cellae.columns": 0, "cellae.registry": 0, "cellae.repeats": 0, "cellae.machine": 0,
    "cellae.plots": 0, "cellae.explorer": 0, "cellae.typed_config": 0, "cellae.sections": 0,
    "cellae.data": 1, "cellae.models": 1, "cellae.runs": 1,
    "cellae.evaluation": 2,
    "cellae.config": 3,
    "cellae.run_inputs": 4,
    "cellae.api": 5,
    "cellae": 5.5,  # the package's face: hands on load_run
    "cellae.evaluate": 6,
    "cellae.training": 7, "cellae.embed": 7,
    "cellae.sweep": 8, "cellae.report": 8,
    "cellae.cli": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> float:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise AssertionError(f"{module} has no floor in FLOORS (tests/test_architecture.py); "
                         f"give it one, as docs/architecture.md places it")


def stage_of(module: str) -> str:
    """The package a module belongs to (cellae.data, cellae.sweep, ...), or the module itself."""
    return ".".join(module.split(".")[:2])


def imports_of(module: str) -> list[tuple[str, int]]:
    """The cellae modules ``module`` imports, with the line of each import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                # `from cellae import runs` loads the module cellae.runs, not the package's face
                child = f"{base}.{alias.name}"
                found.append((child if child in MODULES else base, node.lineno))
    return [(name, line) for name, line in found if name == "cellae" or name.startswith("cellae.")]


def test_every_module_has_a_floor():
    for module in MODULES:
        floor_of(module)


def test_no_import_runs_back_up_or_beside():
    wrong = []
    for module in MODULES:
        own = floor_of(module)
        for target, line in imports_of(module):
            if target not in MODULES:
                wrong.append(f"{module}:{line} imports {target}, which is no module")
                continue
            theirs = floor_of(target)
            same_package = stage_of(target) == stage_of(module) and module != "cellae"
            if theirs > own or (theirs == own and own > 0 and not same_package):
                wrong.append(f"{module} (floor {own}) line {line} imports {target} (floor {theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {module: {t for t, _ in imports_of(module) if t in MODULES and t != module}
             for module in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_import_hidden_in_a_function(tmp_path):
    # the rule reads imports inside functions, where a circle used to hide (config.py)
    names = [name for name, _ in imports_of("cellae.cli")]
    assert "cellae.training" in names and "cellae.sections" in names
