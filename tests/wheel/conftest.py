"""The device the wheel tests run on: the CPU, or the GPU with MLXR_TEST_DEVICE=gpu
(Metal on Apple silicon, CUDA on Linux). Tests about the CPU kernel itself name
mx.cpu explicitly."""

import os
import tempfile

# Under pytest-xdist each worker gets its own PTX cache: MLX writes that cache
# without locking, so workers sharing one could read a half-written kernel.
# Set before any kernel is compiled, as MLX reads the variable once.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    root = os.environ.get("MLX_PTX_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mlx-ptx"))
    os.environ["MLX_PTX_CACHE_DIR"] = os.path.join(root, worker)

import mlx.core as mx  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:  # noqa: ARG001
    device = os.environ.get("MLXR_TEST_DEVICE", "cpu")
    if device == "gpu":
        if not mx.is_available(mx.gpu):
            raise pytest.UsageError("MLXR_TEST_DEVICE=gpu, but this mlx has no GPU")
        mx.set_default_device(mx.gpu)
    elif device != "cpu":
        raise pytest.UsageError(f"MLXR_TEST_DEVICE must be cpu or gpu, not {device}")
