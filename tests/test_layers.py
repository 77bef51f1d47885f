"""The package's layers: no module imports one above it (not even lazily, inside a function),
and the modules of one layer import each other without a circle."""

import ast
import os

import get3dhuman

# Bottom to top. A module may import its own layer and those below it.
LAYERS = (
    ("_checks", "_ext", "claims", "distributed", "run_settings"),
    ("kernels",),
    ("ops",),
    ("render", "mesh", "texture"),
    ("nn", "losses"),
    ("synthetic",),
    ("refine", "scans", "evaluate", "benchmark", "authors", "info"),
    ("train",),
    ("previews",),
    ("dataset", "verify"),
    ("applications",),
    ("cli", "cli_arguments", "__init__"),
)
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PACKAGE_DIR = os.path.dirname(get3dhuman.__file__)


def _units() -> dict[str, str]:
    """{module name: path} of every module of the installed package (its kernels included)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, PACKAGE_DIR)[: -len(".py")].split(os.sep)
                modules[".".join(["get3dhuman", *parts]).removesuffix(".__init__")] = path
    return modules


def _imports(module: str, path: str, modules) -> set[str]:
    """The get3dhuman modules `module` imports anywhere in its file."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target.split(".")[0] == "get3dhuman" and target != module)
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert {_unit(module) for module in _units()} <= set(LEVEL), "add new modules to LAYERS"


def test_no_module_imports_a_layer_above_its_own():
    modules = _units()
    upward = sorted(f"{module} -> {target}" for module, path in modules.items() for target in _imports(module, path, modules)
                    if LEVEL[_unit(target)] > LEVEL[_unit(module)])
    assert upward == []


def test_the_units_of_a_layer_import_each_other_without_a_circle():
    modules = _units()
    edges = {}
    for module, path in modules.items():
        for target in _imports(module, path, modules):
            if _unit(target) != _unit(module):
                edges.setdefault(_unit(module), set()).add(_unit(target))
    state = {}

    def visit(unit, trail):
        if state.get(unit) == "open":
            raise AssertionError(f"import circle: {' -> '.join([*trail, unit])}")
        if state.get(unit) is None:
            state[unit] = "open"
            for target in sorted(edges.get(unit, ())):
                visit(target, [*trail, unit])
            state[unit] = "done"

    for unit in sorted(edges):
        visit(unit, [])
