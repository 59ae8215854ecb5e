"""rmsnorm_fused against a float64 reference and against MLX's unfused ops."""

import mlx.core as mx
import numpy as np
import pytest
from reference import (
    DTYPES,
    MLX_ATOL,
    assert_agrees_with_mlx,
    assert_close_to_reference,
    rms_norm_f64,
)

HIDDEN_SIZES = (1, 7, 64, 4095, 4096, 4097, 8192, 65536)
EPS = 1e-5


def bits(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))


def rows_for(hidden: int) -> int:
    return 2 if hidden >= 8192 else 5


def inputs(hidden: int, dtype: mx.Dtype, seed: int = 0) -> tuple[mx.array, ...]:
    key = mx.random.key(seed + hidden)
    kx, kr, kw = mx.random.split(key, 3)
    shape = (rows_for(hidden), hidden)
    x = mx.random.uniform(shape=shape, key=kx).astype(dtype)
    r = mx.random.uniform(shape=shape, key=kr).astype(dtype)
    w = mx.random.uniform(shape=(hidden,), key=kw).astype(dtype)
    return x, r, w


@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_weight", (True, False), ids=("weight", "no_weight"))
def test_plain_matches_rms_norm(hidden: int, dtype: mx.Dtype, with_weight: bool) -> None:
    x, _, w = inputs(hidden, dtype)
    weight = w if with_weight else None
    y = mx.fast.rmsnorm_fused(x, weight, EPS)
    expected = mx.fast.rms_norm(x, weight, EPS)
    assert y.dtype == expected.dtype == dtype
    assert y.shape == x.shape
    ref = rms_norm_f64(x, weight, EPS)
    assert_close_to_reference(y, ref, dtype)
    assert_agrees_with_mlx(y, expected, ref)


@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_weight", (True, False), ids=("weight", "no_weight"))
def test_residual_matches_unfused(hidden: int, dtype: mx.Dtype, with_weight: bool) -> None:
    x, r, w = inputs(hidden, dtype)
    weight = w if with_weight else None
    y, h = mx.fast.rmsnorm_fused(x, weight, EPS, residual=r)
    h_expected = mx.add(x, r)
    assert h.dtype == dtype
    assert np.array_equal(bits(h), bits(h_expected))
    expected = mx.fast.rms_norm(h_expected, weight, EPS)
    ref = rms_norm_f64(h_expected, weight, EPS)
    assert_close_to_reference(y, ref, dtype)
    assert_agrees_with_mlx(y, expected, ref)


def test_default_eps_is_1e6() -> None:
    x, _, w = inputs(64, mx.float32)
    x = x * 1e-3  # small values make eps visible in the result
    assert mx.array_equal(mx.fast.rmsnorm_fused(x, w), mx.fast.rmsnorm_fused(x, w, 1e-6))
    assert not mx.array_equal(mx.fast.rmsnorm_fused(x, w), mx.fast.rmsnorm_fused(x, w, 1e-2))


def test_eps_enters_the_result() -> None:
    x = mx.full((1, 4), 1e-3)
    y = mx.fast.rmsnorm_fused(x, None, 1e-6)
    assert y[0, 0].item() == pytest.approx(1e-3 / np.sqrt(1e-6 + 1e-6), rel=1e-5)


@pytest.mark.parametrize(
    "x_dtype,w_dtype", [(mx.bfloat16, mx.float32), (mx.float16, mx.float32)], ids=str
)
def test_mixed_dtypes_promote_like_rms_norm(x_dtype: mx.Dtype, w_dtype: mx.Dtype) -> None:
    x, r, _ = inputs(96, x_dtype)
    w = mx.random.uniform(shape=(96,)).astype(w_dtype)
    y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=r)
    assert h.dtype == x_dtype and y.dtype == mx.float32
    assert mx.array_equal(h, x + r)
    expected = mx.fast.rms_norm(x + r, w, EPS)
    assert expected.dtype == y.dtype
    assert mx.abs(y - expected).max().item() <= MLX_ATOL[mx.float32]


def test_results_do_not_depend_on_the_number_of_rows() -> None:
    x, r, w = inputs(4097, mx.float32)
    many = mx.concatenate([x] * 7)
    many_r = mx.concatenate([r] * 7)
    y_one, h_one = mx.fast.rmsnorm_fused(x[:1], w, EPS, residual=r[:1])
    y_many, h_many = mx.fast.rmsnorm_fused(many, w, EPS, residual=many_r)
    assert mx.array_equal(y_one[0], y_many[0]) and mx.array_equal(y_one[0], y_many[5 * 5])
    assert mx.array_equal(h_one[0], h_many[0])


def test_returns_array_or_pair() -> None:
    x, r, w = inputs(8, mx.float32)
    assert isinstance(mx.fast.rmsnorm_fused(x, w), mx.array)
    out = mx.fast.rmsnorm_fused(x, w, residual=r)
    assert isinstance(out, tuple) and len(out) == 2


def test_large_values_do_not_overflow_in_half() -> None:
    # Squares of 300 overflow float16; the accumulation must happen in float32.
    x = mx.full((2, 512), 300.0, dtype=mx.float16)
    y = mx.fast.rmsnorm_fused(x, None, EPS)
    assert mx.allclose(y, mx.ones_like(y), atol=1e-3).item()
