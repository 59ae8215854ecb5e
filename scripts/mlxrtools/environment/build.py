"""Full mlx wheels from an MLX tree (the applied one by default), offline and cached.

MLX's own setup.py drives the build, through pip, in the build venv. Every
dependency upstream's CMake would download is supplied at its pin
(dependencies.py), every compile goes through ccache, and a wheel is rebuilt
only when its inputs change.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..layout import Layout
from ..progress import detail, say
from ..queue.git import git, head
from ..queue.tree import apply, unexported_work
from . import pinned_deps
from .adoption_wheel import build_adoption_wheel
from .cuda_deps import cuda_cmake_args
from .dependencies import DepsOptions, pinned_sources
from .prerequisites import ensure_requirements
from .venv import kept_venv, pip_command
from .wheel_checks import check_bundled_versions, check_shared_libstdcxx
from .wheels import WheelSlot

BUILD_REQUIREMENTS = ("setuptools>=80", "wheel", "typing_extensions")
_PROGRESS = re.compile(r"^\s*\[\d+/\d+\]")
_ERROR = re.compile(r"error:|FAILED:|CMake Error")


@dataclass(frozen=True)
class BuildOptions:
    """How to build: the options of `mlxr.py build`."""

    backend: str = "auto"  # auto, cpu, metal or cuda
    jobs: int | None = None
    force: bool = False  # rebuild even if the wheel is current
    source: Path | None = None  # a prepared tree to build as it is, instead of the series
    cuda_archs: str = "native"
    deps: DepsOptions = field(default_factory=DepsOptions)
    wheel_dir: Path | None = None  # instead of wheels/
    label: bool = True  # with `source`: the +mlxr version label, or none (a baseline)


@dataclass(frozen=True)
class Built:
    wheel: Path
    adoption_wheel: Path | None  # None where a prepared `source` tree was built


def mlxr_version(layout: Layout) -> str:
    with open(layout.pyproject, "rb") as f:
        return tomllib.load(f)["project"]["version"]


def local_label(layout: Layout) -> str:
    return "mlxr" + mlxr_version(layout)


def build_tools() -> list[str]:
    """CMake and Ninja from PyPI, where the machine has none of its own."""
    tools = []
    cmake = shutil.which("cmake")
    if cmake is None or _cmake_version(cmake) < (3, 25):
        tools.append("cmake>=3.25,<4")
    if shutil.which("ninja") is None:
        tools.append("ninja")
    return tools


def _cmake_version(cmake: str) -> tuple[int, ...]:
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    return tuple(int(v) for v in match.groups()) if match else (0,)


def build_venv(layout: Layout) -> Path:
    """The build venv's python, with setuptools and, where needed, CMake and Ninja."""
    return kept_venv(layout.build_venv, [*BUILD_REQUIREMENTS, *build_tools()], upgrade=True)


def cmake_args(
    layout: Layout,
    tree: Path,
    backend: str,
    cuda_archs: str = "native",
    deps: DepsOptions | None = None,
) -> list[str]:
    sources = pinned_sources(layout, tree, backend, deps or DepsOptions())
    args = pinned_deps.source_dir_args(sources)
    if shutil.which("ccache"):
        # setup.py sets CCACHE_BASEDIR to its build dir; the repo root instead lets
        # every clone of this repo (and the pristine baseline tree) share hits.
        launcher = f"env;CCACHE_BASEDIR={layout.root};CCACHE_NOHASHDIR=true;ccache"
        args += [
            "-DMLX_USE_CCACHE=OFF",
            f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}",
            f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
        ]
        if backend == "cuda":
            # nvcc does most of a CUDA build's work, and ccache caches it too.
            args.append(f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher}")
    if backend == "cpu" and platform.system() == "Darwin":
        args.append("-DMLX_BUILD_METAL=OFF")
    if backend == "cuda":
        args += cuda_cmake_args(cuda_archs)
    return args


def portable(args: list[str], layout: Layout) -> list[str]:
    """Build arguments without this clone's path, so that clones share cache keys."""
    return [a.replace(str(layout.root), "<root>") for a in args]


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "metal" if platform.system() == "Darwin" else "cpu"
    if backend == "metal" and platform.system() != "Darwin":
        raise UserError("the Metal backend builds on macOS only")
    if backend == "cuda" and platform.system() != "Linux":
        raise UserError("the CUDA backend builds on Linux only")
    return backend


def tree_state(tree: Path) -> str | None:
    """HEAD plus uncommitted edits; None for a tree that is not a git work tree."""
    if not (tree / ".git").exists():
        return None
    dirty = git("diff", "HEAD", cwd=tree)
    return head(tree) + hashlib.sha256(dirty.encode()).hexdigest()


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    """Run a long build, echoing progress lines and errors, keeping the full log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if _PROGRESS.match(line) or _ERROR.search(line):
                detail(line.strip()[:150])
        code = proc.wait()
    minutes = (time.monotonic() - start) / 60
    if code != 0:
        tail = log.read_text().splitlines()[-60:]
        raise UserError(
            f"build failed after {minutes:.1f} min (exit {code}); full log: {log}\n"
            + "\n".join(tail)
        )
    say(f"done in {minutes:.1f} min (log: {log})")


def _build_env(
    args: list[str], backend: str, jobs: int | None, python: Path, label: str | None
) -> dict[str, str]:
    """setup.py's environment: our CMake arguments, Ninja, and the version label."""
    env = {
        **os.environ,
        "PYPI_RELEASE": "1",
        "CMAKE_ARGS": " ".join(args),
        "CMAKE_GENERATOR": "Ninja",
        "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs or os.cpu_count() or 2),
        # CMake and Ninja from the venv, where the machine has none.
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if backend == "cuda":
        # The system compiler: a CC/CXX/CUDAHOSTCXX wrapper may not work as
        # nvcc's host, and one whose library folders hold only a static
        # libstdc++ links it into libmlx (see check_shared_libstdcxx).
        for name in ("CC", "CXX", "CUDAHOSTCXX"):
            env.pop(name, None)
    env.pop("MLX_LOCAL_VERSION_LABEL", None)
    if label:
        env["MLX_LOCAL_VERSION_LABEL"] = label
    return env


def build_wheel(
    layout: Layout,
    tree: Path,
    out_dir: Path,
    label: str | None,
    options: BuildOptions | None = None,
) -> Path:
    """Build the tree's wheel into out_dir unless a wheel of the same inputs is there.
    Of `options`, the backend, jobs, force, CUDA architectures and deps count here."""
    options = options or BuildOptions()
    backend = resolve_backend(options.backend)
    ensure_requirements()
    python = build_venv(layout)
    args = cmake_args(layout, tree, backend, options.cuda_archs, options.deps)
    state = tree_state(tree)
    inputs = {
        "tree": state,
        "cmake": portable(args, layout),
        "label": label,
        "python": sys.version_info[:2],
        "backend": backend,
    }
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    slot = WheelSlot(out_dir, "mlx-*.whl", ".mlxr-build.json")
    kept = None if options.force or state is None else slot.current(key)
    if kept:
        say(f"{kept.name} is up to date")
        return kept

    say(f"{backend} wheel from {tree}")
    dist = layout.dist(tree.name)
    shutil.rmtree(dist, ignore_errors=True)
    pip_wheel = pip_command(
        python, "wheel", "--no-build-isolation", "--no-deps", "-v", "-w", str(dist), "."
    )
    env = _build_env(args, backend, options.jobs, python, label)
    run_logged(pip_wheel, cwd=tree, env=env, log=layout.build_log(tree.name))
    target = slot.keep(dist, key)
    check_shared_libstdcxx(target)
    if backend == "cuda":
        check_bundled_versions(target, tree)
    return target


def build(layout: Layout, options: BuildOptions | None = None) -> Built:
    """The mlx wheel of the applied series (or of options.source) and the mlxr wheel."""
    options = options or BuildOptions()
    out_dir = options.wheel_dir or layout.wheels
    if options.source is not None:
        if not options.source.is_dir():
            raise UserError(f"--source {options.source} is not a folder")
        # A prepared tree, e.g. `git archive` of build/mlx-src carried to a
        # machine without the submodule: built as it is, every time.
        label = local_label(layout) if options.label else None
        forced = replace(options, force=True)
        return Built(build_wheel(layout, options.source.resolve(), out_dir, label, forced), None)
    pending = unexported_work(layout)
    if pending:
        # The contributor loop: build and test edits before exporting them.
        tree = layout.applied_tree
        where = tree.relative_to(layout.root)
        first = pending.splitlines()[0]
        say(f"building {where} as it is, with work that is not exported yet ({first})")
    else:
        tree = apply(layout).tree
    wheel = build_wheel(layout, tree, out_dir, local_label(layout), options)
    return Built(wheel, build_adoption_wheel(layout, build_venv(layout), out_dir))
