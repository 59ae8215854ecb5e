"""Float64 NumPy references and tolerances for rmsnorm_fused."""

import mlx.core as mx
import numpy as np

DTYPES = (mx.float32, mx.float16, mx.bfloat16)

# MLX's own tolerances against mx.fast.rms_norm (absolute, on data in [0, 1)).
MLX_ATOL = {mx.float32: 1e-6, mx.float16: 1e-3, mx.bfloat16: 1e-2}

# Against the exact result the output is rounded twice (the normalized value,
# then the product with the weight): about two units in the last place. In
# float32 the float32 sum of squares adds up to two more.
REF_RTOL = {mx.float32: 4 * 2.0**-23, mx.float16: 2 * 2.0**-10, mx.bfloat16: 2 * 2.0**-7}


def to_f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), dtype=np.float64)


def rms_norm_f64(h: mx.array, weight: mx.array | None, eps: float) -> np.ndarray:
    h64 = to_f64(h)
    n = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + eps)
    return n if weight is None else n * to_f64(weight)


# Below the smallest normal number precision is absolute, not relative.
SMALLEST_NORMAL = {mx.float32: 2.0**-126, mx.float16: 2.0**-14, mx.bfloat16: 2.0**-126}


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
