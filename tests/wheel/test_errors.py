"""Misuse raises ValueError with a message that starts with [rmsnorm_fused]."""

import math

import mlx.core as mx
import pytest

X = mx.ones((2, 8))
W = mx.ones((8,))

CASES = {
    "scalar_x": (lambda: mx.fast.rmsnorm_fused(mx.array(1.0), None), "at least 1 dimension"),
    "weight_2d": (lambda: mx.fast.rmsnorm_fused(X, mx.ones((1, 8))), "weight must have 1"),
    "weight_size": (lambda: mx.fast.rmsnorm_fused(X, mx.ones((7,))), "same size"),
    "residual_shape": (
        lambda: mx.fast.rmsnorm_fused(X, W, residual=mx.ones((8,))),
        "residual must have the same shape",
    ),
    "int_x": (lambda: mx.fast.rmsnorm_fused(mx.ones((2, 8), mx.int32), W), "x must be"),
    "bool_x": (lambda: mx.fast.rmsnorm_fused(mx.ones((2, 8), mx.bool_), W), "x must be"),
    "complex_x": (lambda: mx.fast.rmsnorm_fused(mx.ones((2, 8), mx.complex64), W), "x must be"),
    "int_weight": (lambda: mx.fast.rmsnorm_fused(X, mx.ones((8,), mx.int32)), "weight must be"),
    "int_residual": (
        lambda: mx.fast.rmsnorm_fused(X, W, residual=mx.ones((2, 8), mx.int32)),
        "residual must be",
    ),
    "eps_negative": (lambda: mx.fast.rmsnorm_fused(X, W, -1e-5), "eps must be"),
    "eps_nan": (lambda: mx.fast.rmsnorm_fused(X, W, math.nan), "eps must be"),
    "eps_inf": (lambda: mx.fast.rmsnorm_fused(X, W, math.inf), "eps must be"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_misuse_raises_value_error(case: str) -> None:
    call, words = CASES[case]
    with pytest.raises(ValueError, match=r"^\[rmsnorm_fused\] ") as info:
        call()
    assert words in str(info.value)
