"""The `build` verb: a full mlx wheel from the applied tree, offline and cached."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..layout import Layout
from ..queue.git import git
from ..queue.tree import apply, unexported_work
from . import pinned_deps
from .adoption_wheel import build_adoption_wheel
from .cuda_deps import cuda_cmake_args, toolkit_nvtx
from .prerequisites import ensure_requirements

BUILD_REQUIREMENTS = ("setuptools>=80", "wheel", "typing_extensions")
_PROGRESS = re.compile(r"^\s*\[\d+/\d+\]")
_ERROR = re.compile(r"error:|FAILED:|CMake Error")


def mlxr_version(layout: Layout) -> str:
    with open(layout.root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def local_label(layout: Layout) -> str:
    return "mlxr" + mlxr_version(layout)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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


def ensure_build_venv(layout: Layout) -> Path:
    wanted = [*BUILD_REQUIREMENTS, *build_tools()]
    venv = layout.build_venv
    stamp = venv / "mlxr-requirements.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return venv_python(venv)
    print(f"mlxr build: preparing the build venv ({', '.join(wanted)})", flush=True)
    if not venv_python(venv).exists():
        make_venv(venv)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--upgrade"]
    subprocess.run([*pip, *wanted], check=True)
    stamp.write_text(json.dumps(wanted))
    return venv_python(venv)


def make_venv(venv: Path, system_site_packages: bool = False) -> None:
    """A venv with pip, also where the interpreter lacks ensurepip (Debian's
    python3 without python3-venv, uv's venvs): then pip comes from a pip wheel
    in PIP_FIND_LINKS, as on a machine that reaches no index."""
    options = ["--system-site-packages"] if system_site_packages else []
    if subprocess.run([sys.executable, "-m", "venv", *options, str(venv)]).returncode == 0:
        return
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *options, str(venv)], check=True)
    links = os.environ.get("PIP_FIND_LINKS", "")
    wheels = sorted(Path(links).glob("pip-*.whl")) if links else []
    if not wheels:
        raise RuntimeError(
            f"{sys.executable} cannot make a venv with pip: install python3-venv, or put a "
            "pip wheel in the folder PIP_FIND_LINKS names"
        )
    subprocess.run(
        [str(venv_python(venv)), f"{wheels[-1]}/pip", "install", "-q", str(wheels[-1])], check=True
    )


def check_shared_libstdcxx(wheel: Path) -> None:
    """Fail where libmlx carries its own libstdc++. Its exported copy mixes with
    the shared one that Python's other modules load, and locale facets then
    resolve across the two copies: formatting a number in an error message
    crashed so on the lent CUDA machines."""
    readelf = shutil.which("readelf")
    if readelf is None or sys.platform != "linux":
        return
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as whl:
        lib = Path(whl.extract("mlx/lib/libmlx.so", tmp))
        dynamic = subprocess.run(
            [readelf, "-d", str(lib)], capture_output=True, text=True, check=True
        ).stdout
    if "libstdc++.so" not in dynamic:
        raise RuntimeError(
            f"{wheel.name}: libmlx.so links libstdc++ statically, which crashes once a "
            "process loads the shared libstdc++ too. Look for -static-libstdc++ in the "
            "compiler flags, and for a compiler whose library folders hold only "
            "libstdc++.a (CMake links -lstdc++ from the first folder that has one)."
        )


@dataclass(frozen=True)
class DepsOptions:
    """Where upstream's pinned dependencies come from."""

    archives: Path | None = None  # a folder written by `mlxr.py deps --pack`
    nvtx_from_toolkit: bool = False


def pinned_sources(layout: Layout, tree: Path, backend: str, deps: DepsOptions) -> dict[str, Path]:
    """Each FetchContent dependency of the tree at upstream's pin, by name."""
    sources = {}
    for pin in pinned_deps.pins_for(tree, backend):
        if pin.name == "nvtx3" and deps.nvtx_from_toolkit:
            print(
                f"mlxr build: NVTX from the CUDA toolkit, not upstream's pin {pin.ref} "
                "(--nvtx-from-toolkit)",
                flush=True,
            )
            sources[pin.name] = toolkit_nvtx(layout)
        elif deps.archives is not None:
            sources[pin.name] = pinned_deps.unpack(pin, deps.archives, layout.build / "deps")
        else:
            sources[pin.name] = pinned_deps.prepare(pin, log=lambda m: print(f"mlxr build: {m}"))
    return sources


# The dependency headers a CUDA wheel ships for MLX's run-time compiler.
_BUNDLED_HEADERS = {
    "cccl": "mlx/include/cccl/cuda/std/__cccl/version.h",
    "cutlass": "mlx/include/cutlass/version.h",
}


def bundled_versions(wheel: Path) -> dict[str, str]:
    """The versions of the headers the wheel bundles, read from the headers."""
    found = {}
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for name, rel in _BUNDLED_HEADERS.items():
            if rel in names:
                version = pinned_deps.parse_version(name, whl.read(rel).decode(errors="replace"))
                if version:
                    found[name] = version
    return found


def check_bundled_versions(wheel: Path, tree: Path) -> None:
    """Fail where the wheel bundles other versions of its JIT headers than the pins."""
    pins = {p.name: p for p in pinned_deps.pins_for(tree, "cuda")}
    bundled = bundled_versions(wheel)
    for name in _BUNDLED_HEADERS:
        wanted = pinned_deps.pinned_version(pins[name])
        if bundled.get(name) != wanted:
            raise RuntimeError(
                f"{wheel.name} bundles {name} {bundled.get(name, '(none)')} for MLX's run-time "
                f"compiler, but upstream pins {pins[name].ref}"
            )
    print(
        "mlxr build: bundled "
        + ", ".join(f"{n} {v}" for n, v in sorted(bundled.items()))
        + " (upstream's pins)",
        flush=True,
    )


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


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "metal" if platform.system() == "Darwin" else "cpu"
    if backend == "metal" and platform.system() != "Darwin":
        raise RuntimeError("the Metal backend builds on macOS only")
    if backend == "cuda" and platform.system() != "Linux":
        raise RuntimeError("the CUDA backend builds on Linux only")
    return backend


def tree_state(tree: Path) -> str | None:
    """HEAD plus uncommitted edits; None for a tree that is not a git work tree."""
    if not (tree / ".git").exists():
        return None
    head = git("rev-parse", "HEAD", cwd=tree).strip()
    dirty = git("diff", "HEAD", cwd=tree)
    return head + hashlib.sha256(dirty.encode()).hexdigest()


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
                print(f"  {line.strip()[:150]}", flush=True)
        code = proc.wait()
    minutes = (time.monotonic() - start) / 60
    if code != 0:
        tail = log.read_text().splitlines()[-60:]
        raise RuntimeError(
            f"build failed after {minutes:.1f} min (exit {code}); full log: {log}\n"
            + "\n".join(tail)
        )
    print(f"mlxr build: done in {minutes:.1f} min (log: {log})", flush=True)


def build_wheel(
    layout: Layout,
    tree: Path,
    out_dir: Path,
    label: str | None,
    backend: str = "auto",
    jobs: int | None = None,
    force: bool = False,
    cuda_archs: str = "native",
    deps: DepsOptions | None = None,
) -> Path:
    """Build the tree's wheel into out_dir unless a wheel of the same inputs is there."""
    backend = resolve_backend(backend)
    ensure_requirements()
    python = ensure_build_venv(layout)
    args = cmake_args(layout, tree, backend, cuda_archs, deps)
    state = tree_state(tree)
    force = force or state is None
    key_src = json.dumps(
        {
            "tree": state,
            "cmake": [a.replace(str(layout.root), "<root>") for a in args],
            "label": label,
            "python": sys.version_info[:2],
            "backend": backend,
        }
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()
    stamp = out_dir / ".mlxr-build.json"
    wheels = sorted(out_dir.glob("mlx-*.whl"))
    current = stamp.exists() and json.loads(stamp.read_text()).get("key") == key
    if not force and len(wheels) == 1 and current:
        print(f"mlxr build: {wheels[0].name} is up to date")
        return wheels[0]

    print(f"mlxr build: {backend} wheel from {tree}", flush=True)
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
    dist = layout.build / "dist" / tree.name
    shutil.rmtree(dist, ignore_errors=True)
    run_logged(
        [
            str(python),
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-v",
            "-w",
            str(dist),
            ".",
        ],
        cwd=tree,
        env=env,
        log=layout.build / "logs" / f"build-{tree.name}.log",
    )
    built = sorted(dist.glob("mlx-*.whl"))
    if len(built) != 1:
        raise RuntimeError(f"expected one wheel in {dist}, found {len(built)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("mlx-*.whl"):
        old.unlink()
    target = out_dir / built[0].name
    shutil.move(built[0], target)
    check_shared_libstdcxx(target)
    if backend == "cuda":
        check_bundled_versions(target, tree)
    stamp.write_text(json.dumps({"key": key, "wheel": target.name}) + "\n")
    print(f"mlxr build: {target}")
    return target


def build(
    layout: Layout,
    backend: str = "auto",
    jobs: int | None = None,
    force: bool = False,
    source: Path | None = None,
    cuda_archs: str = "native",
    deps: DepsOptions | None = None,
    wheel_dir: Path | None = None,
    label: bool = True,
) -> Path:
    out_dir = wheel_dir or layout.wheels
    if source is not None:
        # A prepared tree, e.g. `git archive` of build/mlx-src carried to a
        # machine without the submodule: built as it is, every time.
        return build_wheel(
            layout, source.resolve(), out_dir, local_label(layout) if label else None, backend,
            jobs, force=True, cuda_archs=cuda_archs, deps=deps,
        )  # fmt: skip
    pending = unexported_work(layout)
    if pending:
        # The contributor loop: build and test edits before exporting them.
        tree = layout.applied_tree
        print(
            f"mlxr build: building {tree.relative_to(layout.root)} as it is, with work "
            f"that is not exported yet ({pending.splitlines()[0]})",
            flush=True,
        )
    else:
        tree = apply(layout, quiet=True)
    wheel = build_wheel(
        layout, tree, out_dir, local_label(layout), backend, jobs, force, cuda_archs, deps
    )
    build_adoption_wheel(layout, out_dir)
    return wheel
