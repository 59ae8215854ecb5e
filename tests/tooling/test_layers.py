"""The tooling's layers stay apart, and its tests need no MLX.

scripts/mlxrtools/ is base modules (errors, layout, progress), then queue/,
then environment/, then verbs/; payloads/ runs inside the wheel's venv apart
from all of them. A module imports only from its own layer and the ones below;
a verb never imports another verb.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "scripts" / "mlxrtools"
BASE = {"mlxrtools", "mlxrtools.errors", "mlxrtools.layout", "mlxrtools.progress"}
# What each layer may import from mlxrtools, besides itself.
BELOW = {
    "base": set(),
    "queue": {"base"},
    "environment": {"base", "queue"},
    "verbs": {"base", "queue", "environment", "payloads"},
    "payloads": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    return module.split(".")[1]


def imported(module: str) -> set[str]:
    """The mlxrtools modules that `module` imports, at its top or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import pinned_deps` imports a module; `from .x import name` imports x.
            subs = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found |= subs or {target}
    return {m for m in found if m == "mlxrtools" or m.startswith("mlxrtools.")}


def test_every_module_has_a_layer() -> None:
    assert {layer(m) for m in MODULES} <= set(BELOW)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_below(module: str) -> None:
    allowed = BELOW[layer(module)] | {layer(module)}
    wrong = {m for m in imported(module) if layer(m) not in allowed}
    assert not wrong, f"{module} ({layer(module)}) imports {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "verbs"))
def test_a_verb_imports_no_other_verb(module: str) -> None:
    verbs = {m for m in imported(module) if layer(m) == "verbs"}
    assert verbs <= {"mlxrtools.verbs"}, f"{module} imports {sorted(verbs)}"


def test_only_the_bench_options_cross_from_the_payloads() -> None:
    crossing = {
        m for v in MODULES if layer(v) == "verbs" for m in imported(v) if layer(m) == "payloads"
    }
    assert crossing == {"mlxrtools.payloads.bench_options"}


def test_build_paths_are_named_only_in_layout() -> None:
    """No module joins "build" (or "build/...") to a path itself: Layout names them."""
    for module, path in MODULES.items():
        if module == "mlxrtools.layout":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                assert value != "build" and not value.startswith("build/"), (module, value)


def test_the_tooling_imports_no_mlx_torch_or_numpy() -> None:
    """Everything but the payloads' measuring modules runs without the wheel."""
    measuring = {
        "mlxrtools.payloads.bench_mlx",
        "mlxrtools.payloads.decode_mlx",
        "mlxrtools.payloads.models_mlx",
        "mlxrtools.payloads.torch_baselines",
    }
    names = sorted(set(MODULES) - measuring)
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted({'mlx', 'torch', 'numpy'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "scripts",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


def test_the_tooling_tests_import_no_mlx_or_torch() -> None:
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not {n.split(".")[0] for n in names} & {"mlx", "torch"}, path.name
