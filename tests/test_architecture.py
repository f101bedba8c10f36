"""The package's layers, read from the code's own import statements: imports run one way, with no circle.

    entry points   cli, train (the `cdra` and `cdra-train` commands), demo/ (`cdra demo`)
    host adapters  openrlhf/, trl/           the only code that imports OpenRLHF or TRL
    services       prm/, data/, construct/, eval/, traces/
    core           cdpa/, llm/, io/
    stand-ins      stub/                     scripted servers and the tiny model: imported by demo/ only

A module may import its own layer's modules and those below; the package root holds entry points only; no product
code (adapters, services, core) imports a stand-in. docs/architecture.md draws the same.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cdra_plugin"
LAYERS = {
    "entry": {"cli", "train", "demo"},
    "adapter": {"openrlhf", "trl"},
    "service": {"prm", "data", "construct", "eval", "traces"},
    "core": {"cdpa", "llm", "io", "__init__"},
    "stand-in": {"stub"},
}
RANK = {"stand-in": 0, "core": 0, "service": 1, "adapter": 2, "entry": 3}
ROOT_MODULES = {"__init__", "cli", "train"}
HOSTS = {"openrlhf", "trl", "deepspeed", "vllm", "ray"}


def layer_of(unit: str) -> str:
    return next(name for name, units in LAYERS.items() if unit in units)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            if node.module == "cdra_plugin":  # `from cdra_plugin import cli` names a unit
                found += [(node.lineno, f"cdra_plugin.{alias.name}") for alias in node.names]
    return found


def test_every_unit_has_a_layer():
    units = {unit for _, unit in modules()}
    assert units <= set().union(*LAYERS.values()), units - set().union(*LAYERS.values())


def test_the_package_root_holds_entry_points_only():
    assert {p.stem for p in PACKAGE.glob("*.py")} == ROOT_MODULES


@pytest.mark.parametrize(
    "path, unit", list(modules()), ids=lambda x: str(x.relative_to(PACKAGE)) if isinstance(x, Path) else ""
)
def test_imports_run_down_the_layers(path, unit):
    here = layer_of(unit)
    wrong = []
    for line, module in imports(path):
        top, *rest = module.split(".")
        if top in HOSTS and unit != top and not (top in ("deepspeed", "vllm", "ray") and unit == "openrlhf"):
            wrong.append(
                f"line {line}: {module} (only cdra_plugin/{top if top in ('openrlhf', 'trl') else 'openrlhf'}/ may)"
            )
        if top == "cdra_plugin" and rest and rest[0] in set().union(*LAYERS.values()):
            target = layer_of(rest[0])
            if rest[0] != unit and RANK[target] > RANK[here]:
                wrong.append(f"line {line}: {module} ({here} imports {target})")
            if target == "stand-in" and unit not in ("stub", "demo"):
                wrong.append(f"line {line}: {module} (only demo/ may use the stand-ins)")
    assert not wrong, f"{path.relative_to(PACKAGE)}: " + "; ".join(wrong)


def test_units_do_not_import_each_other_in_a_circle():
    edges = {}
    for path, unit in modules():
        for _, module in imports(path):
            top, *rest = module.split(".")
            if top == "cdra_plugin" and rest and rest[0] != unit:
                edges.setdefault(unit, set()).add(rest[0])

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges.get(start, ()))

    circles = sorted(unit for unit in edges if reaches(unit, unit))
    assert not circles, f"import circles through {circles}"
