"""Non-contiguous inputs, empty inputs, and what the graph holds."""

import re
import tempfile
from pathlib import Path

import mlx.core as mx
import pytest
from reference import DTYPES, assert_close_to_reference, rms_norm_f64

EPS = 1e-5
H = 96


def check(x: mx.array, weight: mx.array | None, residual: mx.array | None) -> None:
    if residual is None:
        y = mx.fast.rmsnorm_fused(x, weight, EPS)
        h = x
    else:
        y, h = mx.fast.rmsnorm_fused(x, weight, EPS, residual=residual)
        assert mx.array_equal(h, x + residual)
    expected = mx.fast.rms_norm(x if residual is None else x + residual, weight, EPS)
    assert y.shape == x.shape
    assert mx.array_equal(y, expected) or mx.abs(y - expected).max().item() <= 1e-6
    assert_close_to_reference(y, rms_norm_f64(h, weight, EPS), x.dtype)


def base(shape: tuple[int, ...], seed: int) -> mx.array:
    return mx.random.uniform(shape=shape, key=mx.random.key(seed))


LAYOUTS = {
    "transposed": lambda: base((H, 6), 1).T,
    "sliced_rows": lambda: base((12, H), 2)[::2],
    "sliced_columns": lambda: base((6, H + 32), 3)[:, 16 : 16 + H],
    "broadcast_rows": lambda: mx.broadcast_to(base((1, H), 4), (6, H)),
    "strided_3d": lambda: base((3, 4, H), 5).transpose(1, 0, 2),
    "reversed_last_axis": lambda: base((6, H), 6)[:, ::-1],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("with_residual", (False, True), ids=("plain", "residual"))
def test_non_contiguous_inputs(layout: str, with_residual: bool) -> None:
    x = LAYOUTS[layout]()
    # A residual with a layout of its own: the transpose of a row-major array.
    residual = base(tuple(reversed(x.shape)), 8).T if with_residual else None
    weight = base((2 * H,), 9)[::2]  # a strided weight too
    check(x, weight, residual)


def test_contiguous_x_with_transposed_residual() -> None:
    x = base((6, H), 10)
    check(x, base((H,), 11), base((H, 6), 12).T)


@pytest.mark.parametrize("shape", [(0, H), (2, 0, H), (3, 0)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_inputs(shape: tuple[int, ...], dtype: mx.Dtype) -> None:
    x = mx.zeros(shape, dtype=dtype)
    w = mx.ones((shape[-1],), dtype=dtype)
    y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=x)
    mx.eval(y, h)
    assert y.shape == h.shape == shape
    assert y.dtype == dtype


def primitives_of(*outputs: mx.array) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.dot"
        mx.export_to_dot(str(path), *outputs)
        return re.findall(r'label ="([^"]+)"', path.read_text())


def test_graph_holds_one_fused_primitive_on_cpu() -> None:
    x, r, w = base((4, H), 13), base((4, H), 14), base((H,), 15)
    mx.eval(x, r, w)
    y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=mx.cpu)
    assert primitives_of(y, h) == ["RMSNormFused"]
    assert primitives_of(mx.fast.rmsnorm_fused(x, w, EPS, stream=mx.cpu)) == ["RMSNormFused"]
    # Upstream's rms_norm decomposes on the CPU, which is what the fused op avoids.
    unfused = primitives_of(mx.fast.rms_norm(x, w, EPS, stream=mx.cpu))
    assert "RMSNorm" not in unfused and "Rsqrt" in unfused


@pytest.mark.vendor
def test_version_carries_the_mlxr_label() -> None:
    from importlib.metadata import version

    assert "+mlxr" in mx.__version__
    assert mx.__version__.count("+") == 1
    assert version("mlx") == mx.__version__
