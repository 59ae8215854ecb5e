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
from pathlib import Path

from .cuda_deps import HEADER_PACKAGES, cuda_cmake_args
from .deps import ensure_requirements, find_header
from .gitcmd import git
from .layout import Layout
from .tree import apply, unexported_work

BUILD_REQUIREMENTS = ("setuptools>=80", "wheel", "typing_extensions")
_PROGRESS = re.compile(r"^\s*\[\d+/\d+\]")
_ERROR = re.compile(r"error:|FAILED:|CMake Error")


def mlxr_version(layout: Layout) -> str:
    with open(layout.root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def local_label(layout: Layout) -> str:
    return "mlxr" + mlxr_version(layout)


def nanobind_version(tree: Path) -> str:
    """The nanobind release upstream's CMakeLists pins, taken from PyPI instead."""
    text = (tree / "CMakeLists.txt").read_text()
    match = re.search(r"nanobind\.git\s+GIT_TAG\s+v([0-9.]+)", text)
    if not match:
        raise RuntimeError("cannot find the nanobind version in CMakeLists.txt")
    return match.group(1)


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


def ensure_build_venv(layout: Layout, tree: Path, backend: str = "cpu") -> Path:
    wanted = [*BUILD_REQUIREMENTS, *build_tools(), f"nanobind=={nanobind_version(tree)}"]
    # Only the headers of these are needed, not their Python runtimes.
    headers_only = list(HEADER_PACKAGES) if backend == "cuda" else []
    venv = layout.build_venv
    stamp = venv / "mlxr-requirements.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted + headers_only:
        return venv_python(venv)
    print(f"mlxr build: preparing the build venv ({', '.join(wanted + headers_only)})", flush=True)
    if not venv_python(venv).exists():
        make_venv(venv)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--upgrade"]
    subprocess.run([*pip, *wanted], check=True)
    if headers_only:
        subprocess.run([*pip, "--no-deps", *headers_only], check=True)
    stamp.write_text(json.dumps(wanted + headers_only))
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


def local_json_source(layout: Layout) -> Path | None:
    """A FetchContent source dir for json made from the system's nlohmann headers."""
    header = find_header("nlohmann/json.hpp")
    if header is None:
        return None
    src = layout.build / "deps" / "json"
    link = src / "single_include" / "nlohmann"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != header.parent.resolve():
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(header.parent)
    return src


def cmake_args(layout: Layout, python: Path, backend: str, cuda_archs: str = "native") -> list[str]:
    nanobind_dir = subprocess.run(
        [str(python), "-m", "nanobind", "--cmake_dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    args = [
        # gguflib is fetched from GitHub at configure time and has no package.
        "-DMLX_BUILD_GGUF=OFF",
        "-DUSE_SYSTEM_FMT=ON",
        "-DFETCHCONTENT_TRY_FIND_PACKAGE_MODE=ALWAYS",
        f"-Dnanobind_DIR={nanobind_dir}",
    ]
    json_src = local_json_source(layout)
    if json_src is not None:
        args.append(f"-DFETCHCONTENT_SOURCE_DIR_JSON={json_src}")
    if shutil.which("ccache"):
        # setup.py sets CCACHE_BASEDIR to its build dir; the repo root instead lets
        # every clone of this repo (and the pristine baseline tree) share hits.
        launcher = f"env;CCACHE_BASEDIR={layout.root};CCACHE_NOHASHDIR=true;ccache"
        args += [
            "-DMLX_USE_CCACHE=OFF",
            f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}",
            f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
        ]
    if backend == "cpu" and platform.system() == "Darwin":
        args.append("-DMLX_BUILD_METAL=OFF")
    if backend == "cuda":
        args += cuda_cmake_args(layout, python, cuda_archs)
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
) -> Path:
    """Build the tree's wheel into out_dir unless a wheel of the same inputs is there."""
    backend = resolve_backend(backend)
    ensure_requirements()
    python = ensure_build_venv(layout, tree, backend)
    args = cmake_args(layout, python, backend, cuda_archs)
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

    print("mlxr build: GGUF support is off: its gguflib source cannot be fetched offline")
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
) -> Path:
    if source is not None:
        # A prepared tree, e.g. `git archive` of build/mlx-src carried to a
        # machine without the submodule: built as it is, every time.
        return build_wheel(
            layout, source.resolve(), layout.wheels, local_label(layout), backend, jobs,
            force=True, cuda_archs=cuda_archs,
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
    return build_wheel(
        layout, tree, layout.wheels, local_label(layout), backend, jobs, force, cuda_archs
    )
