"""Upstream's FetchContent dependencies, supplied at exactly the pinned version."""

import io
import zipfile
from pathlib import Path

import pytest
from conftest import run_git, write
from mlxrtools.environment import pinned_deps
from mlxrtools.environment.pinned_deps import Pin, PinError
from mlxrtools.environment.wheel_checks import bundled_versions, check_bundled_versions
from mlxrtools.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

CUDA_CMAKE = """
FetchContent_Declare(
  cccl
  URL "https://github.com/NVIDIA/cccl/releases/download/v3.1.3/cccl-v3.1.3.zip")
FetchContent_Declare(
  cutlass
  GIT_REPOSITORY https://github.com/NVIDIA/cutlass.git
  GIT_TAG v4.4.2
  GIT_SHALLOW TRUE
  SOURCE_SUBDIR include EXCLUDE_FROM_ALL)
"""


def fake_tree(root: Path, cuda: str = CUDA_CMAKE) -> Path:
    write(
        root / "CMakeLists.txt",
        "FetchContent_Declare(\n  json\n  URL https://github.com/nlohmann/json/releases/"
        "download/v3.11.3/json.tar.xz)\nFetchContent_Declare(metal_cpp URL ${METAL_CPP_URL})\n",
    )
    write(
        root / "mlx/io/CMakeLists.txt",
        "FetchContent_Declare(\n    gguflib\n    GIT_REPOSITORY https://github.com/antirez/"
        "gguf-tools/\n    GIT_TAG 8fa6eb65236618e28fd7710a0fba565f7faa1848)\n",
    )
    write(root / "mlx/backend/cuda/CMakeLists.txt", cuda)
    return root


def test_pins_are_read_from_upstreams_cmake(tmp_path):
    pins = {p.name: p for p in pinned_deps.upstream_pins(fake_tree(tmp_path))}
    assert set(pins) == {"json", "gguflib", "cccl", "cutlass"}
    assert pins["cccl"] == Pin("cccl", "https://github.com/NVIDIA/cccl.git", "v3.1.3", "cuda")
    assert pins["json"].url == "https://github.com/nlohmann/json.git"
    assert pins["gguflib"].ref == "8fa6eb65236618e28fd7710a0fba565f7faa1848"
    assert pins["cutlass"].ref == "v4.4.2" and pins["cutlass"].backend == "cuda"
    assert [p.name for p in pinned_deps.pins_for(tmp_path, "cpu")] == ["json", "gguflib"]


def test_the_pinned_release_has_the_pins_upstream_documents():
    tree = ROOT / "mlx_upstream"
    if not (tree / "CMakeLists.txt").exists():
        pytest.fail("mlx_upstream is not checked out: run `git submodule update --init`")
    refs = {p.name: p.ref for p in pinned_deps.upstream_pins(tree)}
    assert refs == {
        "fmt": "12.1.0",
        "nanobind": "v2.13.0",
        "json": "v3.11.3",
        "gguflib": "8fa6eb65236618e28fd7710a0fba565f7faa1848",
        "cccl": "v3.1.3",
        "nvtx3": "v3.1.1",
        "cudnn": "v1.16.0",
        "cutlass": "v4.4.2",
    }


@pytest.mark.parametrize(
    ("name", "text", "version"),
    [
        ("cccl", "#define CCCL_VERSION 3001003\n", "3.1.3"),
        ("cutlass", "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 0\n",
         "4.2.0"),
        ("fmt", "#define FMT_VERSION 120100\n", "12.1.0"),
        ("json", "#define NLOHMANN_JSON_VERSION_MAJOR 3\n#define NLOHMANN_JSON_VERSION_MINOR 11\n"
         "#define NLOHMANN_JSON_VERSION_PATCH 3\n", "3.11.3"),
    ],
)  # fmt: skip
def test_version_headers_are_read(name, text, version):
    assert pinned_deps.parse_version(name, text) == version


def test_a_source_of_another_version_is_refused(tmp_path):
    write(
        tmp_path / "include/cutlass/version.h",
        "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 0\n",
    )
    pin = Pin("cutlass", "https://github.com/NVIDIA/cutlass.git", "v4.4.2", "cuda")
    with pytest.raises(PinError, match="version 4.2.0, but upstream pins v4.4.2"):
        pinned_deps.check_version(pin, tmp_path)


@pytest.fixture
def mirrored(tmp_path, monkeypatch):
    """A dependency with a submodule, served through insteadOf as a mirror is."""
    sub = tmp_path / "sub"
    sub.mkdir()
    run_git("init", "-q", cwd=sub)
    write(sub / "sub.txt", "from the submodule\n")
    run_git("add", ".", cwd=sub)
    run_git("commit", "-q", "-m", "sub", cwd=sub)
    dep = tmp_path / "dep"
    dep.mkdir()
    run_git("init", "-q", cwd=dep)
    write(dep / "include/fmt/base.h", "#define FMT_VERSION 120100\n")
    write(dep / "big/skip.bin", "not exported\n")
    run_git("add", ".", cwd=dep)
    run_git("submodule", "add", "-q", str(sub), "ext/sub", cwd=dep)
    # As upstream's .gitmodules name it: by its GitHub address.
    run_git("config", "-f", ".gitmodules", "submodule.ext/sub.url",
            "https://github.com/example/sub.git", cwd=dep)  # fmt: skip
    run_git("add", ".gitmodules", cwd=dep)
    run_git("commit", "-q", "-m", "dep", cwd=dep)
    run_git("tag", "12.1.0", cwd=dep)
    write(dep / "include/fmt/base.h", "#define FMT_VERSION 120200\n")
    run_git("commit", "-q", "-am", "after the tag", cwd=dep)
    config = {
        f"url.{dep}.insteadOf": "https://github.com/example/dep.git",
        f"url.{sub}.insteadOf": "https://github.com/example/sub.git",
        "protocol.file.allow": "always",
    }
    monkeypatch.setenv("GIT_CONFIG_COUNT", str(len(config)))
    for i, (key, value) in enumerate(config.items()):
        monkeypatch.setenv(f"GIT_CONFIG_KEY_{i}", key)
        monkeypatch.setenv(f"GIT_CONFIG_VALUE_{i}", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return Pin("fmt", "https://github.com/example/dep.git", "12.1.0", "all")


def test_prepare_exports_the_tagged_tree_with_submodules(mirrored, caplog):
    caplog.set_level("INFO", logger="mlxr")
    src = pinned_deps.prepare(mirrored)
    assert (src / "include/fmt/base.h").read_text() == "#define FMT_VERSION 120100\n"
    assert (src / "ext/sub/sub.txt").read_text() == "from the submodule\n"
    assert not (src / ".git").exists()
    assert "exporting fmt 12.1.0" in caplog.text
    caplog.clear()
    assert pinned_deps.prepare(mirrored) == src
    assert caplog.text == ""  # from the cache, without a word


def test_pack_and_unpack_round_trip(mirrored, tmp_path):
    (archive,) = pinned_deps.pack([mirrored], tmp_path / "pack")
    assert archive.name == "fmt-12.1.0.tar.xz"
    src = pinned_deps.unpack(mirrored, tmp_path / "pack", tmp_path / "unpacked")
    assert (src / "ext/sub/sub.txt").exists()
    with pytest.raises(PinError, match="is missing: pack it"):
        pinned_deps.unpack(Pin("json", "u", "v3.11.3", "all"), tmp_path / "pack", tmp_path)


def test_a_mirror_without_the_pin_is_named(mirrored):
    missing = Pin("fmt", mirrored.url, "12.9.9", "all")
    with pytest.raises(PinError, match=r"the mirror of .* has no 12\.9\.9"):
        pinned_deps.prepare(missing)


def wheel_with(tmp_path: Path, cutlass_minor: int) -> Path:
    path = tmp_path / "mlx-0.32.1-cp312-cp312-linux_x86_64.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as whl:
        whl.writestr("mlx/include/cccl/cuda/std/__cccl/version.h", "#define CCCL_VERSION 3001003\n")
        whl.writestr(
            "mlx/include/cutlass/version.h",
            f"#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR {cutlass_minor}\n"
            "#define CUTLASS_PATCH 2\n",
        )
    path.write_bytes(buf.getvalue())
    return path


def test_the_wheels_bundled_headers_are_checked(tmp_path):
    tree = fake_tree(tmp_path / "tree")
    good = wheel_with(tmp_path, 4)
    assert bundled_versions(good) == {"cccl": "3.1.3", "cutlass": "4.4.2"}
    check_bundled_versions(good, tree)
    with pytest.raises(UserError, match="bundles cutlass 4.2.2 .* upstream pins v4.4.2"):
        check_bundled_versions(wheel_with(tmp_path, 2), tree)
