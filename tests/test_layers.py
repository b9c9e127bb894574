"""The package's layering (docs/architecture.md): a module imports only from its own layer or below,
and no module outgrows a newcomer's read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastsider"
MAX_LINES = 450

# the layers of docs/architecture.md, top (8) to ground (1); a module's layer is its longest prefix's
LAYERS = {
    "fastsider.cli": 8,
    "fastsider.eval": 7,
    "fastsider.stages": 6,
    "fastsider.objective": 5,
    "fastsider.model": 4, "fastsider.render": 4,
    "fastsider.nn": 3, "fastsider.sdf": 3, "fastsider.face": 3, "fastsider.io": 3, "fastsider.pictures": 3,
    "fastsider.export": 3,
    "fastsider.config": 2, "fastsider.camera": 2,
    "fastsider.report": 1, "fastsider.errors": 1, "fastsider": 1,
}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The fastsider modules a file imports, also inside functions (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastsider"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fastsider"))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_layer_of_a_module():
    assert layer("fastsider.nn.fields") == 3 and layer("fastsider.stages.fit") == 6 and layer("fastsider") == 1


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_a_layer(path):
    here = layer(module_name(path))
    upward = sorted(m for m in imports(path) if layer(m) > here)
    assert not upward, f"{module_name(path)} (layer {here}) imports from above: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_size_limit(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name}: {n} lines"
