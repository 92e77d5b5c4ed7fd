"""The layer rule of docs/architecture.md, checked on the code: a module of kdlab imports
only from its own package or from packages of lower layers (lazy imports inside functions
count too). A new top-level package must be given a layer here and in the doc."""

import ast
from pathlib import Path

import kdlab

# Higher numbers sit higher; data flows top to bottom.
LAYERS = {
    "__main__": 11,
    "cli": 10, "api": 10,
    "pipelines": 9, "bench": 9, "tune": 9,
    "stages": 8,
    "report": 7, "tracking": 7,
    "engine": 6,
    "methods": 5,
    "tasks": 4,
    "knowledge": 3, "models": 3, "data": 3,
    "config": 2,
    "registry": 1, "store": 1,
    "errors": 0, "seeding": 0,
}
ROOT = Path(kdlab.__file__).parent


def package_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdlab."):
            out.append((node.module.split(".")[1], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], node.lineno) for a in node.names if a.name.startswith("kdlab.")]
    return out


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYERS), f"give these packages a layer: {sorted(packages - set(LAYERS))}"


def test_imports_point_down_only():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        pkg = package_of(path)
        if pkg == "__init__":
            continue
        for target, line in imports(path):
            if target != pkg and LAYERS.get(target, 99) >= LAYERS[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({pkg}) imports {target}")
    assert not bad, "imports pointing up or sideways:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: an engine module importing the pipelines would be reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from kdlab.pipelines.distill import run_distill\n")
    assert imports(f) == [("pipelines", 2)] and LAYERS["pipelines"] > LAYERS["engine"]
