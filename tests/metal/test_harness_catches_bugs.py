"""The harness itself: deliberately broken kernels must fail, every time."""

import re
from pathlib import Path

import pytest
from harness import KERNEL, Case, HarnessFailure, compile_harness, run
from test_metal_kernels import check

BARRIER = r"threadgroup_barrier\(mem_flags::mem_threadgroup\);"


def mutate(pattern: str, replacement: str, occurrence: int = 0) -> str:
    """The kernel source with one match of `pattern` (the n-th) replaced."""
    source = KERNEL.read_text()
    matches = list(re.finditer(pattern, source))
    assert len(matches) > occurrence, f"{pattern!r} not found"
    m = matches[occurrence]
    return source[: m.start()] + m.expand(replacement) + source[m.end() :]


def single_row_forward_body() -> tuple[int, int]:
    source = KERNEL.read_text()
    start = source.index("void rms_fused_single_row(")
    return start, source.index("void rms_fused_looped(")


def mutate_in_single_row(pattern: str, replacement: str, nth_in_kernel: int) -> str:
    source = KERNEL.read_text()
    start, end = single_row_forward_body()
    matches = [m for m in re.finditer(pattern, source) if start <= m.start() < end]
    m = matches[nth_in_kernel]
    return source[: m.start()] + m.expand(replacement) + source[m.end() :]


def test_off_by_one_in_the_tail_loop_is_caught(tmp_path: Path) -> None:
    # The output loop's bound check lets one thread write past the row.
    broken = mutate_in_single_row(
        r"lid \* N_READS \+ i < axis_size", "lid * N_READS + i <= axis_size", 1
    )
    binary = compile_harness(broken, "broken-tail")
    case = Case("fwd", "float32", rows=2, axis=33, residual=False, has_w=True)
    with pytest.raises(HarnessFailure, match="out-of-bounds write"):
        run(binary, case, tmp_path)


def test_off_by_one_in_a_read_is_caught(tmp_path: Path) -> None:
    broken = mutate_in_single_row(
        r"lid \* N_READS \+ i < axis_size", "lid * N_READS + i <= axis_size", 0
    )
    binary = compile_harness(broken, "broken-read")
    case = Case("fwd", "float32", rows=2, axis=33, residual=True, has_w=True)
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path))


@pytest.mark.parametrize("order", ("reverse", "simdgroup0_last"))
@pytest.mark.parametrize("attempt", range(3))
def test_missing_barrier_before_the_shared_inverse_is_caught(
    tmp_path: Path, order: str, attempt: int
) -> None:
    # Without the barrier, threads read local_inv_mean before thread 0 writes it.
    broken = mutate_in_single_row(
        r"(local_inv_mean\[0\] = [^;]+;\n\s*\}\n)\s*" + BARRIER,
        r"\1",
        0,
    )
    binary = compile_harness(broken, "broken-barrier")
    case = Case("fwd", "float32", rows=2, axis=256, residual=True, has_w=True, order=order)
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path / str(attempt)))


def test_missing_barrier_inside_the_threadgroup_sum_is_caught(tmp_path: Path) -> None:
    # Simdgroup 0 zeroes the partial sums; without the barrier it can do so
    # after the other simdgroups have written theirs.
    broken = mutate(
        r"(local_sums\[simd_lane_id\] = 0;\n\s*\}\n)\s*" + BARRIER,
        r"\1",
    )
    binary = compile_harness(broken, "broken-sum-barrier")
    case = Case("fwd", "float32", rows=2, axis=4096, residual=False, has_w=True)
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path))


def test_threadgroup_memory_over_32_kib_is_rejected(tmp_path: Path) -> None:
    broken = mutate(
        r"threadgroup float local_sums\[SIMD_SIZE\];",
        "threadgroup float local_sums[SIMD_SIZE * 300];",
    )
    binary = compile_harness(broken, "broken-tgmem")
    case = Case("fwd", "float32", rows=1, axis=64, residual=False, has_w=False)
    with pytest.raises(HarnessFailure, match="threadgroup memory"):
        run(binary, case, tmp_path)


def test_the_unbroken_kernel_passes_the_same_cases(tmp_path: Path) -> None:
    binary = compile_harness(KERNEL.read_text(), "kernels")
    for i, case in enumerate(
        [
            Case("fwd", "float32", rows=2, axis=33, residual=True, has_w=True),
            Case("fwd", "float32", rows=2, axis=256, residual=True, has_w=True, order="reverse"),
            Case("fwd", "float32", rows=2, axis=4096, residual=False, has_w=True),
        ]
    ):
        check(case, run(binary, case, tmp_path / str(i)))
