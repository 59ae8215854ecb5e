"""The normalization family: post-norm, sandwich, weight offset and clipped residuals.

Each form is checked against the composition of MLX ops that defines it (the same
roundings in the same order), against a float64 reference, against the other
forms of the same op, and through its gradients and transforms.
"""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from reference import DTYPES, REF_RTOL, to_f64

EPS = 1e-5
FLOAT16_MAX = 65504.0


def data(shape: tuple[int, ...], seed: int, dtype: mx.Dtype, scale: float = 1.0) -> mx.array:
    a = (scale * mx.random.normal(shape=shape, key=mx.random.key(seed))).astype(dtype)
    mx.eval(a)
    return a


def norm(u: mx.array, w: mx.array, offset: float = 0.0) -> mx.array:
    """rms_norm(u, w), or Gemma's norm with the scale offset + w in float32."""
    if offset == 0.0:
        return mx.fast.rms_norm(u, w, EPS)
    y = u.astype(mx.float32)
    y = y * mx.rsqrt(mx.mean(y * y, axis=-1, keepdims=True) + EPS)
    return (y * (offset + w.astype(mx.float32))).astype(w.dtype)


def residual_add(r: mx.array, b: mx.array, clip: bool) -> mx.array:
    """Gemma 3's clip_residual, or a plain add."""
    if not clip or r.dtype != mx.float16:
        return r + b
    s = r.astype(mx.float32) + b.astype(mx.float32)
    return mx.clip(s, -FLOAT16_MAX, FLOAT16_MAX).astype(mx.float16)


def post_norm_unfused(x, r, w, offset=0.0, clip=False):  # type: ignore[no-untyped-def]
    return residual_add(r, norm(x, w, offset), clip)


def sandwich_unfused(x, r, wb, w, offset=0.0, clip=False):  # type: ignore[no-untyped-def]
    h = residual_add(r, norm(x, wb, offset), clip)
    return norm(h, w, offset), h


def post_norm_fused(x, r, w, offset=0.0, clip=False):  # type: ignore[no-untyped-def]
    return mx.fast.rmsnorm_fused(
        x, w, EPS, residual=r, post_norm=True, weight_offset=offset, clip_residual=clip
    )


def sandwich_fused(x, r, wb, w, offset=0.0, clip=False):  # type: ignore[no-untyped-def]
    return mx.fast.rmsnorm_fused(
        x, w, EPS, residual=r, branch_weight=wb, weight_offset=offset, clip_residual=clip
    )


def inputs(rows: int, hidden: int, dtype: mx.Dtype, seed: int = 0) -> tuple[mx.array, ...]:
    x = data((rows, hidden), seed, dtype, scale=4.0)
    r = data((rows, hidden), seed + 1, dtype, scale=2.0)
    wb = data((hidden,), seed + 2, dtype, scale=0.5)
    w = data((hidden,), seed + 3, dtype, scale=0.5)
    return x, r, wb, w


ULP = {mx.float32: 2.0**-23, mx.float16: 2.0**-10, mx.bfloat16: 2.0**-7}


def assert_same(got: mx.array, expected: mx.array, dtype: mx.Dtype) -> None:
    """Within one rounding of the composition. Its norm sums the squares in
    another order, which can move a normalized value across a rounding boundary
    (on the CPU, 11 of 15,000 float16 values at 4096); the forms are pinned to
    each other bit for bit below."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    scale = mx.abs(expected.astype(mx.float32)).max().item()
    ulps = 8 if dtype == mx.float32 else 1
    close = mx.allclose(got, expected, rtol=ulps * ULP[dtype], atol=ulps * ULP[dtype] * scale)
    assert close.item(), "differs from the composition by more than one rounding"


HIDDEN = [1, 7, 64, 1000, 4096, 8195]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_post_norm_matches_its_composition(dtype: mx.Dtype, hidden: int, offset: float) -> None:
    x, r, _, w = inputs(5, hidden, dtype)
    h = post_norm_fused(x, r, w, offset)
    assert isinstance(h, mx.array)
    assert_same(h, post_norm_unfused(x, r, w, offset), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_sandwich_matches_its_composition(dtype: mx.Dtype, hidden: int, offset: float) -> None:
    x, r, wb, w = inputs(5, hidden, dtype)
    y, h = sandwich_fused(x, r, wb, w, offset)
    y_ref, h_ref = sandwich_unfused(x, r, wb, w, offset)
    assert_same(h, h_ref, dtype)
    assert_same(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [7, 1000, 4096])
def test_pre_norm_with_offset_matches_its_composition(dtype: mx.Dtype, hidden: int) -> None:
    x, r, _, w = inputs(5, hidden, dtype)
    y, h = mx.fast.rmsnorm_fused(x, w, EPS, residual=r, weight_offset=1.0)
    assert mx.array_equal(h, x + r).item()
    assert_same(y, norm(x + r, w, 1.0), dtype)
    assert_same(mx.fast.rmsnorm_fused(x, w, EPS, weight_offset=1.0), norm(x, w, 1.0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [7, 1000, 3000, 4096, 8195])
def test_the_forms_agree_with_each_other_bit_for_bit(dtype: mx.Dtype, hidden: int) -> None:
    # h is the residual plus the branch norm as the plain form computes it, and
    # y is the plain form of h: one reduction, whichever form runs it. 1000 and
    # 3000 leave the last chunk of a CUDA block part-filled, where nvcc once
    # rounded the sandwich's squares apart from the plain form's FMAs; a wrong
    # rounding shows in a few rows only, hence 32 of them.
    x, r, wb, w = inputs(32, hidden, dtype, seed=5)
    for offset in (0.0, 1.0):
        b = mx.fast.rmsnorm_fused(x, wb, EPS, weight_offset=offset)
        y, h = sandwich_fused(x, r, wb, w, offset)
        assert mx.array_equal(h, r + b).item()
        assert mx.array_equal(y, mx.fast.rmsnorm_fused(h, w, EPS, weight_offset=offset)).item()
        assert mx.array_equal(post_norm_fused(x, r, wb, offset), h).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_forms_are_close_to_float64(dtype: mx.Dtype) -> None:
    x, r, wb, w = inputs(8, 1536, dtype, seed=9)

    def norm64(u: np.ndarray, w: mx.array, offset: float) -> np.ndarray:
        return u / np.sqrt(np.mean(u * u, axis=-1, keepdims=True) + EPS) * (offset + to_f64(w))

    for offset in (0.0, 1.0):
        y, h = sandwich_fused(x, r, wb, w, offset)
        # Against float64 on the rounded h; h's own rounding is checked above.
        b = norm64(to_f64(x), wb, offset)
        h64 = to_f64(r) + b
        assert np.abs(to_f64(h) - h64).max() <= 2 * REF_RTOL[dtype] * np.abs(h64).max()
        y64 = norm64(to_f64(h), w, offset)
        err = np.abs(to_f64(y) - y64) / np.maximum(np.abs(y64), 1e-30)
        assert np.quantile(err, 0.999) <= REF_RTOL[dtype], offset


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_offset_is_no_less_accurate_than_adding_one_in_the_weight_type(dtype: mx.Dtype) -> None:
    # mlx-lm's Gemma norms compute rms_norm(x, 1.0 + weight): 1 + w is rounded
    # to the weight's type first. Gemma's weights are small, so that rounding
    # drops most of w's bits. The fused offset keeps them.
    x = data((64, 2048), 11, dtype, scale=3.0)
    w = data((2048,), 12, dtype, scale=0.05)
    h64 = to_f64(x)
    y64 = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + EPS) * (1.0 + to_f64(w))
    fused = to_f64(mx.fast.rmsnorm_fused(x, w, EPS, weight_offset=1.0))
    mlx_lm = to_f64(mx.fast.rms_norm(x, 1.0 + w, EPS))
    fused_err = np.abs(fused - y64)
    mlx_lm_err = np.abs(mlx_lm - y64)
    assert fused_err.mean() < mlx_lm_err.mean()
    assert fused_err.max() <= mlx_lm_err.max()


def test_clip_residual_matches_gemma_3_bit_for_bit() -> None:
    # Sums beyond the float16 range are clipped to it, not turned into inf.
    x, r, wb, w = inputs(4, 1024, mx.float16, seed=13)
    r = (r * 30000).astype(mx.float16)
    b_big = mx.full(x.shape, 60000.0, mx.float16)
    for offset in (0.0, 1.0):
        y, h = sandwich_fused(x, r, wb, w, offset, clip=True)
        y_ref, h_ref = sandwich_unfused(x, r, wb, w, offset, clip=True)
        # The residual dwarfs the branch here, so h does not depend on how the
        # branch norm's sum of squares was ordered.
        assert mx.array_equal(h, h_ref).item()
        assert_same(y, y_ref, mx.float16)
        assert mx.array_equal(
            post_norm_fused(x, r, wb, offset, clip=True),
            post_norm_unfused(x, r, wb, offset, clip=True),
        ).item()
    _, h = mx.fast.rmsnorm_fused(b_big, w, EPS, residual=b_big, clip_residual=True)
    assert mx.all(h == FLOAT16_MAX).item()
    _, h = mx.fast.rmsnorm_fused(b_big, w, EPS, residual=b_big)
    assert mx.all(mx.isinf(h)).item()


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_clip_residual_changes_nothing_outside_float16(dtype: mx.Dtype) -> None:
    x, r, wb, w = inputs(4, 256, dtype, seed=17)
    y, h = sandwich_fused(x, r, wb, w, 1.0, clip=True)
    y2, h2 = sandwich_fused(x, r, wb, w, 1.0)
    assert mx.array_equal(h, h2).item() and mx.array_equal(y, y2).item()


def test_results_do_not_depend_on_the_number_of_rows() -> None:
    x, r, wb, w = inputs(64, 3000, mx.bfloat16, seed=19)
    y_all, h_all = sandwich_fused(x, r, wb, w, 1.0)
    h_post = post_norm_fused(x, r, w, 1.0)
    for rows in (1, 5):
        y, h = sandwich_fused(x[:rows], r[:rows], wb, w, 1.0)
        assert mx.array_equal(y, y_all[:rows]).item() and mx.array_equal(h, h_all[:rows]).item()
        assert mx.array_equal(post_norm_fused(x[:rows], r[:rows], w, 1.0), h_post[:rows]).item()


def test_mixed_dtypes_take_each_step_in_its_own_type() -> None:
    x, r, wb, _ = inputs(3, 128, mx.bfloat16, seed=23)
    w32 = data((128,), 24, mx.float32)
    y, h = sandwich_fused(x, r, wb, w32, 1.0)
    y_ref, h_ref = sandwich_unfused(x, r, wb, w32, 1.0)
    assert h.dtype == mx.bfloat16 and y.dtype == mx.float32
    assert mx.array_equal(h, h_ref).item()
    assert mx.allclose(y, y_ref, rtol=1e-6, atol=1e-6).item()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"post_norm": True}, "need a residual"),
        ({"branch_weight": "w"}, "need a residual"),
        ({"clip_residual": True}, "need a residual"),
        ({"residual": "x", "post_norm": True, "branch_weight": "w"}, "sandwich"),
        ({"weight_offset": float("nan")}, "weight_offset must be finite"),
        ({"residual": "x", "branch_weight": "short"}, "branch_weight must have 1 dimension"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(kwargs: dict, message: str) -> None:
    x = mx.ones((2, 8))
    named = {"x": x, "w": mx.ones((8,)), "short": mx.ones((7,))}
    kwargs = {k: named.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=rf"\[rmsnorm_fused\].*{message}"):
        mx.fast.rmsnorm_fused(x, mx.ones((8,)), EPS, **kwargs)


def test_an_offset_needs_a_weight() -> None:
    with pytest.raises(ValueError, match=r"\[rmsnorm_fused\] weight_offset .* None"):
        mx.fast.rmsnorm_fused(mx.ones((2, 8)), None, EPS, weight_offset=1.0)


def sandwich_loss(fn, offset, clip, x, r, wb, w):  # type: ignore[no-untyped-def]
    y, h = fn(x, r, wb, w, offset, clip)
    cy = mx.linspace(-1, 1, y.size).reshape(y.shape)
    return (y.astype(mx.float32) * cy).sum() + (h.astype(mx.float32) * 0.3).sum()


def post_loss(fn, offset, clip, x, r, wb, w):  # type: ignore[no-untyped-def]
    h = fn(x, r, wb, offset, clip)
    ch = mx.linspace(-1, 1, h.size).reshape(h.shape)
    return (h.astype(mx.float32) * ch).sum()


GRAD_RTOL = {mx.float32: 1e-5, mx.float16: 2e-2, mx.bfloat16: 1e-1}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("form", ["sandwich", "post"])
def test_gradients_match_the_composition(dtype: mx.Dtype, offset: float, form: str) -> None:
    x, r, wb, w = inputs(16, 384, dtype, seed=29)
    if form == "sandwich":
        fused = lambda *a: sandwich_loss(sandwich_fused, offset, False, *a)  # noqa: E731
        unfused = lambda *a: sandwich_loss(sandwich_unfused, offset, False, *a)  # noqa: E731
    else:
        fused = lambda *a: post_loss(post_norm_fused, offset, False, *a)  # noqa: E731
        unfused = lambda *a: post_loss(post_norm_unfused, offset, False, *a)  # noqa: E731
    got = mx.grad(fused, argnums=(0, 1, 2, 3))(x, r, wb, w)
    expected = mx.grad(unfused, argnums=(0, 1, 2, 3))(x, r, wb, w)
    for name, g, e in zip(("x", "residual", "branch_weight", "weight"), got, expected, strict=True):
        assert g.dtype == e.dtype, name
        scale = mx.abs(e.astype(mx.float32)).max().item()
        diff = mx.abs(g.astype(mx.float32) - e.astype(mx.float32)).max().item()
        assert diff <= GRAD_RTOL[dtype] * max(scale, 1e-6), f"{name}: {diff} vs {scale}"
    if form == "post":
        assert mx.all(got[3] == 0).item()  # the fourth argument is unused


def test_backward_of_the_sandwich_runs_two_fused_vjps(tmp_path: Path) -> None:
    x, r, wb, w = inputs(4, 64, mx.float32)
    grads = mx.grad(lambda *a: sandwich_loss(sandwich_fused, 1.0, False, *a), argnums=(0, 2, 3))(
        x, r, wb, w
    )
    path = tmp_path / "graph.dot"
    mx.export_to_dot(str(path), *grads)
    text = path.read_text()
    assert text.count("RMSNormFusedVJP") >= 2
    assert "Sqrt" not in text and "Rsqrt" not in text


def test_clipped_gradient_is_zero_where_the_sum_was_clipped() -> None:
    x = mx.full((1, 8), 2.0, mx.float16)
    r = mx.array([[65504.0, 0, 0, 0, 0, 0, 0, 0]], mx.float16)
    w = mx.ones((8,), mx.float16)
    g = mx.grad(lambda r: post_norm_fused(x, r, w, clip=True).astype(mx.float32).sum())(r)
    g_ref = mx.grad(lambda r: post_norm_unfused(x, r, w, clip=True).astype(mx.float32).sum())(r)
    assert mx.array_equal(g, g_ref).item() and g[0, 0].item() == 0


def test_jvp_and_vmap_match_the_composition() -> None:
    x, r, wb, w = inputs(6, 96, mx.float32, seed=31)
    tangents = [data(a.shape, 40 + i, mx.float32) for i, a in enumerate((x, r, wb, w))]
    _, jf = mx.jvp(lambda *a: sandwich_fused(*a, 1.0), [x, r, wb, w], tangents)
    _, ju = mx.jvp(lambda *a: sandwich_unfused(*a, 1.0), [x, r, wb, w], tangents)
    for a, b in zip(jf, ju, strict=True):
        assert mx.allclose(a, b, rtol=1e-5, atol=1e-5).item()
    xs = mx.stack([x, x * 2]).transpose(1, 0, 2)
    rs = mx.stack([r, -r]).transpose(1, 0, 2)
    vf = mx.vmap(lambda a, b: post_norm_fused(a, b, w, 1.0), in_axes=(1, 1))(xs, rs)
    vu = mx.vmap(lambda a, b: post_norm_unfused(a, b, w, 1.0), in_axes=(1, 1))(xs, rs)
    assert mx.allclose(vf, vu, rtol=1e-5, atol=1e-5).item()


def test_compile_keeps_forms_and_offsets_apart() -> None:
    x, r, wb, w = inputs(2, 64, mx.float32, seed=37)

    def f(x, r, wb, w):  # type: ignore[no-untyped-def]
        a = post_norm_fused(x, r, w, 0.0)
        b = post_norm_fused(x, r, w, 1.0)
        c = sandwich_fused(x, r, wb, w, 1.0)[1]
        d = mx.fast.rmsnorm_fused(x, w, EPS, residual=r)[1]
        return a, b, c, d

    for got, expected in zip(mx.compile(f)(x, r, wb, w), f(x, r, wb, w), strict=True):
        assert mx.array_equal(got, expected).item()


@pytest.mark.parametrize("form", ["sandwich", "post", "clip"])
def test_export_import_round_trip(tmp_path: Path, form: str) -> None:
    dtype = mx.float16 if form == "clip" else mx.float32
    x, r, wb, w = inputs(3, 32, dtype, seed=41)
    if form == "post":
        f = lambda x, r, wb, w: post_norm_fused(x, r, w, 1.0)  # noqa: E731
    else:
        f = lambda x, r, wb, w: sandwich_fused(x, r, wb, w, 1.0, form == "clip")  # noqa: E731
    path = str(tmp_path / "f.mlxfn")
    mx.export_function(path, f, x, r, wb, w)
    imported = mx.import_function(path)
    expected = f(x, r, wb, w)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = imported(x, r, wb, w)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert mx.array_equal(a, b).item()
