"""The overlay's Metal host code: it compiles against MLX's own headers, and
its launches respect the pipelines' thread limits.

metal-cpp is replaced by hostshim/Metal/Metal.hpp, a stand-in that declares
the parts MLX's Metal headers use; `-fsyntax-only` checks every name, type and
call in the host code without linking or running it. Running eval_gpu would
take MLX's array runtime and the primitives' constructors, so the launch
sizes it uses come from rms_norm_fused.h, which the kernel harness runs: here
with pipelines that allow fewer threads than a row needs, and the kernels
checked at the launches chosen for them.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
from applied import applied_worktree
from harness import HERE, KERNEL, ROOT, Case, compile_harness, geometry, run
from test_metal_kernels import check

HOST_FILES = sorted(
    p.relative_to(ROOT / "overlay").as_posix()
    for p in (ROOT / "overlay" / "mlx" / "backend" / "metal").glob("*.cpp")
)


@pytest.fixture(scope="module")
def applied_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with applied_worktree(tmp_path_factory.mktemp("host")) as tree:
        yield tree


def syntax_check(tree: Path, source: str) -> subprocess.CompletedProcess:
    cmd = [
        os.environ.get("CXX", "g++"), "-std=c++20", "-fsyntax-only", "-Wall", "-Werror",
        f"-I{HERE / 'hostshim'}", f"-I{tree}", str(tree / source),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_there_is_metal_host_code() -> None:
    assert "mlx/backend/metal/rms_norm_fused.cpp" in HOST_FILES


@pytest.mark.parametrize("source", HOST_FILES)
def test_metal_host_code_compiles(applied_tree: Path, source: str) -> None:
    proc = syntax_check(applied_tree, source)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_a_broken_host_file_is_caught(applied_tree: Path) -> None:
    source = applied_tree / "mlx/backend/metal/rms_norm_fused.cpp"
    broken = source.read_text().replace("compute_encoder.set_bytes(eps_, 5);", "set_bytes(eps_);")
    assert broken != source.read_text()
    target = applied_tree / "mlx/backend/metal/broken_for_test.cpp"
    target.write_text(broken)
    try:
        assert syntax_check(applied_tree, "mlx/backend/metal/broken_for_test.cpp").returncode != 0
    finally:
        target.unlink()


HOST_SOURCE = ROOT / "overlay/mlx/backend/metal/rms_norm_fused.cpp"


@pytest.fixture(scope="module")
def harness() -> Path:
    return compile_harness(KERNEL.read_text(), "kernels")


def single_row_threads(axis: int) -> int:
    """The threads a single-row launch needs: whole simdgroups, 4 values a
    thread."""
    return 32 * max(-(-axis // 128), 1)


# Pipeline limits below the 1024 threads a row of 4096 needs, as Metal may set
# them for a kernel that needs many registers: (the single-row pipelines', the
# looped ones'); in the last, the looped kernels' pipelines allow more.
LIMITS = [(32, 32), (64, 64), (96, 96), (256, 256), (512, 512), (992, 992), (512, 1024)]


@pytest.mark.parametrize(("limit", "looped_limit"), LIMITS, ids=str)
def test_launches_never_exceed_the_pipeline_limit(
    harness: Path, limit: int, looped_limit: int
) -> None:
    # Row lengths either side of what the limit holds, and of every variant.
    axes = {1, 31, 32, 33, 128, 129, 4095, 4096, 4097, 8200, 65537}
    axes |= {4 * limit - 1, 4 * limit, 4 * limit + 1}
    for axis in sorted(axes):
        g = geometry(harness, axis, 3, limit, looped_limit)
        single_row = axis <= 4096 and single_row_threads(axis) <= limit
        tg = int(g["threadgroup_size"])
        assert g["looped"] == str(int(not single_row)), axis
        assert tg == (single_row_threads(axis) if single_row else looped_limit), axis
        assert tg <= (limit if single_row else looped_limit)
        assert int(g["vjp_threadgroup_size"]) == tg
        assert int(g["combine_threadgroup_size"]) <= limit


@pytest.mark.parametrize("limit", (256, 512))
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_rows_a_smaller_pipeline_cannot_hold_run_looped(
    harness: Path, tmp_path: Path, family: str, limit: int
) -> None:
    # The longest row the single-row kernel takes at this limit, one more,
    # and the longest single-row launch at 1024; at this limit, and with the
    # looped kernels' pipeline allowing 1024.
    runs = [
        (4 * limit, None, f"{limit}"),
        (4 * limit + 1, None, f"{limit}"),
        (4096, None, f"{limit}"),
        (4 * limit + 1, 1024, "1024"),
    ]
    for i, (axis, looped_limit, threads) in enumerate(runs):
        dtype = ("float32", "float16", "bfloat16")[i % 3]
        case = Case(
            family, dtype, 3, axis, residual=i % 2 == 0, has_w=True, groups=2,
            max_threads=limit, looped_max_threads=looped_limit,
        )  # fmt: skip
        arrays = run(harness, case, tmp_path / str(i))
        assert arrays["threadgroup"] == int(threads)
        assert ("_looped" in arrays["kernel"]) == (axis > 4 * limit)
        check(case, arrays)


def launch_problems(source: str) -> list[str]:
    """Launches in the host code whose sizes are not the dispatch that
    rms_norm_fused.h computes from the launched pipeline's own limit."""
    problems = []
    for args in re.findall(r"dispatch_threads\((.*?)\);", source, re.S):
        if " ".join(args.split()) != (
            "MTL::Size(dispatch.grid_size, 1, 1), MTL::Size(dispatch.threadgroup_size, 1, 1)"
        ):
            problems.append(f"launch of other sizes: {' '.join(args.split())}")
    calls = re.findall(r"rms_norm_fused_dispatch\((.*?)\}\);", source, re.S)
    calls += re.findall(r"rms_norm_fused_combine_dispatch\((.*?)\);", source, re.S)
    for call in calls:
        call = " ".join(call.split())
        if "kernel->maxTotalThreadsPerThreadgroup()" not in call:
            problems.append(f"dispatch without the pipeline's limit: {call}")
        elif "[&](bool looped)" in call and not re.search(r"kernel = d\.get_kernel\(", call):
            problems.append(f"limit of another pipeline than the one launched: {call}")
    if len(calls) != source.count("dispatch_threads("):
        problems.append("a launch without its dispatch")
    return problems


def test_every_launch_respects_its_pipeline() -> None:
    source = HOST_SOURCE.read_text()
    assert source.count("dispatch_threads(") == 3  # forward, backward, combine
    assert launch_problems(source) == []


@pytest.mark.parametrize(
    ("pattern", "replacement"),
    (
        (r"return kernel->maxTotalThreadsPerThreadgroup\(\);", "return size_t(1024);"),
        (r"kernel = d\.get_kernel\(", "auto other = d.get_kernel("),
        (r"MTL::Size\(dispatch\.threadgroup_size, 1, 1\)", "MTL::Size(1024, 1, 1)"),
    ),
    ids=("fixed-limit", "other-pipeline", "fixed-size"),
)
def test_a_launch_ignoring_its_pipeline_is_caught(pattern: str, replacement: str) -> None:
    broken = re.sub(pattern, replacement, HOST_SOURCE.read_text(), count=1)
    assert launch_problems(broken) != []
