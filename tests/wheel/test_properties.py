"""Property-based checks over shapes, layouts, dtypes and eps, and memory use."""

import math

import mlx.core as mx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import REF_RTOL, SMALLEST_NORMAL, rms_norm_f64, to_f64

FLOATS = (mx.float32, mx.float16, mx.bfloat16)
OTHERS = (mx.int32, mx.uint8, mx.bool_, mx.complex64, mx.float64)


@st.composite
def layouts(draw: st.DrawFn, dtype: mx.Dtype) -> mx.array:
    """An array of `dtype` that may be transposed, sliced or broadcast."""
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(0 if i < ndim - 1 else 1, 6)) for i in range(ndim - 1)]
    shape.append(draw(st.integers(1, 70)))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["plain", "step", "transposed", "broadcast"]))
    # GPUs have no float64, so such inputs are made on the CPU.
    with mx.stream(mx.cpu if dtype == mx.float64 else mx.default_device()):
        base = mx.random.uniform(-2, 2, shape=(2 * shape[0], *shape[1:]), key=mx.random.key(seed))
        base = base.astype(dtype) if dtype != mx.bool_ else base > 0
        if kind == "step":
            return base[::2]
        if kind == "transposed" and ndim >= 2:
            return mx.swapaxes(mx.swapaxes(base[: shape[0]], 0, -1), 0, -1)
        if kind == "broadcast" and ndim >= 2:
            return mx.broadcast_to(base[:1], tuple(shape))
        return base[: shape[0]]


@st.composite
def calls(draw: st.DrawFn) -> dict:
    valid_dtype = draw(st.booleans()) or draw(st.booleans())
    dtype = draw(st.sampled_from(FLOATS if valid_dtype else OTHERS))
    x = draw(layouts(dtype))
    eps = draw(
        st.one_of(
            st.floats(0, 1e-2),
            st.sampled_from([-1e-5, math.nan, math.inf, -math.inf, 0.0]),
        )
    )
    weight = None
    if draw(st.booleans()):
        size = x.shape[-1] if draw(st.integers(0, 5)) else x.shape[-1] + 1
        weight = mx.random.uniform(shape=(size,), key=mx.random.key(size)).astype(
            draw(st.sampled_from(FLOATS))
        )
    residual = None
    if draw(st.booleans()):
        shape = x.shape if draw(st.integers(0, 5)) else (*x.shape[:-1], x.shape[-1] + 1)
        with mx.stream(mx.cpu if x.dtype == mx.float64 else mx.default_device()):
            residual = mx.random.uniform(shape=shape, key=mx.random.key(7)).astype(x.dtype)
    return {"x": x, "weight": weight, "eps": eps, "residual": residual}


def is_valid(x: mx.array, weight: mx.array | None, eps: float, residual) -> bool:  # type: ignore[no-untyped-def]
    return (
        x.dtype in FLOATS
        and math.isfinite(eps)
        and eps >= 0
        and (weight is None or weight.shape == (x.shape[-1],))
        and (residual is None or residual.shape == x.shape)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_matches_reference_or_raises(call: dict) -> None:
    x, weight, eps, residual = call["x"], call["weight"], call["eps"], call["residual"]
    if not is_valid(x, weight, eps, residual):
        try:
            mx.eval(mx.fast.rmsnorm_fused(x, weight, eps, residual=residual))
        except ValueError as err:
            assert str(err).startswith("[rmsnorm_fused] ")
            return
        raise AssertionError("invalid call did not raise")

    out = mx.fast.rmsnorm_fused(x, weight, eps, residual=residual)
    if residual is None:
        y, h = out, x
    else:
        y, h = out
        assert mx.array_equal(h, x + residual, equal_nan=True)
    dtype = (h * weight).dtype if weight is not None else h.dtype
    assert y.dtype == dtype and y.shape == x.shape
    ref = rms_norm_f64(h, weight, eps)
    if ref.size == 0:
        return
    scale = np.maximum(np.abs(ref), SMALLEST_NORMAL[dtype])
    # A zero row normalizes to 0 / sqrt(eps), or 0 / 0 when eps is 0.
    finite = np.isfinite(ref)
    got = to_f64(y)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    err = np.abs(got - ref)[finite] / scale[finite]
    # Weight and data may promote to different types; the coarser one rules.
    rtol = max(REF_RTOL[dtype], REF_RTOL[h.dtype])
    assert err.size == 0 or err.max() <= rtol


def test_nan_and_inf_propagate_like_rms_norm() -> None:
    x = mx.array([[1.0, math.nan, 2.0], [1.0, math.inf, 2.0], [1.0, 2.0, 3.0]])
    w = mx.array([1.0, 2.0, 3.0])
    got = mx.fast.rmsnorm_fused(x, w, 1e-5)
    expected = mx.fast.rms_norm(x, w, 1e-5)
    assert mx.array_equal(got, expected, equal_nan=True)


def test_memory_does_not_grow_over_many_calls() -> None:
    # A backend may keep a constant amount more after the first calls (on an
    # H200, 8 KiB more after 10,000 calls than after 100). A leak grows with the
    # calls: a single scalar kept per call adds 4 bytes or more, so 36,000 over
    # the last 9,000 calls, while the check allows under one byte per call.
    x, r, w = mx.ones((4, 256)), mx.ones((4, 256)), mx.ones((256,))

    def calls(n: int) -> None:
        for _ in range(n):
            mx.eval(*mx.fast.rmsnorm_fused(x, w, residual=r))
        mx.synchronize()

    calls(100)
    before = mx.get_active_memory()
    calls(1_000)
    after_1k = mx.get_active_memory()
    calls(9_000)
    after_10k = mx.get_active_memory()
    assert after_10k - after_1k < 9_000, (before, after_1k, after_10k)


def test_no_temporary_beyond_the_outputs() -> None:
    # A transposed input used to be copied whole; rows are now read in place.
    rows, hidden = 512, 2048
    x = mx.random.normal((hidden, rows)).T
    r = mx.random.normal((hidden, rows)).T
    w = mx.ones((hidden,))
    mx.eval(x, r, w)
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    y, h = mx.fast.rmsnorm_fused(x, w, residual=r, stream=mx.cpu)
    mx.eval(y, h)
    extra = mx.get_peak_memory() - before - y.nbytes - h.nbytes
    assert extra <= 4 * hidden * 4, extra
