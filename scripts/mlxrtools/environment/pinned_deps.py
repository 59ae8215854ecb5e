"""Upstream's FetchContent dependencies, at exactly the versions it pins.

Upstream's CMake downloads its dependencies at configure time. We read each pin
(repository and tag or commit) from the applied tree's CMake files and export
that tree from git ourselves, then hand the folder to upstream's unchanged
FetchContent through FETCHCONTENT_SOURCE_DIR_<NAME>. The URL is upstream's own
GitHub address, so `url.<mirror>.insteadOf` serves it from a local mirror
offline and GitHub serves it online: the same commit either way. Each source's
version header is read and compared with the pin before it is used.

Exported sources are cached per pin under ~/.cache/mlxr/deps and can be packed
into one folder of archives (`mlxr.py deps --pack DIR`) for a machine without
mirrors or network, whose build then takes them with `--deps-from DIR`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..layout import cache_home
from ..progress import say
from ..queue.git import GitError, commit_of, git, rev_parse


class PinError(UserError):
    """A dependency that cannot be had at the version upstream pins."""


@dataclass(frozen=True)
class Pin:
    name: str  # FetchContent's name, as in FETCHCONTENT_SOURCE_DIR_<NAME>
    url: str  # a git repository
    ref: str  # a tag or a commit
    backend: str  # "all" or "cuda"

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.ref[:12]}"


# What each dependency's own headers say its version is: (file, regex for the
# numbers, how the numbers make the version). Sources without a version header
# (gguflib, pinned by commit) are checked by their commit alone.
_Version = tuple[str, str, Callable[[list[str]], str]]
_VERSION_HEADERS: dict[str, _Version] = {
    "cccl": (
        "include/cuda/std/__cccl/version.h",
        r"#define CCCL_VERSION (\d+)",
        lambda m: f"{int(m[0]) // 1000000}.{int(m[0]) // 1000 % 1000}.{int(m[0]) % 1000}",
    ),
    "cutlass": (
        "include/cutlass/version.h",
        r"#define CUTLASS_(?:MAJOR|MINOR|PATCH) (\d+)",
        ".".join,
    ),
    "cudnn": (
        "include/cudnn_frontend_version.h",
        r"#define CUDNN_FRONTEND_(?:MAJOR|MINOR|PATCH)_VERSION (\d+)",
        ".".join,
    ),
    "json": (
        "single_include/nlohmann/json.hpp",
        r"#define NLOHMANN_JSON_VERSION_(?:MAJOR|MINOR|PATCH) (\d+)",
        ".".join,
    ),
    "fmt": (
        "include/fmt/base.h",
        r"#define FMT_VERSION (\d+)",
        lambda m: f"{int(m[0]) // 10000}.{int(m[0]) // 100 % 100}.{int(m[0]) % 100}",
    ),
    "nanobind": (
        "include/nanobind/nanobind.h",
        r"#define NB_VERSION_(?:MAJOR|MINOR|PATCH) (\d+)",
        ".".join,
    ),
}

# Only these paths of a repository are needed where it is large; CUTLASS is
# used header-only (upstream's SOURCE_SUBDIR is include/).
_PATHS = {"cutlass": ("include", "LICENSE.txt")}

_GIT_DECLARE = re.compile(
    r"FetchContent_Declare\(\s*(\w+)\s+GIT_REPOSITORY\s+([^\s)]+)\s+GIT_TAG\s+([^\s)]+)", re.S
)
# Release archives on GitHub, taken from the tagged tree instead.
_URL_DECLARE = re.compile(
    r"FetchContent_Declare\(\s*(\w+)\s+URL\s+\"?https://github\.com/([\w.-]+)/([\w.-]+)"
    r"/releases/download/([\w.-]+)/",
    re.S,
)
_CMAKE_FILES = {
    "CMakeLists.txt": "all",
    "mlx/io/CMakeLists.txt": "all",
    "mlx/backend/cuda/CMakeLists.txt": "cuda",
}
# Fetched by upstream only on platforms we do not build.
_NOT_OURS = {"metal_cpp", "dlfcn-win32", "openblas"}


def upstream_pins(tree: Path) -> list[Pin]:
    """Every FetchContent dependency of the tree's CMake, with its pin."""
    pins = []
    for rel, backend in _CMAKE_FILES.items():
        text = (tree / rel).read_text()
        for name, url, ref in _GIT_DECLARE.findall(text):
            pins.append(Pin(name, url, ref, backend))
        for name, owner, repo, tag in _URL_DECLARE.findall(text):
            pins.append(Pin(name, f"https://github.com/{owner}/{repo}.git", tag, backend))
    return [p for p in pins if p.name not in _NOT_OURS]


def _git_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(".git") else url + ".git"


def pins_for(tree: Path, backend: str, gguf: bool = True) -> list[Pin]:
    return [
        p
        for p in upstream_pins(tree)
        if p.backend in ("all", backend) and (gguf or p.name != "gguflib")
    ]


def pinned_version(pin: Pin) -> str:
    """The version a tag names (v4.4.2 -> 4.4.2); a commit pins no version."""
    match = re.fullmatch(r"v?(\d+\.\d+\.\d+)", pin.ref)
    return match.group(1) if match else ""


def parse_version(name: str, header_text: str) -> str | None:
    """The version that dependency name's version header text declares."""
    spec = _VERSION_HEADERS.get(name)
    if spec is None:
        return None
    numbers = re.findall(spec[1], header_text)
    return spec[2](numbers) if numbers else None


def source_version(pin: Pin, src: Path) -> str | None:
    """The version the source's own header declares, or None if it has none."""
    spec = _VERSION_HEADERS.get(pin.name)
    if spec is None:
        return None
    header = src / spec[0]
    if not header.is_file():
        raise PinError(f"{pin.name}: {header} is missing, so its version cannot be checked")
    version = parse_version(pin.name, header.read_text(errors="replace"))
    if version is None:
        raise PinError(f"{pin.name}: no version found in {header}")
    return version


def check_version(pin: Pin, src: Path) -> None:
    wanted = pinned_version(pin)
    found = source_version(pin, src)
    if wanted and found is not None and found != wanted:
        raise PinError(
            f"{pin.name}: {src} is version {found}, but upstream pins {pin.ref}; "
            f"remove it and build again, or supply {pin.url} at {pin.ref}"
        )


def mirror_dir(url: str) -> Path | None:
    """The local repository that `insteadOf` maps url to (as upstream wrote it,
    or in its usual https://github.com/<owner>/<name>.git form), if any."""
    for candidate in dict.fromkeys((url, _git_url(url))):
        resolved = subprocess.run(
            ["git", "ls-remote", "--get-url", candidate], capture_output=True, text=True
        ).stdout.strip()
        path = Path(resolved.removeprefix("file://"))
        if resolved and path.is_dir():
            # A clone with a work tree serves as well as a bare mirror.
            return path / ".git" if (path / ".git").is_dir() else path
    return None


def has_ref(git_dir: Path, ref: str) -> bool:
    return commit_of(ref, git_dir) is not None


def _fetch_git_dir(pin: Pin, tmp: Path) -> tuple[Path, str]:
    """A git dir holding the pinned commit: the mirror itself, or a shallow fetch."""
    mirror = mirror_dir(pin.url)
    if mirror is not None:
        try:
            commit = rev_parse(pin.ref, mirror)
        except GitError as e:
            raise PinError(
                f"{pin.name}: the mirror of {pin.url} at {mirror} has no {pin.ref}; "
                "update the mirror, or build online"
            ) from e
        return mirror, commit
    bare = tmp / "git"
    bare.mkdir(parents=True)
    git("init", "-q", "--bare", str(bare), cwd=bare)
    ref = pin.ref if re.fullmatch(r"[0-9a-f]{40}", pin.ref) else f"refs/tags/{pin.ref}"
    try:
        git("fetch", "-q", "--depth", "1", pin.url, ref, cwd=bare)
    except GitError as e:
        raise PinError(
            f"{pin.name}: cannot fetch {pin.url} at {pin.ref}. Offline, point git at a "
            f"mirror: git config --global url.<mirror>.insteadOf {pin.url}"
        ) from e
    return bare, git("rev-parse", "FETCH_HEAD", cwd=bare).strip()


def _export(pin: Pin, dest: Path, paths: tuple[str, ...], tmp: Path) -> None:
    """The tree of the pinned commit, with its submodules, into dest."""
    git_dir, commit = _fetch_git_dir(pin, tmp / dest.name)
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit, *paths],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise PinError(f"git archive {commit} of {pin.url} failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    for line in git("ls-tree", "-r", commit, cwd=git_dir).splitlines():
        _, kind, sub_commit, path = line.split(maxsplit=3)
        if kind != "commit":
            continue
        modules = git("show", f"{commit}:.gitmodules", cwd=git_dir)
        sub = Pin(f"{pin.name}/{path}", _submodule_url(modules, path), sub_commit, pin.backend)
        _export(sub, dest / path, (), tmp)


def _submodule_url(gitmodules: str, path: str) -> str:
    blocks = re.split(r"\[submodule ", gitmodules)
    for block in blocks:
        if re.search(rf"path\s*=\s*{re.escape(path)}\s*$", block, re.M):
            url = re.search(r"url\s*=\s*(\S+)", block)
            if url:
                return _git_url(url.group(1))
    raise PinError(f"no url for submodule {path} in .gitmodules")


def _package_cccl(src: Path, dest: Path) -> None:
    """CCCL's release archive, which upstream downloads, is its CMake install
    (ci/install_cccl.sh): make the same from the tagged tree (a temporary copy)."""
    for cmd in (
        ["cmake", "-S", str(src), "--preset", "install", f"-DCMAKE_INSTALL_PREFIX={dest}"],
        ["cmake", "--build", "--preset", "install", "--target", "install"],
    ):
        proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PinError(f"packaging CCCL failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}")


def prepare(pin: Pin) -> Path:
    """The pinned source tree, exported once into the cache, version-checked."""
    cache = cache_home() / "deps"
    dest = cache / pin.folder
    stamp = dest / ".mlxr-pin"
    if stamp.is_file() and stamp.read_text() == pin.url + " " + pin.ref:
        check_version(pin, dest)
        return dest
    say(f"exporting {pin.name} {pin.ref} from {pin.url}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "tree"
        _export(pin, tree, _PATHS.get(pin.name, ()), tmp)
        if pin.name == "cccl":
            package = tmp / "package"
            _package_cccl(tree, package)
            tree = package
        check_version(pin, tree)
        (tree / ".mlxr-pin").write_text(pin.url + " " + pin.ref)
        shutil.rmtree(dest, ignore_errors=True)
        tree.rename(dest)
    return dest


def unpack(pin: Pin, archives: Path, into: Path) -> Path:
    """A pinned source from a folder that `pack` wrote, version-checked."""
    archive = archives / f"{pin.folder}.tar.xz"
    if not archive.is_file():
        raise PinError(f"{archive} is missing: pack it with `mlxr.py deps --pack {archives}`")
    dest = into / pin.folder
    stamp = dest / ".mlxr-pin"
    if not (stamp.is_file() and stamp.read_text() == pin.url + " " + pin.ref):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="tar")
    check_version(pin, dest)
    return dest


def pack(pins: list[Pin], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for pin in pins:
        src = prepare(pin)
        archive = out / f"{pin.folder}.tar.xz"
        with tarfile.open(archive, "w:xz") as tar:
            tar.add(src, arcname=".")
        written.append(archive)
    return written


def source_dir_args(sources: dict[str, Path]) -> list[str]:
    return [f"-DFETCHCONTENT_SOURCE_DIR_{name.upper()}={path}" for name, path in sources.items()]
