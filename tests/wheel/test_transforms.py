"""Gradients, jvp, vmap, compile and export of rmsnorm_fused."""

import re
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

EPS = 1e-5


def data(shape: tuple[int, ...], seed: int, dtype: mx.Dtype = mx.float32) -> mx.array:
    a = mx.random.normal(shape=shape, key=mx.random.key(seed)).astype(dtype)
    mx.eval(a)
    return a


def loss_fused(x, w, r, cy, ch):  # type: ignore[no-untyped-def]
    y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=r)
    return (y * cy).sum() + (h * ch).sum()


def loss_unfused(x, w, r, cy, ch):  # type: ignore[no-untyped-def]
    h = x + r
    return (mx.fast.rms_norm(h, w, EPS) * cy).sum() + (h * ch).sum()


def loss_f64(x, w, r, cy, ch):  # type: ignore[no-untyped-def]
    h = x + r
    y = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + EPS) * w
    return float((y * cy).sum() + (h * ch).sum())


def numeric_grad(f, args: list[np.ndarray], i: int, step: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    grad = np.zeros_like(args[i])
    for idx in np.ndindex(args[i].shape):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[i][idx] += step
        minus[i][idx] -= step
        grad[idx] = (f(*plus) - f(*minus)) / (2 * step)
    return grad


def primitives_of(*outputs: mx.array) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.dot"
        mx.export_to_dot(str(path), *outputs)
        return re.findall(r'label ="([^"]+)"', path.read_text())


@pytest.mark.parametrize("hidden", (1, 7, 33))
def test_gradients_match_finite_differences_in_float64(hidden: int) -> None:
    args = [data((3, hidden), 1), data((hidden,), 2), data((3, hidden), 3)]
    args += [data((3, hidden), 4), data((3, hidden), 5)]
    grads = mx.grad(loss_fused, argnums=(0, 1, 2))(*args)
    args64 = [np.array(a, dtype=np.float64) for a in args]
    for i, g in enumerate(grads):
        expected = numeric_grad(loss_f64, args64, i)
        np.testing.assert_allclose(np.array(g), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", (mx.float32, mx.float16, mx.bfloat16), ids=str)
@pytest.mark.parametrize("hidden", (64, 4097))
def test_gradients_match_the_unfused_composition(dtype: mx.Dtype, hidden: int) -> None:
    args = [data((4, hidden), 1, dtype), data((hidden,), 2, dtype), data((4, hidden), 3, dtype)]
    args += [data((4, hidden), 4, dtype), data((4, hidden), 5, dtype)]
    grads = mx.grad(loss_fused, argnums=(0, 1, 2))(*args)
    expected = mx.grad(loss_unfused, argnums=(0, 1, 2))(*args)
    tol = {mx.float32: 1e-4, mx.float16: 2e-2, mx.bfloat16: 1e-1}[dtype]
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == e.dtype == dtype
        scale = max(1.0, mx.abs(e.astype(mx.float32)).max().item())
        assert mx.abs((g - e).astype(mx.float32)).max().item() <= tol * scale


def test_gradient_without_weight_and_without_residual() -> None:
    x, cy = data((5, 40), 1), data((5, 40), 2)
    g = mx.grad(lambda x: (mx.fast.rmsnorm_fused(x, None, EPS) * cy).sum())(x)
    e = mx.grad(lambda x: (mx.fast.rms_norm(x, None, EPS) * cy).sum())(x)
    assert mx.abs(g - e).max().item() <= 1e-5


def test_backward_runs_the_fused_vjp_primitive() -> None:
    x, w, r = data((4, 64), 1), data((64,), 2), data((4, 64), 3)
    mx.eval(x, w, r)
    _, vjps = mx.vjp(
        lambda x, w, r: mx.fast.rmsnorm_fused(x, w, EPS, residual=r),
        [x, w, r],
        [mx.ones((4, 64)), mx.ones((4, 64))],
    )
    assert "RMSNormFusedVJP" in primitives_of(*vjps)
    assert "Rsqrt" not in primitives_of(*vjps)


def test_weight_gradient_accumulates_in_float32() -> None:
    # 8192 rows of bfloat16: summed in bfloat16 the weight gradient would be
    # off by far more than one rounding of the result.
    rows, hidden = 8192, 16
    x, w = data((rows, hidden), 1, mx.bfloat16), data((hidden,), 2, mx.bfloat16)
    cy = data((rows, hidden), 3, mx.bfloat16)
    gw = mx.grad(lambda w: (mx.fast.rmsnorm_fused(x, w, EPS) * cy).sum())(w)
    x64 = np.array(x.astype(mx.float32), dtype=np.float64)
    n = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + EPS)
    expected = (np.array(cy.astype(mx.float32), dtype=np.float64) * n).sum(axis=0)
    got = np.array(gw.astype(mx.float32), dtype=np.float64)
    assert np.all(np.abs(got - expected) <= 2.0**-7 * np.abs(expected) + 1e-2)


def test_weight_gradient_does_not_depend_on_batch_split() -> None:
    x, w, cy = data((64, 33), 1), data((33,), 2), data((64, 33), 3)
    full = mx.grad(lambda w: (mx.fast.rmsnorm_fused(x, w, EPS) * cy).sum())(w)
    halves = sum(
        mx.grad(lambda w, a=a: (mx.fast.rmsnorm_fused(x[a], w, EPS) * cy[a]).sum())(w)
        for a in (slice(0, 32), slice(32, 64))
    )
    assert mx.allclose(full, halves, rtol=1e-5, atol=1e-5).item()


def test_jvp_matches_the_unfused_composition() -> None:
    x, w, r = data((3, 20), 1), data((20,), 2), data((3, 20), 3)
    tx, tw, tr = data((3, 20), 4), data((20,), 5), data((3, 20), 6)
    _, (ty, th) = mx.jvp(
        lambda x, w, r: mx.fast.rmsnorm_fused(x, w, EPS, residual=r), [x, w, r], [tx, tw, tr]
    )
    _, (ey,) = mx.jvp(lambda x, w, r: mx.fast.rms_norm(x + r, w, EPS), [x, w, r], [tx, tw, tr])
    assert mx.allclose(ty, ey, atol=1e-5).item()
    assert mx.allclose(th, tx + tr).item()


@pytest.mark.parametrize("axis", (0, 1, 2))
def test_vmap_over_any_axis(axis: int) -> None:
    x, r, w = data((4, 5, 24), 1), data((4, 5, 24), 2), data((24,), 3)
    if axis == 2:
        # Mapping over the normalized axis: each slice normalizes over axis 1.
        w = data((5,), 3)
    f = mx.vmap(lambda x, r: mx.fast.rmsnorm_fused(x, w, EPS, residual=r), in_axes=axis)
    y, h = f(x, r)
    for i in range(x.shape[axis]):
        xi, ri = mx.take(x, i, axis=axis), mx.take(r, i, axis=axis)
        ey, eh = mx.fast.rmsnorm_fused(xi, w, EPS, residual=ri)
        assert mx.allclose(y[i], ey, atol=1e-6).item()
        assert mx.array_equal(h[i], eh)


def test_compile_gives_the_same_results_and_reuses_the_graph() -> None:
    traces = []

    def f(x, w, r):  # type: ignore[no-untyped-def]
        traces.append(1)
        y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=r)
        return y + mx.fast.rmsnorm_fused(h, w, 1e-2), h

    x, w, r = data((4, 48), 1), data((48,), 2), data((4, 48), 3)
    compiled = mx.compile(f)
    for seed in (4, 5):
        x = data((4, 48), seed)
        got = compiled(x, w, r)
        traces_before = len(traces)
        expected = f(x, w, r)
        assert len(traces) == traces_before + 1
        for g, e in zip(got, expected, strict=True):
            assert mx.array_equal(g, e)
    assert len(traces) == 1 + 2  # one trace for compile, one per eager call


def test_compile_keeps_ops_with_different_attributes_apart() -> None:
    # With a careless is_equivalent, compile would merge these two calls.
    x, w = data((2, 16), 1), data((16,), 2)

    def f(x):  # type: ignore[no-untyped-def]
        return mx.fast.rmsnorm_fused(x, w, 1e-5) - mx.fast.rmsnorm_fused(x, w, 10.0)

    compiled = mx.compile(f)(x)
    # Merged, the two calls would cancel to zero.
    assert mx.abs(compiled).max().item() > 0.1
    assert mx.array_equal(compiled, f(x))


@pytest.mark.parametrize("with_residual", (False, True), ids=("plain", "residual"))
def test_export_import_round_trip(tmp_path: Path, with_residual: bool) -> None:
    x, w, r = data((3, 40), 1), data((40,), 2), data((3, 40), 3)

    def f(x, w, r):  # type: ignore[no-untyped-def]
        if with_residual:
            return mx.fast.rmsnorm_fused(x, w, EPS, residual=r)
        return mx.fast.rmsnorm_fused(x + r, w, EPS)

    path = str(tmp_path / "f.mlxfn")
    mx.export_function(path, f, x, w, r)
    imported = mx.import_function(path)
    expected = outputs(f, x, w, r)
    got = imported(x, w, r)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert mx.array_equal(g, e)

    g_imp = mx.grad(lambda x, w: sum((o * o).sum() for o in imported(x, w, r)), argnums=(0, 1))(
        x, w
    )
    g_ref = mx.grad(lambda x, w: sum((o * o).sum() for o in outputs(f, x, w, r)), argnums=(0, 1))(
        x, w
    )
    for g, e in zip(g_imp, g_ref, strict=True):
        assert mx.allclose(g, e, atol=1e-5).item()

    batched = mx.vmap(lambda x: imported(x, w, r)[0])(mx.stack([x, 2 * x]))
    assert mx.allclose(batched[1], outputs(f, 2 * x, w, r)[0], atol=1e-6).item()


def outputs(f, x, w, r) -> tuple[mx.array, ...]:  # type: ignore[no-untyped-def]
    out = f(x, w, r)
    return out if isinstance(out, tuple) else (out,)
