"""Every op whose CUDA kernel MLX compiles at run time (NVRTC, against the
headers the wheel bundles), checked against NumPy on the default device.

On the CPU the same ops run MLX's CPU kernels; on the CUDA wheel each one makes
the run-time compiler build a kernel: mx.compile's fused elementwise kernels,
gather and scatter, dynamic slices, gather_mm, hadamard_transform and
mx.fast.cuda_kernel. Quantized matmuls are in test_quantized.py."""

import math

import mlx.core as mx
import numpy as np
import pytest

# Checks of our wheel's build and its bundled dependencies, not of the op.
pytestmark = pytest.mark.vendor

ON_CUDA = mx.default_device() == mx.gpu and mx.cuda.is_available()


def test_compiled_elementwise_fusion():
    def f(x, y):
        return mx.tanh(x * y + 1.5) - mx.exp(-mx.abs(x)) / (1 + y * y)

    x = mx.random.normal((37, 129), key=mx.random.key(0))
    y = mx.random.normal((37, 129), key=mx.random.key(1))
    got = np.array(mx.compile(f)(x, y))
    xs, ys = np.array(x, np.float64), np.array(y, np.float64)
    want = np.tanh(xs * ys + 1.5) - np.exp(-np.abs(xs)) / (1 + ys * ys)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gather_and_scatter():
    x = mx.arange(5 * 7, dtype=mx.float32).reshape(5, 7)
    idx = mx.array([4, 0, 2, 2])
    np.testing.assert_array_equal(np.array(x[idx]), np.array(x)[np.array(idx)])
    np.testing.assert_array_equal(
        np.array(mx.take_along_axis(x, mx.array([[1], [6], [0], [3], [5]]), axis=1)).ravel(),
        [1, 13, 14, 24, 33],
    )
    added = mx.zeros((5,)).at[mx.array([1, 3, 1])].add(mx.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal(np.array(added), [0, 5, 0, 2, 0])


def test_dynamic_slice():
    x = mx.arange(40).reshape(8, 5)
    start = mx.array([3])
    got = mx.slice(x, start, axes=(0,), slice_size=(2, 5))
    np.testing.assert_array_equal(np.array(got), np.arange(40).reshape(8, 5)[3:5])
    updated = mx.slice_update(x, mx.zeros((2, 5), dtype=x.dtype), start, axes=(0,))
    want = np.arange(40).reshape(8, 5)
    want[3:5] = 0
    np.testing.assert_array_equal(np.array(updated), want)


def test_gather_mm():
    a = mx.random.normal((6, 1, 32), key=mx.random.key(2))
    b = mx.random.normal((3, 32, 16), key=mx.random.key(3))
    rhs = mx.array([2, 0, 1, 1, 0, 2], dtype=mx.uint32)
    got = np.array(mx.gather_mm(a, b, rhs_indices=rhs))
    an, bn = np.array(a, np.float64), np.array(b, np.float64)
    want = np.stack([an[i] @ bn[e] for i, e in enumerate(np.array(rhs))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_hadamard_transform():
    n = 64
    x = mx.random.normal((3, n), key=mx.random.key(4))
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    want = np.array(x, np.float64) @ h.T / math.sqrt(n)
    np.testing.assert_allclose(np.array(mx.hadamard_transform(x)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not ON_CUDA, reason="mx.fast.cuda_kernel needs the CUDA backend")
def test_cuda_kernel():
    kernel = mx.fast.cuda_kernel(
        name="scaled_add",
        input_names=["x", "y"],
        output_names=["out"],
        source="""
            auto i = cooperative_groups::this_grid().thread_rank();
            out[i] = 2.0f * x[i] + y[i];
        """,
    )
    x = mx.random.normal((1024,), key=mx.random.key(5))
    y = mx.random.normal((1024,), key=mx.random.key(6))
    (out,) = kernel(
        inputs=[x, y],
        grid=(1024, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )
    np.testing.assert_allclose(np.array(out), 2 * np.array(x) + np.array(y), rtol=1e-6)
