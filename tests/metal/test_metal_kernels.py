"""The Metal kernels of RMSNormFused, run on Linux under the emulation harness.

Every kernel entry point runs for each dtype, with and without a residual and
a weight, in its single-row and looped variants, and is compared with a
float64 NumPy reference at the CPU tests' tolerances; the forward's y is also
pinned bit for bit to an emulation of the kernel's float32 operations in the
kernel's order (forward_bits). Schedules are
deterministic and adversarial, so a race fails every time. The backward takes
rows in groups, one float32 row of weight-gradient partials per group; dw must
equal, bit for bit, those partials summed in the documented order.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from harness import (
    EPS,
    KERNEL,
    ORDERS,
    Case,
    compile_harness,
    geometry,
    run,
    to_f32,
    to_storage,
)
from tolerances import REF_RTOL, SMALLEST_NORMAL

# rms_norm_fused.h's target number of row groups in the backward.
RMS_FUSED_VJP_GROUPS = 512

DTYPES = ("float32", "float16", "bfloat16")
# 31 and 33: a partial simdgroup of work, 32 a whole one; 4095: a partial
# last read; 4096: the largest single-row launch; 4097 and 8200: looped, with
# a partial last pass.
AXES = (1, 31, 32, 33, 4095, 4096, 4097, 8200)


@pytest.fixture(scope="session")
def harness() -> Path:
    return compile_harness(KERNEL.read_text(), "kernels")


@pytest.fixture(scope="session")
def asan_harness() -> Path:
    return compile_harness(KERNEL.read_text(), "kernels-asan", asan=True)


def f64(a: np.ndarray, dtype: str) -> np.ndarray:
    return to_f32(a, dtype).astype(np.float64)


def threadgroup_sums(values: np.ndarray, lsize: int) -> np.ndarray:
    """The float32 sum of each row of `values` as the kernels take it: thread
    lid adds the values of its columns c + lid * 4 + i in pass order, then
    simd_sum adds the lanes of each simdgroup in order, then the simdgroups'
    sums are added in order, each sum starting from 0."""
    rows, axis = values.shape
    per_pass = lsize * 4
    passes = -(-axis // per_pass)
    padded = np.zeros((rows, passes * per_pass), np.float32)
    padded[:, :axis] = values
    parts = padded.reshape(rows, passes, lsize, 4)
    acc = np.zeros((rows, lsize), np.float32)
    for c in range(passes):
        for i in range(4):
            acc = acc + parts[:, c, :, i]
    lanes = acc.reshape(rows, lsize // 32, 32)
    simd = np.zeros((rows, lsize // 32), np.float32)
    for lane in range(32):
        simd = simd + lanes[:, :, lane]
    total = np.zeros(rows, np.float32)
    for g in range(lsize // 32):
        total = total + simd[:, g]
    return total


def forward_bits(
    h: np.ndarray, w: np.ndarray | None, dtype: str, lsize: int, offset: float = 0.0
) -> np.ndarray:
    """y exactly as the forward kernels compute it, from h as stored.

    Thread lid holds columns c + lid * 4 + i of each pass c (a single pass
    when the row fits) and adds their float32 squares in order from 0; the
    threads' sums go through threadgroup_sum: simd_sum in each simdgroup
    (lane order, as the harness's simd_sum adds them), then the simdgroups'
    sums in simdgroup order. inv = 1 / sqrt(sum / axis + eps), each step in
    float32; y = w * T(h * inv), every product rounded to its type, or with an
    offset T((h * inv) * (offset + w)) in float32, rounded once."""
    axis = h.shape[1]
    h32 = to_f32(h, dtype)
    total = threadgroup_sums(h32 * h32, lsize)
    inv = np.float32(1) / np.sqrt(total / np.float32(axis) + np.float32(EPS))
    w32 = np.float32(1) if w is None else to_f32(w, dtype)
    if offset:
        return to_storage((h32 * inv[:, None]) * (np.float32(offset) + w32), dtype)
    normalized = to_f32(to_storage(h32 * inv[:, None], dtype), dtype)
    return to_storage(w32 * normalized, dtype)


def vjp_gx_bits(
    h: np.ndarray,
    g: np.ndarray,
    w: np.ndarray | None,
    gh: np.ndarray | None,
    dtype: str,
    lsize: int,
    offset: float = 0.0,
) -> np.ndarray:
    """gx exactly as the backward kernels compute it, from the stored inputs:
    the sums of h * h and of (g * s) * h in threadgroup_sums' order, with the
    scale s = w (+ offset); inv = 1 / sqrt(sum / axis + eps); then
    ((g * s) * inv - (h * mean) * inv^3) (+ gh), each step in float32, rounded
    once to the dtype."""
    axis = h.shape[1]
    h32, g32 = to_f32(h, dtype), to_f32(g, dtype)
    s32 = np.float32(1) if w is None else to_f32(w, dtype) + np.float32(offset)
    gs = g32 * s32
    inv = np.float32(1) / np.sqrt(
        threadgroup_sums(h32 * h32, lsize) / np.float32(axis) + np.float32(EPS)
    )
    mean = threadgroup_sums(gs * h32, lsize) / np.float32(axis)
    inv3 = inv * inv * inv
    d = gs * inv[:, None] - (h32 * mean[:, None]) * inv3[:, None]
    if gh is not None:
        d = d + to_f32(gh, dtype)
    return to_storage(d, dtype)


def vjp_partials_bits(
    h: np.ndarray, g: np.ndarray, dtype: str, lsize: int, rows_per_group: int
) -> np.ndarray:
    """The weight-gradient partials exactly as the backward kernels sum them:
    each group's rows in order from 0, each term (g * h) * inv in float32."""
    axis = h.shape[1]
    h32, g32 = to_f32(h, dtype), to_f32(g, dtype)
    inv = np.float32(1) / np.sqrt(
        threadgroup_sums(h32 * h32, lsize) / np.float32(axis) + np.float32(EPS)
    )
    terms = (g32 * h32) * inv[:, None]
    partials = []
    for start in range(0, h.shape[0], rows_per_group):
        acc = np.zeros(axis, np.float32)
        for row in terms[start : start + rows_per_group]:
            acc = acc + row
        partials.append(acc)
    return np.array(partials, np.float32)


def residual_sum(b: np.ndarray, r: np.ndarray, dtype: str, clip: bool) -> np.ndarray:
    """h = b + r as stored: the float32 sum rounded to the dtype, clipped to the
    float16 range first with clip (Gemma 3's clip_residual)."""
    total = to_f32(b, dtype) + to_f32(r, dtype)
    if clip:
        total = np.where(np.isnan(total), total, np.clip(total, -65504.0, 65504.0))
    return to_storage(total.astype(np.float32), dtype)


def same_values(got: np.ndarray, want: np.ndarray, dtype: str) -> int:
    """How many stored values differ, bit for bit."""
    unsigned = np.uint32 if dtype == "float32" else np.uint16
    return int(np.count_nonzero(got.view(unsigned) != want.view(unsigned)))


def check_forward(case: Case, arrays: dict[str, np.ndarray]) -> None:
    lsize = arrays["threadgroup"]
    w = arrays["w"] if case.has_w else None
    x = arrays["x"]
    if case.branch:
        # The branch norm of x, as the plain form computes it, rounded.
        x = forward_bits(x, arrays["wb"] if case.has_w else None, case.dtype, lsize, case.offset)
    if case.residual:
        # h is b + r rounded to the dtype, bit for bit.
        h = residual_sum(x, arrays["r"], case.dtype, case.clip)
        differ = same_values(arrays["h_out"], h, case.dtype)
        assert differ == 0, f"h differs from b + r in {differ} values"
    else:
        h = x
    if case.post:
        return
    h64 = f64(h, case.dtype)
    ref = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + EPS)
    if case.has_w:
        ref = ref * (case.offset + f64(arrays["w"], case.dtype))
    got = f64(arrays["out_out"], case.dtype)
    scale = np.maximum(np.abs(ref), SMALLEST_NORMAL[case.dtype])
    worst = float((np.abs(got - ref) / scale).max())
    assert worst <= REF_RTOL[case.dtype], f"relative error {worst:.3g}"
    differ = same_values(
        arrays["out_out"], forward_bits(h, w, case.dtype, lsize, case.offset), case.dtype
    )
    assert differ == 0, f"y differs from the kernel's rounding order in {differ} values"


def vjp_row_groups(rows: int, target: int) -> tuple[int, int]:
    """The backward's documented rule: the fewest rows per threadgroup that
    need at most `target` groups; returns (rows_per_group, groups)."""
    per_group = max(-(-rows // target), 1)
    return per_group, -(-rows // per_group)


def combine_in_order(partials: np.ndarray, dtype: str) -> np.ndarray:
    """dw as rms_fused_gw_combine documents it: the float32 partial rows added
    one after another from group 0, starting at 0, then rounded once."""
    acc = np.zeros(partials.shape[1], dtype=np.float32)
    for row in partials:
        acc = acc + row
    return to_storage(acc, dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def check_vjp(case: Case, arrays: dict[str, np.ndarray]) -> None:
    h, g = f64(arrays["h"], case.dtype), f64(arrays["dy"], case.dtype)
    w = case.offset + f64(arrays["w"], case.dtype) if case.has_w else np.ones(case.axis)
    inv = 1 / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + EPS)
    mean_gwh = np.mean(g * w * h, axis=-1, keepdims=True)
    terms = [g * w * inv, -h * mean_gwh * inv**3]
    if case.residual:
        terms.append(f64(arrays["dh_in"], case.dtype))
    ref = sum(terms)
    # One rounding of the result, float32 arithmetic on each term, and the
    # float32 sums over the row, whose error scales with the sum of |g w h|
    # (not with mean_gwh, which may cancel to nearly nothing).
    eps32 = 2.0**-24
    allowed = (
        REF_RTOL[case.dtype] / 2 * np.abs(ref)
        + 32 * eps32 * sum(map(np.abs, terms))
        + 64 * eps32 * np.abs(h) * inv**3 * np.mean(np.abs(g * w * h), axis=-1, keepdims=True)
    )
    err = np.abs(f64(arrays["dh_out"], case.dtype) - ref)
    assert np.all(err <= allowed + SMALLEST_NORMAL[case.dtype]), f"dh error {err.max():.3g}"
    bits = vjp_gx_bits(
        arrays["h"],
        arrays["dy"],
        arrays["w"] if case.has_w else None,
        arrays["dh_in"] if case.residual else None,
        case.dtype,
        arrays["threadgroup"],
        case.offset,
    )
    differ = same_values(arrays["dh_out"], bits, case.dtype)
    assert differ == 0, f"gx differs from the kernel's rounding order in {differ} values"

    per_group, groups = vjp_row_groups(case.rows, case.groups or RMS_FUSED_VJP_GROUPS)
    assert (arrays["rows_per_group"], arrays["groups"]) == (per_group, groups)
    if not case.has_w:
        return
    # Each group's float32 partial row: the sum over its rows, in order, of
    # g h inv, each term within a few units in the last place.
    v = g * h * inv
    starts = np.arange(0, case.rows, per_group)
    part_ref = np.add.reduceat(v, starts, axis=0)
    part_abs = np.add.reduceat(np.abs(v), starts, axis=0)
    part_err = np.abs(arrays["dw_partials_out"].astype(np.float64) - part_ref)
    part_allowed = (per_group + 4) * 2.0**-23 * part_abs + 1e-30
    assert np.all(part_err <= part_allowed), f"dw partial error {part_err.max():.3g}"
    partials = vjp_partials_bits(
        arrays["h"], arrays["dy"], case.dtype, arrays["threadgroup"], per_group
    )
    assert same_bits(arrays["dw_partials_out"], partials), (
        "the weight-gradient partials differ from the kernel's order"
    )
    # dw: within float32 summation error of the exact sum, rounded once to the
    # dtype; and bit for bit the partials combined in the documented order.
    dw = arrays["dw_out"]
    dw_ref = v.sum(axis=0)
    dw_allowed = (REF_RTOL[case.dtype] / 2 + 2.0**-23) * np.abs(dw_ref) + (
        case.rows + groups + 4
    ) * 2.0**-23 * np.abs(v).sum(axis=0)
    dw_err = np.abs(f64(dw, case.dtype) - dw_ref)
    assert np.all(dw_err <= dw_allowed + SMALLEST_NORMAL[case.dtype]), (
        f"dw error {dw_err.max():.3g}"
    )
    assert same_bits(dw, combine_in_order(arrays["dw_partials_out"], case.dtype)), (
        "dw is not the partials summed in group order"
    )


def check(case: Case, arrays: dict[str, np.ndarray]) -> None:
    (check_forward if case.family == "fwd" else check_vjp)(case, arrays)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("has_w", (True, False), ids=("weight", "no_weight"))
@pytest.mark.parametrize("residual", (True, False), ids=("residual", "plain"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_every_entry_point(
    harness: Path, tmp_path: Path, family: str, dtype: str, residual: bool, has_w: bool, axis: int
) -> None:
    # The backward: 5 rows in groups of 3 and 2.
    rows, groups = (2, None) if family == "fwd" else (5, 2)
    case = Case(family, dtype, rows, axis, residual=residual, has_w=has_w, groups=groups)
    check(case, run(harness, case, tmp_path))


# The norm forms (function constants of the same kernels): post-norm and
# sandwich, each with and without the weight offset, at row lengths that take
# one simdgroup, several, and the looped kernel, under the schedule that lets
# simdgroups run ahead and the one that runs threadgroups backwards.
FORMS = {
    "post": {"branch": True, "post": True},
    "sandwich": {"branch": True},
    "pre": {},
}
# The pre-norm form without an offset is test_every_entry_point's.
FORM_OFFSETS = [(f, o) for f in FORMS for o in (0.0, 1.0) if f != "pre" or o]


@pytest.mark.parametrize("order", ("reverse", "simdgroup_eager"))
@pytest.mark.parametrize("axis", (33, 4096, 8200))
@pytest.mark.parametrize(("form", "offset"), FORM_OFFSETS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_form(
    harness: Path, tmp_path: Path, dtype: str, form: str, offset: float, axis: int, order: str
) -> None:
    case = Case(
        "fwd", dtype, 3, axis, residual=True, has_w=True, order=order, offset=offset, **FORMS[form]
    )
    check(case, run(harness, case, tmp_path))


@pytest.mark.parametrize("form", ("post", "sandwich", "pre"))
@pytest.mark.parametrize("axis", (33, 8200))
def test_clipped_float16_residual(harness: Path, tmp_path: Path, form: str, axis: int) -> None:
    # Residuals near the float16 limit: many sums go past it and are clipped.
    case = Case(
        "fwd",
        "float16",
        2,
        axis,
        residual=True,
        has_w=True,
        clip=True,
        offset=1.0,
        residual_scale=40000.0,
        **FORMS[form],
    )
    arrays = run(harness, case, tmp_path)
    check(case, arrays)
    assert np.any(np.abs(to_f32(arrays["h_out"], "float16")) == 65504.0)


@pytest.mark.parametrize("axis", (33, 4097))
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_with_the_weight_offset(
    harness: Path, tmp_path: Path, dtype: str, axis: int
) -> None:
    case = Case("vjp", dtype, 5, axis, residual=True, has_w=True, groups=2, offset=1.0)
    check(case, run(harness, case, tmp_path))


# Every threadgroup size eval_gpu can choose. The single-row kernels take the
# fewest simdgroups that hold the row, four values a thread: k simdgroups for
# rows of 128 (k - 1) + 1 to 128 k. Each of the four runs at every size, at the
# shortest row of that size (just past a simdgroup boundary) or at one of the
# longest (128 k - k % 4: every remainder modulo the four values of a thread
# in turn, the boundary itself at every fourth size), alternately; the dtype
# and whether there is a weight turn too.
SINGLE_ROW_KERNELS = (("fwd", False), ("fwd", True), ("vjp", False), ("vjp", True))


@pytest.mark.parametrize("simdgroups", range(1, 33), ids=lambda k: f"{32 * k}-threads")
def test_every_single_row_kernel_at_every_threadgroup_size(
    harness: Path, tmp_path: Path, simdgroups: int
) -> None:
    k = simdgroups
    for j, (family, residual) in enumerate(SINGLE_ROW_KERNELS):
        axis = 128 * (k - 1) + 1 if (j + k) % 2 else 128 * k - k % 4
        dtype, has_w = DTYPES[(j + k) % 3], (j + k) % 3 != 1
        case = Case(family, dtype, 3, axis, residual=residual, has_w=has_w, groups=2)
        arrays = run(harness, case, tmp_path / str(j))
        assert arrays["threadgroup"] == 32 * k and "_looped" not in arrays["kernel"]
        check(case, arrays)


# The looped kernels take the pipeline's maxTotalThreadsPerThreadgroup, which
# Metal may set to any multiple of the simdgroup width up to 1024 (less when
# a kernel needs many registers); the combine takes at most 256 of it.
PIPELINE_LIMITS = range(32, 1025, 32)


@pytest.mark.parametrize("max_threads", PIPELINE_LIMITS)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_looped_kernels_at_every_pipeline_limit(
    harness: Path, tmp_path: Path, family: str, max_threads: int
) -> None:
    # 4097: a partial last pass at any size; 8200 crosses the passes of 1024
    # threads too.
    dtype = DTYPES[max_threads // 32 % 3]
    for i, (axis, residual) in enumerate(((4097, True), (8200, False))):
        case = Case(
            family, dtype, 3, axis, residual=residual, has_w=True, groups=2,
            max_threads=max_threads,
        )  # fmt: skip
        arrays = run(harness, case, tmp_path / str(i))
        assert arrays["threadgroup"] == max_threads and "_looped" in arrays["kernel"]
        check(case, arrays)


# The combine, one thread per column: whole simdgroups up to 256 threads (or
# the pipeline's limit, above). Each size at its shortest and longest rows.
@pytest.mark.parametrize("threads", range(32, 257, 32))
def test_combine_at_every_threadgroup_size(harness: Path, tmp_path: Path, threads: int) -> None:
    for i, axis in enumerate((threads - 31, threads)):
        assert geometry(harness, axis, 5)["combine_threadgroup_size"] == str(threads)
        dtype = DTYPES[(threads // 32 + i) % 3]
        case = Case("vjp", dtype, 5, axis, residual=i == 0, has_w=True, groups=3)
        check(case, run(harness, case, tmp_path / str(i)))


# Row lengths on each side of every vector (4 values) and simdgroup (128
# values) boundary, of the largest single-row launch, and of whole passes of
# the looped kernels (4096 values a pass at 1024 threads); every kernel.
BOUNDARY_AXES = (2, 3, 4, 5, 127, 128, 129, 4094, 8191, 8192, 8193, 12289)


@pytest.mark.parametrize("axis", BOUNDARY_AXES)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_row_lengths_at_every_boundary(
    harness: Path, tmp_path: Path, family: str, axis: int
) -> None:
    for dtype, residual in (("float32", True), ("float16", False)):
        case = Case(family, dtype, 3, axis, residual=residual, has_w=True, groups=2)
        check(case, run(harness, case, tmp_path / dtype))


@pytest.mark.parametrize("axis", (33, 4096, 4097))
@pytest.mark.parametrize("residual", (True, False), ids=("residual", "plain"))
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
def test_large_magnitudes(
    harness: Path, tmp_path: Path, dtype: str, residual: bool, axis: int
) -> None:
    # Inputs about 100 in size: h, the squares and y still bit for bit.
    for family in ("fwd", "vjp"):
        case = Case(family, dtype, 3, axis, residual=residual, has_w=True, groups=2, scale=100)
        check(case, run(harness, case, tmp_path / family))


def row_offset_problems(source: str) -> list[str]:
    """Products of a row (or group) index with the row length that are not
    formed in 64 bits. axis_size and the indices are 32-bit uints, so
    `row * axis_size` wraps once a tensor passes 2^32 elements; each such
    product must multiply by size_t(axis_size), and what holds it be size_t."""
    problems = []
    for m in re.finditer(r"(\w+)\s*\*\s*(size_t\s*\(\s*)?axis_size\b", source):
        line = source[source.rfind("\n", 0, m.start()) + 1 : source.find("\n", m.end())].strip()
        if m.group(2) is None:
            problems.append(f"32-bit product: {line}")
        held = re.match(r"(?:const\s+)?(\w+)\s+\w+\s*=", line)
        if held and held.group(1) != "size_t":
            problems.append(f"held in {held.group(1)}: {line}")
    for m in re.finditer(r"axis_size\s*\*\s*\w+", source):
        problems.append(f"32-bit product: {m.group(0)}")
    return problems


def test_row_offsets_are_64_bit() -> None:
    source = KERNEL.read_text()
    # Every kernel indexes rows (the forward by gid, the backward by row and
    # for its partials by gid, the combine by group k).
    assert len(re.findall(r"\w+\s*\*\s*size_t\(axis_size\)", source)) >= 7
    assert row_offset_problems(source) == []
    # What 32 bits would do: row 2^20 of rows of 4096 is element 2^32.
    row, axis = 2**20, 4096
    assert (np.array([row], np.uint32) * np.uint32(axis))[0] == 0
    assert row * axis == 2**32


# 33: single-row, one simdgroup and part of another; 4096: single-row, 32
# simdgroups; 8200: looped. Both forward kernels, in a dtype for each length.
SCHEDULE_FORWARD = [(33, "float32"), (4096, "float16"), (8200, "bfloat16")]


@pytest.mark.parametrize(("axis", "dtype"), SCHEDULE_FORWARD, ids=str)
@pytest.mark.parametrize("residual", (True, False), ids=("residual", "plain"))
@pytest.mark.parametrize("order", ORDERS)
def test_every_schedule_forward(
    harness: Path, tmp_path: Path, order: str, residual: bool, axis: int, dtype: str
) -> None:
    case = Case("fwd", dtype, rows=3, axis=axis, residual=residual, has_w=True, order=order)
    check(case, run(harness, case, tmp_path))


# 31: one simdgroup, partly idle; 260: three simdgroups, so that the row sums
# go through threadgroup memory; 4097: looped.
@pytest.mark.parametrize("axis", (31, 260, 4097))
@pytest.mark.parametrize("has_w", (True, False), ids=("weight", "no_weight"))
@pytest.mark.parametrize("residual", (True, False), ids=("residual", "plain"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ORDERS)
def test_every_schedule_backward(
    harness: Path, tmp_path: Path, order: str, dtype: str, residual: bool, has_w: bool, axis: int
) -> None:
    # 7 rows in groups of 3, 3 and 1.
    case = Case("vjp", dtype, 7, axis, residual=residual, has_w=has_w, order=order, groups=3)
    check(case, run(harness, case, tmp_path))


# Row counts under the real rule (512 groups at most): one row; fewer rows than
# groups; exactly 512; one more (two rows per group, a last group of one);
# 1024 (every group full); 1537 (four per group, a last group of one).
@pytest.mark.parametrize("rows", (1, 2, 511, 512, 513, 1024, 1537))
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_row_counts(harness: Path, tmp_path: Path, dtype: str, rows: int) -> None:
    case = Case("vjp", dtype, rows, 33, residual=True, has_w=True, order="simdgroup_eager")
    check(case, run(harness, case, tmp_path))


# Wide rows with several rows per group, whole and partial last groups (a
# smaller target number of groups keeps them short).
# (rows, target groups): one row; 2 + 2; 3 + 2; 2 + 2 + 2; 3 + 3 + 3.
GROUPINGS = ((1, 2), (4, 2), (5, 2), (6, 4), (9, 3))
WIDE = [(axis, rows, groups) for axis in (4095, 4096, 4097) for rows, groups in GROUPINGS]


@pytest.mark.parametrize(("axis", "rows", "groups"), WIDE + [(65536, 1, 2), (65536, 5, 2)], ids=str)
def test_backward_wide_rows_in_groups(
    harness: Path, tmp_path: Path, axis: int, rows: int, groups: int
) -> None:
    case = Case("vjp", "bfloat16", rows, axis, residual=True, has_w=True, groups=groups)
    check(case, run(harness, case, tmp_path))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", (33, 4097))
def test_dw_is_combined_in_a_fixed_order(
    harness: Path, tmp_path: Path, axis: int, dtype: str
) -> None:
    """Under every schedule, and again, the same inputs give the same bits; dw
    is bit for bit the partials summed in the documented group order."""
    results = []
    for i, order in enumerate(ORDERS + ORDERS[:1]):
        case = Case("vjp", dtype, 11, axis, residual=True, has_w=True, order=order, groups=5)
        arrays = run(harness, case, tmp_path / str(i))
        check(case, arrays)
        results.append(arrays)
    first = results[0]
    assert first["groups"] == 4 and first["rows_per_group"] == 3
    for other in results[1:]:
        for name in ("dh_out", "dw_partials_out", "dw_out"):
            assert same_bits(first[name], other[name]), f"{name} depends on the schedule"
    partials = first["dw_partials_out"]
    assert same_bits(first["dw_out"], combine_in_order(partials, dtype))
    if dtype == "float32":
        # The data tell the orders apart, so another order would fail above.
        assert not same_bits(combine_in_order(partials[::-1], dtype), first["dw_out"])
        pairwise = (partials[0] + partials[1]) + (partials[2] + partials[3])
        assert not same_bits(pairwise, first["dw_out"])


@pytest.mark.parametrize("axis", (33, 8200))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_under_address_sanitizer(
    asan_harness: Path, tmp_path: Path, family: str, dtype: str, axis: int
) -> None:
    rows, groups = (2, None) if family == "fwd" else (5, 2)
    case = Case(family, dtype, rows, axis, residual=True, has_w=True, groups=groups)
    check(case, run(asan_harness, case, tmp_path))


@pytest.mark.parametrize("axis", (1, 31, 32, 33, 4095, 4096, 4097, 65536, 65537))
def test_dispatch_geometry(harness: Path, axis: int) -> None:
    rows = 3
    g = geometry(harness, axis, rows)
    tg, grid = int(g["threadgroup_size"]), int(g["grid_size"])
    assert g["looped"] == str(int(axis > 4096))
    assert tg % 32 == 0 and 32 <= tg <= 1024
    assert grid == rows * tg
    if g["looped"] == "1":
        assert tg == 1024 and g["kernel"] == "rms_fused_residual_loopedfloat32"
    else:
        # The fewest simdgroups whose threads hold the row, four values each.
        assert tg * 4 >= axis > (tg - 32) * 4 or tg == 32
        assert g["kernel"] == "rms_fused_residualfloat32"
    # The backward's threadgroups are the forward's, one per group of rows.
    assert int(g["vjp_threadgroup_size"]) == tg
    assert int(g["vjp_grid_size"]) == int(g["vjp_groups"]) * tg
    # The combine: one thread per column, whole simdgroups.
    ctg, cgrid = int(g["combine_threadgroup_size"]), int(g["combine_grid_size"])
    assert ctg % 32 == 0 and 32 <= ctg <= 256 and cgrid % ctg == 0
    assert cgrid >= axis > cgrid - ctg
    assert g["combine_kernel"] == "rms_fused_gw_combinefloat32"


def test_geometry_respects_a_smaller_pipeline_limit(harness: Path) -> None:
    assert geometry(harness, 65536, 1, max_threads=512)["threadgroup_size"] == "512"
    assert geometry(harness, 65536, 1, max_threads=64)["combine_threadgroup_size"] == "64"


ROW_COUNTS = (1, 2, 3, 511, 512, 513, 1000, 1023, 1024, 1025, 4096, 4097, 10**6, 2**31 + 7)


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_backward_row_groups(harness: Path, rows: int) -> None:
    g = geometry(harness, 4096, rows)
    per_group, groups = int(g["vjp_rows_per_group"]), int(g["vjp_groups"])
    assert (per_group, groups) == vjp_row_groups(rows, RMS_FUSED_VJP_GROUPS)
    # Every row in exactly one group, every group non-empty, at most 512.
    assert (groups - 1) * per_group < rows <= groups * per_group
    assert groups <= RMS_FUSED_VJP_GROUPS
    # The fewest rows per group that keep within the target.
    assert per_group == 1 or -(-rows // (per_group - 1)) > RMS_FUSED_VJP_GROUPS


@pytest.mark.parametrize("axis", (1, 33, 4096, 8200, 65536))
def test_backward_scratch_is_per_group_not_per_row(harness: Path, axis: int) -> None:
    def scratch(rows: int) -> int:
        return int(geometry(harness, axis, rows)["vjp_partials_bytes"])

    # One float32 row per group: per row while there are fewer rows than
    # groups, then capped, however many rows there are.
    assert scratch(1) == 4 * axis
    assert scratch(300) == 300 * 4 * axis
    cap = RMS_FUSED_VJP_GROUPS * 4 * axis
    assert scratch(4096) == scratch(2**20) == cap
    assert max(scratch(rows) for rows in ROW_COUNTS) == cap
