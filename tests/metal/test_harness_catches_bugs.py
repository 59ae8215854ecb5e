"""The harness itself: deliberately broken kernels must fail, every time."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from harness import KERNEL, ORDERS, Case, HarnessFailure, compile_harness, run
from test_metal_kernels import check, row_offset_problems

BARRIER = r"threadgroup_barrier\(mem_flags::mem_threadgroup\);"


def mutate(pattern: str, replacement: str, occurrence: int = 0, source: str | None = None) -> str:
    """The kernel source (or `source`) with one match of `pattern` (the n-th)
    replaced."""
    source = KERNEL.read_text() if source is None else source
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


@pytest.mark.parametrize(
    ("rows", "error"),
    ((1, "out-of-bounds write"), (2, "two threadgroups of one launch write the same")),
)
def test_off_by_one_in_the_tail_loop_is_caught(tmp_path: Path, rows: int, error: str) -> None:
    # The output loop's bound check lets one thread write past the row: past
    # the buffer, or into the next row, which another threadgroup writes.
    broken = mutate_in_single_row(
        r"lid \* N_READS \+ i < axis_size", "lid * N_READS + i <= axis_size", 3
    )
    binary = compile_harness(broken, "broken-tail")
    case = Case("fwd", "float32", rows=rows, axis=33, residual=False, has_w=True)
    with pytest.raises(HarnessFailure, match=error):
        run(binary, case, tmp_path)


def test_a_read_past_the_buffer_is_caught_under_address_sanitizer(tmp_path: Path) -> None:
    # One row of 32: the last thread reads one value past x, r and w, which
    # the guards of the ordinary build only show as wrong results. (The third
    # bound check is the read of x and r, as in test_off_by_one_in_a_read.)
    broken = mutate_in_single_row(
        r"lid \* N_READS \+ i < axis_size", "lid * N_READS + i <= axis_size", 2
    )
    binary = compile_harness(broken, "broken-read-asan", asan=True)
    case = Case("fwd", "float32", rows=1, axis=32, residual=True, has_w=True)
    with pytest.raises(HarnessFailure, match="AddressSanitizer: use-after-poison"):
        run(binary, case, tmp_path)


def test_off_by_one_in_a_read_is_caught(tmp_path: Path) -> None:
    # The third bound check is the read of x and r (the first two are the
    # sandwich form's branch norm).
    broken = mutate_in_single_row(
        r"lid \* N_READS \+ i < axis_size", "lid * N_READS + i <= axis_size", 2
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
    broken = mutate(r"(local_inv_mean\[0\] = [^;]+;\n\s*\}\n)\s*" + BARRIER, r"\1")
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


@pytest.mark.parametrize("axis", (260, 4097))
def test_missing_barrier_inside_the_backward_row_sums_is_caught(tmp_path: Path, axis: int) -> None:
    # As above, for both sums of a row in the backward.
    broken = mutate(r"(local_sums\[SIMD_SIZE \+ simd_lane_id\] = 0;\n\s*\}\n)\s*" + BARRIER, r"\1")
    binary = compile_harness(broken, "broken-pair-barrier")
    case = Case("vjp", "float32", rows=2, axis=axis, residual=False, has_w=True)
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


# The backward's groups of rows and its weight-gradient partials. SINGLE and
# LOOPED pick the occurrence of a pattern in the single-row and looped kernels.
SINGLE, LOOPED = 0, 1


def grouped_vjp(axis: int, order: str = "reverse") -> Case:
    # 8 rows in 4 groups of 2: a permutation of the groups stays in bounds.
    return Case("vjp", "float32", 8, axis, residual=True, has_w=True, order=order, groups=4)


@pytest.mark.parametrize(
    ("kernel", "axis"), ((SINGLE, 33), (LOOPED, 4097)), ids=("single", "looped")
)
def test_partials_written_to_the_wrong_group_row_are_caught(
    tmp_path: Path, kernel: int, axis: int
) -> None:
    # Groups 0 and 1 (2 and 3) swap rows: dw, their sum, only changes order.
    broken = mutate(
        r"gw_partials \+= gid \* size_t\(axis_size\)",
        "gw_partials += (gid ^ 1) * size_t(axis_size)",
        kernel,
    )
    binary = compile_harness(broken, f"broken-partial-row-{kernel}")
    with pytest.raises(AssertionError, match="partial"):
        check(grouped_vjp(axis), run(binary, grouped_vjp(axis), tmp_path))


@pytest.mark.parametrize(
    ("skipped", "loop"),
    (
        ("first", "for (uint k = 1; k < n_groups; k++)"),
        ("last", "for (uint k = 0; k + 1 < n_groups; k++)"),
    ),
)
def test_a_combine_that_skips_a_group_is_caught(tmp_path: Path, skipped: str, loop: str) -> None:
    broken = mutate(r"for \(uint k = 0; k < n_groups; k\+\+\)", loop)
    binary = compile_harness(broken, f"broken-skip-{skipped}")
    with pytest.raises(AssertionError):
        check(grouped_vjp(33), run(binary, grouped_vjp(33), tmp_path))


def test_a_combine_in_another_order_is_caught(tmp_path: Path) -> None:
    # Still the exact sum of every partial, to within rounding: only the
    # comparison with the documented order, bit for bit, sees it.
    broken = mutate(r"for \(uint k = 0; k < n_groups; k\+\+\)", "for (uint k = n_groups; k-- > 0;)")
    binary = compile_harness(broken, "broken-combine-order")
    with pytest.raises(AssertionError, match="group order"):
        check(grouped_vjp(33), run(binary, grouped_vjp(33), tmp_path))


@pytest.mark.parametrize(
    ("kernel", "axis"), ((SINGLE, 260), (LOOPED, 4097)), ids=("single", "looped")
)
def test_reusing_one_half_of_the_row_sums_for_every_row_is_caught(
    tmp_path: Path, kernel: int, axis: int
) -> None:
    # Simdgroup 0 then clears the sums of row k + 1 while the other
    # simdgroups still read those of row k; simdgroup_eager lets it run ahead.
    broken = mutate(r"local_sums \+ 2 \* SIMD_SIZE \* \(row & 1\)", "local_sums", kernel)
    binary = compile_harness(broken, f"broken-pingpong-{kernel}")
    case = grouped_vjp(axis, order="simdgroup_eager")
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path))


def test_a_looped_partial_not_started_afresh_is_caught(tmp_path: Path) -> None:
    # The first row of a group adds to whatever the scratch held (poison).
    broken = mutate(r"\(row == row_begin\) \? 0\.0f : gw_partials\[c \+ i\]", "gw_partials[c + i]")
    binary = compile_harness(broken, "broken-looped-reset")
    with pytest.raises(AssertionError):
        check(grouped_vjp(4097), run(binary, grouped_vjp(4097), tmp_path))


def test_a_last_group_that_runs_past_the_rows_is_caught(tmp_path: Path) -> None:
    broken = mutate(r"if \(row_end > n_rows\) \{", "if (false) {", SINGLE)
    binary = compile_harness(broken, "broken-row-end")
    # 7 rows in groups of 2: the last group has one row.
    case = Case("vjp", "float32", 7, 33, residual=True, has_w=True, groups=4)
    with pytest.raises(HarnessFailure, match="out-of-bounds write"):
        run(binary, case, tmp_path)


def test_the_unbroken_kernel_passes_the_same_cases(tmp_path: Path) -> None:
    binary = compile_harness(KERNEL.read_text(), "kernels")
    for i, case in enumerate(
        [
            Case("fwd", "float32", rows=2, axis=33, residual=True, has_w=True),
            Case("fwd", "float32", rows=2, axis=256, residual=True, has_w=True, order="reverse"),
            Case("fwd", "float32", rows=2, axis=4096, residual=False, has_w=True),
            grouped_vjp(33),
            grouped_vjp(4097),
            grouped_vjp(260, order="simdgroup_eager"),
            grouped_vjp(4097, order="simdgroup_eager"),
            Case("vjp", "float32", 7, 33, residual=True, has_w=True, groups=4),
        ]
    ):
        check(case, run(binary, case, tmp_path / str(i)))


# Each threadgroup barrier of the kernels (in source order: threadgroup_sum's
# two, threadgroup_inv_rms's one, which both forwards use, and
# threadgroup_sum_pair's two) and a launch that needs it to order threadgroup
# memory.
BARRIER_USES = (
    (0, Case("fwd", "float32", rows=2, axis=4096, residual=False, has_w=True)),
    (1, Case("fwd", "float32", rows=2, axis=4096, residual=False, has_w=True)),
    (2, Case("fwd", "float32", rows=2, axis=256, residual=True, has_w=True)),
    (2, Case("fwd", "float32", rows=2, axis=4097, residual=True, has_w=True)),
    (3, Case("vjp", "float32", rows=4, axis=260, residual=True, has_w=True, groups=2)),
    (4, Case("vjp", "float32", rows=4, axis=260, residual=True, has_w=True, groups=2)),
)


@pytest.mark.parametrize("flags", ("mem_none", "mem_device"))
@pytest.mark.parametrize(("occurrence", "case"), BARRIER_USES, ids=lambda v: str(v)[:1])
def test_a_barrier_without_mem_threadgroup_is_caught(
    tmp_path: Path, flags: str, occurrence: int, case: Case
) -> None:
    # Every thread still waits at the barrier, and the forward schedule runs
    # them in the order the code intends: only the flags are wrong.
    broken = mutate(BARRIER, f"threadgroup_barrier(mem_flags::{flags});", occurrence)
    binary = compile_harness(broken, f"broken-flags-{flags}-{occurrence}")
    case = replace(case, order="forward")
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path))


def test_barrier_flags_may_be_combined(tmp_path: Path) -> None:
    source = KERNEL.read_text()
    both = re.sub(
        BARRIER, "threadgroup_barrier(mem_flags::mem_threadgroup | mem_flags::mem_device);", source
    )
    binary = compile_harness(both, "flags-combined")
    for i, (_, case) in enumerate(BARRIER_USES[2:5]):
        check(case, run(binary, case, tmp_path / str(i)))


# Device memory: a thread's writes reach the other threads of its threadgroup
# only through a barrier with mem_device, and the other threadgroups of the
# launch not at all; until then they read poison (NaN).

# The looped forward's second pass, taken over by thread lsize - 1 - lid: it
# reads back the h that that thread wrote in the first pass. Every value is in
# its place by then, but the barrier between the passes orders only
# threadgroup memory.
MIRRORED_SECOND_PASS = """// The columns of thread lsize - 1 - lid.
  long mirror = (long(lsize) - 1 - 2 * long(lid)) * N_READS;
  lid = lsize - 1 - lid;
  out += mirror;
  w += w_stride * mirror;
  const device T* h = (HAS_RESIDUAL ? h_out : x) + mirror;"""
LOOPED_READ_BACK = r"const device T\* h = HAS_RESIDUAL \? h_out : x;"
# The barrier of threadgroup_inv_rms, between the looped forward's passes (see
# BARRIER_USES).
LOOPED_FORWARD_BARRIER = 2


@pytest.mark.parametrize("order", ORDERS)
def test_reading_another_threads_device_write_without_mem_device_is_caught(
    tmp_path: Path, order: str
) -> None:
    broken = mutate(LOOPED_READ_BACK, MIRRORED_SECOND_PASS)
    binary = compile_harness(broken, "broken-device-visibility")
    case = Case("fwd", "float32", 2, 4097, residual=True, has_w=True, order=order)
    with pytest.raises(AssertionError, match="relative error nan"):
        check(case, run(binary, case, tmp_path))


def test_device_writes_are_visible_after_a_mem_device_barrier(tmp_path: Path) -> None:
    # The same kernel with mem_device added to that barrier passes; so does it
    # without, where h is x, which no thread writes.
    broken = mutate(LOOPED_READ_BACK, MIRRORED_SECOND_PASS)
    fixed = mutate(
        BARRIER,
        "threadgroup_barrier(mem_flags::mem_threadgroup | mem_flags::mem_device);",
        LOOPED_FORWARD_BARRIER,
        source=broken,
    )
    binaries = {
        True: compile_harness(fixed, "device-visibility-fixed"),
        False: compile_harness(broken, "broken-device-visibility"),
    }
    cases = [(True, True, order) for order in ORDERS] + [(False, False, "reverse")]
    for i, (barrier, residual, order) in enumerate(cases):
        case = Case("fwd", "float32", 2, 4097, residual=residual, has_w=True, order=order)
        check(case, run(binaries[barrier], case, tmp_path / str(i)))


@pytest.mark.parametrize(
    ("other", "order"), ((-1, "forward"), (1, "reverse")), ids=("previous", "next")
)
def test_reading_another_threadgroups_device_write_is_caught(
    tmp_path: Path, other: int, order: str
) -> None:
    # Each group adds the previous (next) group's partial row to its own.
    # Threadgroups run one after another here, in increasing (decreasing)
    # order, so that row is already written; on the GPU nothing orders the
    # threadgroups of one launch.
    broken = mutate(
        r"gw_partials\[i\] = gw_acc\[i\];",
        f"gw_partials[i] = gw_acc[i] + (gid + {other} < 4 ? "
        f"(gw_partials + {other} * long(axis_size))[i] : 0.0f);",
    )
    binary = compile_harness(broken, f"broken-cross-group{other}")
    case = grouped_vjp(33, order=order)
    partials = run(binary, case, tmp_path)["dw_partials_out"]
    first = 0 if other < 0 else 3  # the one group that reads nothing
    assert np.isfinite(partials[first]).all()
    assert np.isnan(np.delete(partials, first, axis=0)).all()


def test_two_threads_writing_the_same_device_memory_is_caught(tmp_path: Path) -> None:
    # Each even thread also writes its h over the next thread's.
    broken = mutate_in_single_row(
        r"h_out\[i\] = hi;", "h_out[i] = h_out[N_READS * (lid % 2 == 0) + i] = hi;", 0
    )
    binary = compile_harness(broken, "broken-device-race")
    case = Case("fwd", "float32", 2, 256, residual=True, has_w=True)
    with pytest.raises(HarnessFailure, match="data race: threads .* device memory"):
        run(binary, case, tmp_path)


# The looped forward's second and third loops run in every form (the first is
# the sandwich form's branch norm); the backward's first.
@pytest.mark.parametrize("occurrence", (1, 3), ids=("forward", "backward"))
def test_a_looped_kernel_hard_coding_1024_threads_is_caught(
    tmp_path: Path, occurrence: int
) -> None:
    # Right at 1024 threads, the default; short of the row at 512.
    broken = mutate(r"c \+= lsize \* N_READS", "c += 1024 * N_READS", occurrence)
    binary = compile_harness(broken, f"broken-1024-{occurrence}")
    family = "fwd" if occurrence == 1 else "vjp"
    case = Case(family, "float32", 2, 8200, residual=True, has_w=True, groups=2)
    check(case, run(binary, case, tmp_path / "1024"))
    case.max_threads = 512
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path / "512"))


@pytest.mark.parametrize(
    ("pattern", "case"),
    (
        (r"thread_h\[i\] = 0;", Case("fwd", "float32", 2, 33, residual=True, has_w=True)),
        (
            r"gw_acc\[i\] = 0\.0f;",
            Case("vjp", "float32", 4, 33, residual=True, has_w=True, groups=2),
        ),
    ),
    ids=("forward", "backward"),
)
def test_an_uninitialised_thread_value_is_caught(tmp_path: Path, pattern: str, case: Case) -> None:
    # Thread-local arrays are filled with a pattern, not whatever the stack held.
    broken = mutate(pattern, ";")
    binary = compile_harness(broken, f"broken-uninit-{case.family}")
    with pytest.raises(AssertionError):
        check(case, run(binary, case, tmp_path))


def test_a_hang_is_caught(tmp_path: Path) -> None:
    # A loop that never advances: the run is stopped and fails.
    broken = mutate(r"c \+= lsize \* N_READS", "c += 0", 1)
    binary = compile_harness(broken, "broken-hang")
    case = Case("fwd", "float32", 1, 4097, residual=False, has_w=True)
    with pytest.raises(HarnessFailure, match="hang"):
        run(binary, case, tmp_path, timeout=5)


@pytest.mark.parametrize("occurrence", range(7))
def test_a_32_bit_row_offset_is_caught(occurrence: int) -> None:
    broken = mutate(r"size_t\(axis_size\)", "axis_size", occurrence)
    assert any("32-bit" in p for p in row_offset_problems(broken))


def test_a_row_offset_held_in_32_bits_is_caught() -> None:
    broken = mutate(r"size_t offset =", "uint offset =")
    assert any("held in uint" in p for p in row_offset_problems(broken))


def test_another_rounding_order_is_caught_bit_for_bit(tmp_path: Path) -> None:
    # Within every tolerance: only the comparison bit for bit sees it.
    broken = mutate(
        r"rsqrt\(sum_squares / axis_size \+ eps\)", "rsqrt(sum_squares * (1.0f / axis_size) + eps)"
    )
    binary = compile_harness(broken, "broken-rounding")
    case = Case("fwd", "float32", rows=64, axis=33, residual=False, has_w=True)
    with pytest.raises(AssertionError, match="rounding order"):
        check(case, run(binary, case, tmp_path))


def test_an_offset_rounded_to_the_weight_type_is_caught(tmp_path: Path) -> None:
    # 1 + w rounded to bfloat16 first, as mlx-lm's Gemma norms compute it: within
    # every tolerance, but not the contract's rounding order.
    broken = mutate(
        r"\(offset \+ static_cast<float>\(w\)\)",
        "static_cast<float>(static_cast<T>(offset + static_cast<float>(w)))",
    )
    binary = compile_harness(broken, "broken-offset-rounding")
    case = Case("fwd", "bfloat16", 2, 256, residual=True, has_w=True, branch=True, offset=1.0)
    with pytest.raises(AssertionError, match="differs|relative error"):
        check(case, run(binary, case, tmp_path))


def test_a_branch_norm_with_the_output_weight_is_caught(tmp_path: Path) -> None:
    # The sandwich form's first norm taking the weight of the second.
    broken = mutate_in_single_row(r"w_branch\[w_branch_stride \* i\]", "w[w_stride * i]", 0)
    binary = compile_harness(broken, "broken-branch-weight")
    case = Case("fwd", "float16", 2, 256, residual=True, has_w=True, branch=True)
    with pytest.raises(AssertionError, match="h differs"):
        check(case, run(binary, case, tmp_path))


def test_another_rounding_order_in_the_backward_is_caught(tmp_path: Path) -> None:
    # The mean of g * w * h by a reciprocal: within every tolerance, not bit for bit.
    broken = mutate(
        r"float mean_gwh = sumgwh / axis_size;", "float mean_gwh = sumgwh * (1.0f / axis_size);"
    )
    binary = compile_harness(broken, "broken-vjp-rounding")
    case = Case("vjp", "float32", 8, 33, residual=True, has_w=True, groups=4)
    with pytest.raises(AssertionError, match="gx differs from the kernel's rounding order"):
        check(case, run(binary, case, tmp_path))
