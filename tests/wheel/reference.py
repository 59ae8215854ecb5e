"""Float64 NumPy references and tolerances for rmsnorm_fused."""

import mlx.core as mx
import numpy as np
import tolerances

DTYPES = (mx.float32, mx.float16, mx.bfloat16)

_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}
MLX_ATOL = {dtype: tolerances.MLX_ATOL[name] for dtype, name in _NAMES.items()}
REF_RTOL = {dtype: tolerances.REF_RTOL[name] for dtype, name in _NAMES.items()}


def to_f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), dtype=np.float64)


def rms_norm_f64(h: mx.array, weight: mx.array | None, eps: float) -> np.ndarray:
    h64 = to_f64(h)
    n = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + eps)
    return n if weight is None else n * to_f64(weight)


SMALLEST_NORMAL = {dtype: tolerances.SMALLEST_NORMAL[name] for dtype, name in _NAMES.items()}


def relative_error(y: mx.array, ref: np.ndarray, dtype: mx.Dtype) -> float:
    scale = np.maximum(np.abs(ref), SMALLEST_NORMAL[dtype])
    err = np.abs(to_f64(y) - ref) / scale
    return float(err.max()) if err.size else 0.0


def assert_close_to_reference(y: mx.array, ref: np.ndarray, dtype: mx.Dtype) -> None:
    worst = relative_error(y, ref, dtype)
    assert worst <= REF_RTOL[dtype], f"relative error {worst:.3g} for {dtype}"


def assert_agrees_with_mlx(y: mx.array, expected: mx.array, ref: np.ndarray) -> None:
    """|y - expected| within MLX's tolerance, plus expected's own error if it has one.

    On the CPU, mx.fast.rms_norm sums the squares in one long sequence, so for
    long rows it is itself off the exact result by more than 1e-6 (7.8e-6 at
    65536 in float32); the fused kernel's pairwise sums are far closer. The
    allowance is that measured error and nothing more.
    """
    dtype = expected.dtype
    own_error = float(np.abs(to_f64(expected) - ref).max()) if ref.size else 0.0
    allowed = MLX_ATOL[dtype] + max(own_error - MLX_ATOL[dtype] / 2, 0.0)
    diff = float(np.abs(to_f64(y) - to_f64(expected)).max()) if ref.size else 0.0
    assert diff <= allowed, f"differs from MLX by {diff:.3g} (allowed {allowed:.3g})"
