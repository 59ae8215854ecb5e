"""Upstream's own formatting checks (its .pre-commit-config.yaml), run offline.

pre-commit would clone each hook's repository from GitHub, so the same tools at
the same versions come from PyPI instead.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..progress import detail
from .venv import kept_venv

# pre-commit hook id -> the PyPI package of the same tool (revs lose their leading v)
HOOK_PACKAGES = {
    "clang-format": "clang-format",
    "black": "black",
    "isort": "isort",
    "cmake-format": "cmakelang",
}


@dataclass(frozen=True)
class Hook:
    id: str
    version: str
    args: tuple[str, ...]
    files: str | None


def parse_hooks(config: str) -> list[Hook]:
    """The hooks of a .pre-commit-config.yaml, for the simple layout upstream uses."""
    hooks = []
    for block in re.split(r"^\s*-\s+repo:", config, flags=re.MULTILINE)[1:]:
        rev = re.search(r"^\s*rev:\s*(\S+)", block, flags=re.MULTILINE)
        for hook in re.split(r"^\s*-\s+id:", block, flags=re.MULTILINE)[1:]:
            hook_id = hook.split()[0]
            files = re.search(r"^\s*files:\s*(\S+)", hook, flags=re.MULTILINE)
            args = re.findall(r"^\s*-\s+(--\S+)", hook, flags=re.MULTILINE)
            if rev and hook_id in HOOK_PACKAGES:
                hooks.append(
                    Hook(hook_id, rev.group(1).lstrip("v"), tuple(args), files and files.group(1))
                )
    return hooks


def ensure_tools(venv: Path, hooks: list[Hook]) -> Path:
    """The folder of the hooks' tools, at the versions upstream pins."""
    wanted = [f"{HOOK_PACKAGES[h.id]}=={h.version}" for h in hooks]
    return kept_venv(venv, wanted).parent


def _command(hook: Hook, bin_dir: Path, files: list[str]) -> list[str]:
    tool = str(bin_dir / hook.id)
    if hook.id == "clang-format":
        return [tool, "--dry-run", "--Werror", *files]
    if hook.id == "black":
        # --diff, so that a failure says what to change.
        return [tool, "--check", "--diff", *hook.args, *files]
    if hook.id == "isort":
        return [tool, "--check-only", *hook.args, *files]
    return [tool, "--check", *files]


def _default_files(hook_id: str) -> str:
    return {
        "clang-format": r"\.(h|cpp)$",
        "black": r"\.pyi?$",
        "isort": r"\.pyi?$",
        "cmake-format": r"(CMakeLists\.txt|\.cmake)$",
    }[hook_id]


def check_formatting(tree: Path, changed: list[str], venv: Path) -> list[str]:
    """Run each hook on the changed files; return one line per failure."""
    config = tree / ".pre-commit-config.yaml"
    hooks = parse_hooks(config.read_text())
    bin_dir = ensure_tools(venv, hooks)
    problems = []
    for hook in hooks:
        pattern = re.compile(hook.files or _default_files(hook.id))
        files = [f for f in changed if pattern.search(f) and (tree / f).exists()]
        if not files:
            continue
        proc = subprocess.run(
            _command(hook, bin_dir, files), cwd=tree, capture_output=True, text=True
        )
        status = "ok" if proc.returncode == 0 else "FAILED"
        detail(f"{hook.id} {hook.version} on {len(files)} files: {status}")
        if proc.returncode != 0:
            problems.append(f"{hook.id}: {(proc.stdout + proc.stderr).strip()[:2000]}")
    return problems
