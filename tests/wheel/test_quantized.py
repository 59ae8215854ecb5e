"""Quantized matmuls and quantization in every mode, on the default device.

On the CUDA wheel these run MLX's run-time compiled kernels (qmm against the
bundled CUTLASS and CCCL headers) that a wrong header version broke; on the CPU
they check the same API against NumPy."""

import mlx.core as mx
import numpy as np
import pytest

# Checks of our wheel's build and its bundled dependencies, not of the op.
pytestmark = pytest.mark.vendor

# mode: (group_size, bits, has_biases)
MODES = {
    "affine4": ("affine", 64, 4),
    "affine8": ("affine", 64, 8),
    "mxfp4": ("mxfp4", 32, 4),
    "mxfp8": ("mxfp8", 32, 8),
    "nvfp4": ("nvfp4", 16, 4),
}
# Relative Frobenius error of a matmul against float64 on the same dequantized
# weights: float32 arithmetic (or TF32) lands near 1e-4, half types near 3e-3;
# a wrong scale, group or packing gives errors of order 1.
TOLERANCE = {mx.float32: 1e-3, mx.float16: 1e-2, mx.bfloat16: 1e-2}
if mx.default_device() == mx.cpu:
    # Upstream's CPU kernels accumulate bfloat16 products in bfloat16: 3.5% off
    # float64 at K = 1024 (measured), still far from a wrong kernel's error.
    TOLERANCE[mx.bfloat16] = 6e-2


def quantize(w: mx.array, mode: str) -> tuple[mx.array, mx.array, mx.array | None]:
    kind, group_size, bits = MODES[mode]
    out = mx.quantize(w, group_size=group_size, bits=bits, mode=kind)
    return out[0], out[1], (out[2] if kind == "affine" else None)


def dequantize(wq, scales, biases, mode: str, dtype=mx.float32) -> mx.array:
    kind, group_size, bits = MODES[mode]
    return mx.dequantize(
        wq, scales, biases, group_size=group_size, bits=bits, mode=kind, dtype=dtype
    )


def rel_error(got: mx.array, want: np.ndarray) -> float:
    got64 = np.array(got.astype(mx.float32), dtype=np.float64)
    return float(np.linalg.norm(got64 - want) / np.linalg.norm(want))


def random(shape, dtype, key) -> mx.array:
    return (mx.random.normal(shape, key=key) / shape[-1] ** 0.5).astype(dtype)


@pytest.mark.parametrize("mode", ["affine4", "affine8"])
def test_affine_error_is_within_one_step(mode):
    w = mx.random.normal((256, 512), key=mx.random.key(1))
    w_hat = dequantize(*quantize(w, mode), mode)
    _, group_size, bits = MODES[mode]
    groups = np.array(w).reshape(256, -1, group_size)
    err = np.abs(np.array(w_hat).reshape(groups.shape) - groups)
    step = (groups.max(-1, keepdims=True) - groups.min(-1, keepdims=True)) / (2**bits - 1)
    # MLX keeps zero exact, so an element can be up to one step away.
    assert (err <= step * (1 + 1e-5)).all()
    assert float(err.mean()) < float(step.mean()) / 2


@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8", "nvfp4"])
def test_fp_quantization_keeps_representable_values(mode):
    w = mx.random.normal((256, 512), key=mx.random.key(1))
    w_hat = dequantize(*quantize(w, mode), mode)
    assert float(mx.abs(w_hat - w).mean()) > 0  # quantization did happen
    if mode != "mxfp4":
        # mxfp4 can round a group's largest magnitude down, and with it the
        # group's power-of-two scale, so only the other two are idempotent.
        again = dequantize(*quantize(w_hat, mode), mode)
        np.testing.assert_array_equal(np.array(again), np.array(w_hat))
    groups = np.array(w).reshape(256, -1, MODES[mode][1])
    err = np.abs(np.array(w_hat).reshape(groups.shape) - groups)
    # fp4's top step is a third of a group's largest magnitude.
    assert (err <= np.abs(groups).max(-1, keepdims=True) / 3).all()


@pytest.mark.parametrize("bits", [4, 8])
def test_affine_dequantize_matches_numpy_unpacking(bits):
    w = mx.random.normal((64, 256), key=mx.random.key(2))
    wq, scales, biases = mx.quantize(w, group_size=64, bits=bits)
    packed = np.array(wq).astype(np.uint64)
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint64) * bits
    q = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    q = q.reshape(64, -1, 64).astype(np.float32)
    want = q * np.array(scales)[..., None] + np.array(biases)[..., None]
    got = np.array(mx.dequantize(wq, scales, biases, group_size=64, bits=bits))
    # A kernel may fuse scale * q + bias into one rounding: half an ulp of the
    # bias apart, where a wrong bit field or group is a whole step apart.
    tol = np.abs(np.array(biases)).max() * 2**-23
    np.testing.assert_allclose(got, want.reshape(64, 256), rtol=2**-23, atol=tol)


# Every mode at qmv (1 row), small and large qmm shapes in bfloat16, and the
# other types at one qmm shape: each case compiles kernels at run time on CUDA.
MATMUL_CASES = [
    *[(mode, mx.bfloat16, m) for mode in MODES for m in (1, 64, 300)],
    *[(mode, dtype, 32) for mode in MODES for dtype in (mx.float16, mx.float32)],
]


@pytest.mark.parametrize(("mode", "dtype", "m"), MATMUL_CASES, ids=str)
def test_quantized_matmul(mode, dtype, m):
    k1, k2 = mx.random.split(mx.random.key(3))
    n, k = 512, 1024
    x = random((m, k), dtype, k1)
    wq, scales, biases = quantize(random((n, k), dtype, k2), mode)
    kind, group_size, bits = MODES[mode]
    y = mx.quantized_matmul(
        x, wq, scales, biases, transpose=True, group_size=group_size, bits=bits, mode=kind
    )
    # Dequantized in x's type, as the kernels do, so that only the matmul differs.
    w_hat = np.array(dequantize(wq, scales, biases, mode, dtype).astype(mx.float32), np.float64)
    want = np.array(x.astype(mx.float32), dtype=np.float64) @ w_hat.T
    assert y.dtype == dtype and y.shape == (m, n)
    assert rel_error(y, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("mode", ["affine4", "mxfp4", "nvfp4"])
def test_gather_qmm(mode):
    k1, k2, k3 = mx.random.split(mx.random.key(4), 3)
    experts, n, k = 4, 256, 512
    x = random((6, 1, k), mx.bfloat16, k1)
    wq, scales, biases = quantize(random((experts, n, k), mx.bfloat16, k2), mode)
    rhs = mx.random.randint(0, experts, (6,), key=k3).astype(mx.uint32)
    kind, group_size, bits = MODES[mode]
    y = mx.gather_qmm(
        x, wq, scales, biases, rhs_indices=rhs, transpose=True, group_size=group_size,
        bits=bits, mode=kind,
    )  # fmt: skip
    w_hat = np.array(
        dequantize(wq, scales, biases, mode, mx.bfloat16).astype(mx.float32), np.float64
    )
    xs = np.array(x.astype(mx.float32), dtype=np.float64)
    want = np.stack([xs[i] @ w_hat[e].T for i, e in enumerate(np.array(rhs))])
    assert y.shape == (6, 1, n)
    assert rel_error(y, want) < TOLERANCE[mx.bfloat16]


# A weight of one group a row (K == group_size, 4 or 8 bits, affine) takes
# upstream's Hopper kernel, qmm_sm90, on an H100 or H200: only there, and
# upstream's CUDA CI (T4 cards) never reaches it. That kernel is wrong at the
# pin, and upstream's main (846d176) has not touched it since: on one H100 the
# unpatched wheel failed these four cases with the very errors ours gave (1.41,
# 1.41, NaN, 1.23), and upstream's test_qmv and test_qmv_wide fail the same 12
# and 28 single-group subtests with either wheel. So on Hopper a wrong result is
# an expected failure, and only that: a crash, a wrong type or shape, or a right
# result (a fixed kernel, which should end this) fails. One kernel is compiled
# per case there.
SINGLE_GROUP_CASES = [
    (mx.float32, 4, 64),
    (mx.float32, 8, 128),
    (mx.float16, 4, 128),
    (mx.bfloat16, 8, 64),
]


def takes_upstream_qmm_sm90() -> bool:
    """Whether upstream sends single-group rows to qmm_sm90 (compute capability 9)."""
    if mx.default_device() != mx.gpu:
        return False
    return mx.device_info().get("compute_capability_major") == 9


@pytest.mark.parametrize(("dtype", "bits", "k"), SINGLE_GROUP_CASES, ids=str)
def test_quantized_matmul_of_single_group_rows(dtype, bits, k):
    k1, k2 = mx.random.split(mx.random.key(5))
    x = random((3, 8, k), dtype, k1)
    wq, scales, biases = mx.quantize(random((256, k), dtype, k2), group_size=k, bits=bits)
    y = mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=k, bits=bits)
    w_hat = mx.dequantize(wq, scales, biases, group_size=k, bits=bits, dtype=dtype)
    w64 = np.array(w_hat.astype(mx.float32), dtype=np.float64)
    want = np.array(x.astype(mx.float32), dtype=np.float64) @ w64.T
    assert y.dtype == dtype and y.shape == (3, 8, 256)
    within = rel_error(y, want) < TOLERANCE[dtype]
    if takes_upstream_qmm_sm90():
        assert not within, "upstream's qmm_sm90 is right now: make this case a plain check"
        pytest.xfail("upstream's qmm_sm90 is wrong for K == group_size (docs/verification.md)")
    assert within
