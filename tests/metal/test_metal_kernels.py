"""The Metal kernels of RMSNormFused, run on Linux under the emulation harness.

Every kernel entry point runs for each dtype, with and without a residual and
a weight, in its single-row and looped variants, and is compared with a
float64 NumPy reference at the CPU tests' tolerances. Schedules are
deterministic and adversarial, so a race fails every time.
"""

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

DTYPES = ("float32", "float16", "bfloat16")
# 33: a partial simdgroup of work; 4096: the largest single-row launch;
# 4097 and 8200: looped, with a partial last pass.
AXES = (1, 33, 4096, 4097, 8200)


@pytest.fixture(scope="session")
def harness() -> Path:
    return compile_harness(KERNEL.read_text(), "kernels")


@pytest.fixture(scope="session")
def asan_harness() -> Path:
    return compile_harness(KERNEL.read_text(), "kernels-asan", asan=True)


def f64(a: np.ndarray, dtype: str) -> np.ndarray:
    return to_f32(a, dtype).astype(np.float64)


def check_forward(case: Case, arrays: dict[str, np.ndarray]) -> None:
    x = arrays["x"]
    if case.residual:
        # h is x + r rounded to the dtype, bit for bit.
        h = to_storage(to_f32(x, case.dtype) + to_f32(arrays["r"], case.dtype), case.dtype)
        assert np.array_equal(arrays["h_out"].view(h.dtype), h), "h differs from x + r"
    else:
        h = x
    h64 = f64(h, case.dtype)
    ref = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + EPS)
    if case.has_w:
        ref = ref * f64(arrays["w"], case.dtype)
    got = f64(arrays["out_out"], case.dtype)
    scale = np.maximum(np.abs(ref), SMALLEST_NORMAL[case.dtype])
    worst = float((np.abs(got - ref) / scale).max())
    assert worst <= REF_RTOL[case.dtype], f"relative error {worst:.3g}"


def check_vjp(case: Case, arrays: dict[str, np.ndarray]) -> None:
    h, g = f64(arrays["h"], case.dtype), f64(arrays["dy"], case.dtype)
    w = f64(arrays["w"], case.dtype) if case.has_w else np.ones(case.axis)
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
    if case.has_w:
        dw_ref = g * h * inv
        dw_err = np.abs(arrays["dw_rows_out"].astype(np.float64) - dw_ref)
        assert np.all(dw_err <= 4 * 2.0**-23 * np.abs(dw_ref) + 1e-30), "dw partials"


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
    case = Case(family, dtype, rows=2, axis=axis, residual=residual, has_w=has_w)
    check(case, run(harness, case, tmp_path))


@pytest.mark.parametrize("axis", (33, 4096, 8200))
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_every_schedule(harness: Path, tmp_path: Path, family: str, order: str, axis: int) -> None:
    case = Case(family, "float32", rows=3, axis=axis, residual=True, has_w=True, order=order)
    check(case, run(harness, case, tmp_path))


@pytest.mark.parametrize("axis", (33, 8200))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ("fwd", "vjp"))
def test_under_address_sanitizer(
    asan_harness: Path, tmp_path: Path, family: str, dtype: str, axis: int
) -> None:
    case = Case(family, dtype, rows=2, axis=axis, residual=True, has_w=True)
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


def test_geometry_respects_a_smaller_pipeline_limit(harness: Path) -> None:
    assert geometry(harness, 65536, 1, max_threads=512)["threadgroup_size"] == "512"
