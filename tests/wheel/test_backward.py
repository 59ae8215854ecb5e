"""The fused backward (RMSNormFusedVJP): its scratch memory, the accuracy of the
weight gradient over many rows, and run-to-run determinism, on the default device."""

import math

import mlx.core as mx
import numpy as np
import pytest

EPS = 1e-5


def vjp(
    x: mx.array, w: mx.array, g: mx.array, r: mx.array | None, gh: mx.array | None
) -> tuple[list[mx.array], list[mx.array]]:
    """(outputs, [gx, gw]) of rmsnorm_fused, with the residual form when r is given."""
    if r is None:
        return mx.vjp(lambda x, w: mx.fast.rmsnorm_fused(x, w, EPS), [x, w], [g])
    outs, (gx, _, gw) = mx.vjp(
        lambda x, r, w: mx.fast.rmsnorm_fused(x, w, EPS, residual=r), [x, r, w], [g, gh]
    )
    return outs, [gx, gw]


def scratch_bytes(rows: int, hidden: int, residual: bool) -> int:
    """Peak memory of one vjp beyond its inputs and what it returns."""
    keys = iter(mx.random.split(mx.random.key(rows), 5))
    x, r, g, gh = (mx.random.normal((rows, hidden), key=next(keys)) for _ in range(4))
    w = mx.random.uniform(0.5, 1.5, (hidden,), key=next(keys))
    mx.eval(x, r, g, gh, w)
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    outs, grads = vjp(x, w, g, r if residual else None, gh if residual else None)
    mx.eval(outs, grads)
    mx.synchronize()
    # Active memory now holds the inputs and the results; the rest of the peak
    # was scratch (or results that were dropped).
    return mx.get_peak_memory() - mx.get_active_memory()


@pytest.mark.parametrize("residual", [False, True])
def test_scratch_does_not_grow_with_rows(residual: bool) -> None:
    # Weight-gradient partials per row (or per block of a fixed number of rows)
    # would take 16x more at 16384 rows than at 1024. What the backward may keep
    # is a bounded number of float32 rows; 32 rows of slack also covers
    # allocator rounding and a log2-deep tree of partials. Anything that grows
    # by one float32 row per 480 rows or faster fails.
    hidden = 4096
    small = scratch_bytes(1024, hidden, residual)
    large = scratch_bytes(16384, hidden, residual)
    assert large - small <= 32 * hidden * 4, (small, large)


def test_weight_gradient_is_accurate_over_many_rows() -> None:
    # gw = sum over rows of g * h * inv_rms. With positive data there is no
    # cancellation, so the relative error measures the accumulation alone. Each
    # term carries at most about 4u (u = 2^-24, half an ulp of 1) from inv_rms
    # and the products. A pairwise float32 sum adds at most ceil(log2(rows)) u,
    # 17u here; blocks of rows summed in turn and then pairwise add errors that
    # mostly cancel (the CPU kernel, 128-row blocks at 2^17 rows: 0.7 ulps).
    # The bound, log2(rows) ulps (34u), leaves room for rsqrt approximations on
    # GPUs. A sequential float32 sum errs by up to rows * u, and by about
    # sqrt(rows) * u with random rounding: its worst column lands far outside
    # the bound (156 ulps here), which the test checks too.
    rows, hidden = 2**17, 256
    keys = mx.random.split(mx.random.key(0), 3)
    h = mx.random.uniform(0.5, 1.5, (rows, hidden), key=keys[0])
    g = mx.random.uniform(0.5, 1.5, (rows, hidden), key=keys[1])
    w = mx.random.uniform(0.5, 1.5, (hidden,), key=keys[2])
    _, (_, gw) = vjp(h, w, g, None, None)
    mx.eval(gw)

    h64 = np.array(h, dtype=np.float64)
    g64 = np.array(g, dtype=np.float64)
    inv64 = 1 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + EPS)
    expected = (g64 * (h64 * inv64)).sum(axis=0)
    bound = math.log2(rows) * 2.0**-23

    got = np.array(gw, dtype=np.float64)
    worst = float(np.max(np.abs(got - expected) / expected))
    assert worst <= bound, f"relative error {worst / 2.0**-23:.1f} ulps"

    # The same terms summed one row after the other in float32.
    inv32 = (1 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + EPS)).astype(np.float32)
    terms = np.array(g) * (np.array(h) * inv32)
    naive = np.cumsum(terms, axis=0, dtype=np.float32)[-1].astype(np.float64)
    naive_worst = float(np.max(np.abs(naive - expected) / expected))
    assert naive_worst > 2 * bound, f"naive sum within {naive_worst / 2.0**-23:.1f} ulps"


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_gradients_are_bit_identical_run_after_run(dtype: mx.Dtype, residual: bool) -> None:
    # Rows and hidden size that fill no block or vector evenly.
    rows, hidden = 20_001, 1000
    keys = iter(mx.random.split(mx.random.key(1), 5))
    x, r, g, gh = (mx.random.normal((rows, hidden), key=next(keys)).astype(dtype) for _ in range(4))
    w = mx.random.uniform(0.5, 1.5, (hidden,), key=next(keys)).astype(dtype)
    mx.eval(x, r, g, gh, w)

    def bits(a: mx.array) -> np.ndarray:
        return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))

    first = None
    for _ in range(5):
        _, grads = vjp(x, w, g, r if residual else None, gh if residual else None)
        mx.eval(grads)
        got = [bits(a) for a in grads]
        if first is None:
            first = got
        for a, b, name in zip(got, first, ("gx", "gw"), strict=True):
            assert np.array_equal(a, b), f"{name} differs between runs"
