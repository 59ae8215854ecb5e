"""mlxr.fuse on tiny random mlx-lm models of every supported family: the fused model gives
the stock model's logits and greedy generations, with no standalone residual add or RMS norm
left between its blocks, quantized or compiled, and unknown architectures are refused."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_map

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

# Checks of our package, not of the op. The test command installs mlx-lm and the mlxr wheel.
pytestmark = pytest.mark.vendor
llama = pytest.importorskip("mlx_lm.models.llama")
qwen2 = pytest.importorskip("mlx_lm.models.qwen2")
qwen3 = pytest.importorskip("mlx_lm.models.qwen3")
olmo2 = pytest.importorskip("mlx_lm.models.olmo2")
gemma2 = pytest.importorskip("mlx_lm.models.gemma2")
gemma3_text = pytest.importorskip("mlx_lm.models.gemma3_text")
gemma = pytest.importorskip("mlx_lm.models.gemma")
make_prompt_cache = pytest.importorskip("mlx_lm.models.cache").make_prompt_cache
generate_step = pytest.importorskip("mlx_lm.generate").generate_step


def import_mlxr() -> Any:
    """The installed mlxr package. tests/conftest.py puts scripts/ first on sys.path, where
    the CLI scripts/mlxr.py would shadow it."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != SCRIPTS]
    try:
        if not hasattr(sys.modules.get("mlxr"), "__path__"):
            sys.modules.pop("mlxr", None)
        return importlib.import_module("mlxr")
    except ImportError as err:
        pytest.skip(f"the mlxr package is not installed: {err}", allow_module_level=True)
    finally:
        sys.path[:] = saved


mlxr = import_mlxr()

LAYERS = 2
COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": LAYERS,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 128,
}
GEMMA3_DIMS = 96
# name: (mlx-lm module, its ModelArgs)
FAMILIES: dict[str, tuple[Any, Any]] = {
    "llama": (llama, llama.ModelArgs(model_type="llama", tie_word_embeddings=False, **COMMON)),
    # A sliding-window layer before a full one; generation runs past the window.
    "llama-sliding": (
        llama,
        llama.ModelArgs(
            model_type="llama",
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=8,
            **COMMON,
        ),
    ),
    "mistral": (llama, llama.ModelArgs(model_type="mistral", **COMMON)),
    "qwen2": (qwen2, qwen2.ModelArgs(model_type="qwen2", **COMMON)),
    "qwen3": (
        qwen3,
        qwen3.ModelArgs(
            model_type="qwen3",
            head_dim=16,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            rope_theta=1e6,
            **COMMON,
        ),
    ),
    "olmo2": (olmo2, olmo2.ModelArgs(model_type="olmo2", **COMMON)),
    "gemma2": (gemma2, gemma2.ModelArgs(model_type="gemma2", head_dim=16, **COMMON)),
    # A sliding-window layer, then a global one; generation runs past the window. The
    # embedding scale sqrt(96) is not a bfloat16 number, so its stock rounding shows.
    "gemma3_text": (
        gemma3_text,
        gemma3_text.ModelArgs(
            model_type="gemma3_text",
            head_dim=16,
            sliding_window=8,
            sliding_window_pattern=2,
            max_position_embeddings=512,
            **{**COMMON, "hidden_size": GEMMA3_DIMS},
        ),
    ),
}


class BlockNorms(NamedTuple):
    """For LAYERS layers of a model_type: the stock norms between blocks (the final norm
    included), and the fused calls that replace them. A sandwich call covers two norms;
    where their eps differ it is two calls, so with every eps distinct every norm is a call
    of its own. `offset`: each stock norm adds 1 to its weight (one more Add node)."""

    norms: int
    single: int  # plain, pre-norm and post-norm calls
    sandwiches: int
    offset: bool = False

    @property
    def calls(self) -> int:
        return self.single + self.sandwiches


PRE_NORM = BlockNorms(2 * LAYERS + 1, 2 * LAYERS + 1, 0)
BLOCK_NORMS: dict[str, BlockNorms] = {
    "llama": PRE_NORM,
    "mistral": PRE_NORM,
    "qwen2": PRE_NORM,
    "qwen3": PRE_NORM,
    # Post-norm: two adds a layer, the last one fused with the final norm.
    "olmo2": BlockNorms(2 * LAYERS + 1, 2 * LAYERS - 1, 1),
    # Sandwich: four norms a layer; layer 0's input norm plain, then two sandwiches a layer.
    "gemma2": BlockNorms(4 * LAYERS + 1, 1, 2 * LAYERS, offset=True),
    "gemma3_text": BlockNorms(4 * LAYERS + 1, 1, 2 * LAYERS, offset=True),
}


def block_norms(family: str) -> BlockNorms:
    return BLOCK_NORMS[FAMILIES[family][1].model_type]


TOKENS = mx.array([[3, 17, 99, 42, 5, 64, 0, 127, 8, 33, 71, 12], list(range(12))])


def random_stock(name: str, seed: int = 0) -> nn.Module:
    """A stock model whose norm weights and biases are not their ones and zeros."""
    module, args = FAMILIES[name]
    mx.random.seed(seed)
    model = module.Model(args)
    model.update(
        tree_map(
            lambda p: p + 0.3 * mx.random.normal(p.shape) if p.ndim == 1 else p,
            model.parameters(),
        )
    )
    mx.eval(model.parameters())
    return model


def fused_twin(name: str, stock: nn.Module) -> nn.Module:
    """A model of the same family, fused, then loaded with the stock model's weights."""
    module, args = FAMILIES[name]
    model = mlxr.fuse(module.Model(args))
    model.load_weights(tree_flatten(stock.parameters()))
    return model


def rel_err(a: mx.array, ref: mx.array) -> float:
    a, ref = a.astype(mx.float32), ref.astype(mx.float32)
    return (mx.abs(a - ref).max() / mx.abs(ref).max()).item()


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pair(family: str) -> tuple[nn.Module, nn.Module]:
    stock = random_stock(family)
    return stock, fused_twin(family, stock)


def test_supported_architectures() -> None:
    assert mlxr.supported_architectures() == [
        "gemma2",
        "gemma3_text",
        "llama",
        "mistral",
        "olmo2",
        "qwen2",
        "qwen3",
    ]
    assert sorted(BLOCK_NORMS) == mlxr.supported_architectures()


def test_logits_match_stock(pair: tuple[nn.Module, nn.Module]) -> None:
    stock, fused = pair
    assert mlxr.is_fused(fused) and not mlxr.is_fused(stock)
    ref = stock(TOKENS)
    assert rel_err(fused(TOKENS), ref) <= 1e-5
    # A single token without a cache (no mask) too.
    assert rel_err(fused(TOKENS[:, :1]), stock(TOKENS[:, :1])) <= 1e-5


def greedy(model: nn.Module, prompt: mx.array, n: int) -> list[int]:
    steps = generate_step(
        prompt, model, max_tokens=n, prompt_cache=make_prompt_cache(model), prefill_step_size=4
    )
    return [int(token) for token, _ in steps]


def test_greedy_generation_matches_stock(pair: tuple[nn.Module, nn.Module]) -> None:
    stock, fused = pair
    prompt = TOKENS[0, :10]
    want = greedy(stock, prompt, 32)
    assert len(want) == 32
    assert greedy(fused, prompt, 32) == want


def test_bfloat16_no_less_accurate_than_stock(family: str) -> None:
    ref = random_stock(family)(TOKENS)
    stock = random_stock(family)
    stock.set_dtype(mx.bfloat16)
    fused = fused_twin(family, stock)
    assert fused.model.norm.weight.dtype == mx.bfloat16
    out = fused(TOKENS)
    assert out.dtype == mx.bfloat16
    stock_err, fused_err = rel_err(stock(TOKENS), ref), rel_err(out, ref)
    assert fused_err < 0.05
    assert fused_err <= 1.1 * stock_err, (fused_err, stock_err)


@pytest.mark.parametrize("when", ["before", "after"])
def test_quantized(family: str, when: str) -> None:
    stock = random_stock(family)
    nn.quantize(stock, group_size=32, bits=4)
    module, args = FAMILIES[family]
    model = module.Model(args)
    model.update(random_stock(family).parameters())
    if when == "before":
        nn.quantize(model, group_size=32, bits=4)
        mlxr.fuse(model)
    else:
        mlxr.fuse(model)
        nn.quantize(model, group_size=32, bits=4)
    assert mlxr.is_fused(model)
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    assert rel_err(model(TOKENS), stock(TOKENS)) <= 1e-5
    assert greedy(model, TOKENS[1, :10], 16) == greedy(stock, TOKENS[1, :10], 16)


def test_compiled(pair: tuple[nn.Module, nn.Module]) -> None:
    """The compiled fused model gives what the compiled stock model gives. Compiled, not
    eager, stock is the reference, so that only the fusion differs: on an H200 compiling
    moves the stock Gemma 2 itself by 2.75e-4, and the compiled fused model equals it."""
    stock, fused = pair
    compiled = mx.compile(fused)
    ref = mx.compile(stock)(TOKENS)
    # A failure says how far compiling moves the stock model (evaluated only then).
    assert rel_err(compiled(TOKENS), ref) <= 1e-5, f"stock moved {rel_err(ref, stock(TOKENS)):.2e}"
    assert rel_err(compiled(TOKENS), ref) <= 1e-5  # the cached graph


def takes_input_embeddings(family: str) -> bool:
    module, args = FAMILIES[family]
    inner = type(module.Model(args).model)
    return "input_embeddings" in inspect.signature(inner.__call__).parameters


@pytest.mark.parametrize("family", [f for f in FAMILIES if takes_input_embeddings(f)])
def test_input_embeddings(family: str) -> None:
    """Families whose stock forward takes `input_embeddings` use them, as stock does (Gemma
    3 scales them in place: the caller's array is left as stock leaves it)."""
    stock = random_stock(family)
    fused = fused_twin(family, stock)
    mx.random.seed(2)
    emb = mx.random.normal((*TOKENS.shape, stock.model.embed_tokens.weight.shape[1]))
    stock_emb, fused_emb = mx.array(emb), mx.array(emb)
    ref = stock(TOKENS, input_embeddings=stock_emb)
    assert rel_err(ref, stock(TOKENS)) > 0.1  # the embeddings matter
    assert rel_err(fused(TOKENS, input_embeddings=fused_emb), ref) <= 1e-5
    assert mx.array_equal(fused_emb, stock_emb)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Calls to mx.fast.rms_norm and mx.fast.rmsnorm_fused, by name."""
    seen = {"rms_norm": 0, "rmsnorm_fused": 0}

    def counting(name: str) -> Callable[..., Any]:
        real = getattr(mx.fast, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return real(*args, **kwargs)

        return call

    for name in seen:
        monkeypatch.setattr(mx.fast, name, counting(name))
    yield seen


def primitives(tmp_path: Path, out: mx.array, name: str) -> list[str]:
    dot = tmp_path / f"{name}.dot"
    mx.export_to_dot(str(dot), out)
    text = dot.read_text()
    return [
        line.split('label ="')[1].split('"')[0] for line in text.splitlines() if "label" in line
    ]


def test_no_standalone_add_or_norm_between_blocks(
    family: str,
    pair: tuple[nn.Module, nn.Module],
    counts: dict[str, int],
    tmp_path: Path,
) -> None:
    stock, fused = pair
    expect = block_norms(family)
    norms, calls = expect.norms, expect.calls
    stock_out = stock(TOKENS)
    stock_norms = counts["rms_norm"]
    # Qwen3, OLMo 2 and Gemma 3 normalise queries and keys inside attention; those stay.
    assert stock_norms >= norms and counts["rmsnorm_fused"] == 0
    counts["rms_norm"] = 0
    fused_out = fused(TOKENS)
    assert counts["rmsnorm_fused"] == calls
    assert counts["rms_norm"] == stock_norms - norms

    # In the graph: 2 residual adds per layer are gone, and Gemma's `1.0 + weight` in every
    # norm. A device whose rms_norm is a composition of primitives (the CPU) shows an Add for
    # its eps in every rms_norm too. Gemma 3's residual add is its compiled `clip_residual`,
    # a plain add outside float16, which the graph shows as one compiled Add.
    x = mx.ones((1, 4, COMMON["hidden_size"]))
    per_norm = primitives(tmp_path, mx.fast.rms_norm(x, x[0, 0], 1e-5), "norm").count("Add")
    stock_graph = primitives(tmp_path, stock_out, "stock")
    fused_graph = primitives(tmp_path, fused_out, "fused")
    assert fused_graph.count("RMSNormFused") == calls

    def adds(graph: list[str]) -> int:
        return graph.count("Add") + graph.count("CompiledBroadcastBroadcastAdd")

    removed = adds(stock_graph) - adds(fused_graph)
    assert removed == 2 * LAYERS + norms * (per_norm + expect.offset)


def test_fuse_is_idempotent(
    family: str, pair: tuple[nn.Module, nn.Module], counts: dict[str, int]
) -> None:
    _, fused = pair
    once = fused(TOKENS)
    cls = type(fused.model)
    assert mlxr.fuse(fused) is fused
    assert type(fused.model) is cls
    counts["rmsnorm_fused"] = 0
    assert mx.array_equal(fused(TOKENS), once)
    assert counts["rmsnorm_fused"] == block_norms(family).calls


def test_uses_the_models_own_norm_weights_and_eps(family: str, counts: dict[str, int]) -> None:
    stock = random_stock(family)
    fused = fused_twin(family, stock)
    for model in (stock, fused):
        norm_type = type(model.model.norm)  # the family's own norm class
        norms = [m for _, m in model.model.named_modules() if isinstance(m, norm_type)]
        for i, m in enumerate(norms):
            m.eps = 0.05 * (i + 1)  # large against the mean square, so eps shows
    assert rel_err(fused(TOKENS), stock(TOKENS)) <= 1e-5
    # No two norms share an eps, so no sandwich call: every norm between blocks is a call.
    counts["rmsnorm_fused"] = 0
    fused(TOKENS)
    assert counts["rmsnorm_fused"] == block_norms(family).norms
    # And weights updated after fusing: adding 1 to the final norm's weight, which about
    # doubles its scale (w near 1, or 1 + w with w near 0), moves the logits.
    before = fused(TOKENS)
    for model in (stock, fused):
        model.model.norm.weight = model.model.norm.weight + 1
    assert rel_err(fused(TOKENS), stock(TOKENS)) <= 1e-5
    assert rel_err(fused(TOKENS), before) > 0.2  # Gemma 2 softcaps its logits


UNSUPPORTED = (
    "[mlxr.fuse] unsupported architecture '{}'; "
    "supported: gemma2, gemma3_text, llama, mistral, olmo2, qwen2, qwen3"
)


def test_unknown_architecture_refused() -> None:
    args = gemma.ModelArgs(model_type="gemma", head_dim=16, **COMMON)
    model = gemma.Model(args)
    cls = type(model.model)
    with pytest.raises(ValueError) as err:
        mlxr.fuse(model)
    assert str(err.value) == UNSUPPORTED.format("gemma")
    assert type(model.model) is cls

    with pytest.raises(ValueError) as err:
        mlxr.fuse(nn.Linear(2, 2))
    assert str(err.value) == UNSUPPORTED.format("None")


def test_mislabelled_architecture_refused() -> None:
    """A model_type names the architecture, but another mlx-lm module built the model."""
    module, args = FAMILIES["qwen3"]
    model = module.Model(args)
    model.model_type = "llama"
    with pytest.raises(ValueError, match=r"^\[mlxr\.fuse\] model_type 'llama' is supported, but"):
        mlxr.fuse(model)
    assert not mlxr.is_fused(model)

    model = random_stock("gemma3_text")
    model.model_type = "gemma2"
    with pytest.raises(ValueError) as err:
        mlxr.fuse(model)
    assert str(err.value) == (
        "[mlxr.fuse] model_type 'gemma2' is supported, but its inner model is "
        "mlx_lm.models.gemma3_text.Gemma3Model, not the mlx_lm.models.gemma2 model that "
        "mlxr's forward mirrors"
    )
    assert not mlxr.is_fused(model)


DIMS = COMMON["hidden_size"]
REFUSE = (
    "[mlxr.fuse] model_type '{}' is supported, but {}; mlxr fuses only the stock mlx-lm {} decoder"
)


@pytest.mark.parametrize(
    ("family", "layer", "name", "foreign", "why"),
    [
        (
            "llama",
            1,
            "post_attention_layernorm",
            nn.LayerNorm(DIMS),
            "layer 1's post_attention_layernorm is not an mlx.nn.RMSNorm",
        ),
        ("olmo2", None, "norm", nn.LayerNorm(DIMS), "its final norm is not an mlx.nn.RMSNorm"),
        (
            "olmo2",
            0,
            "post_feedforward_layernorm",
            nn.LayerNorm(DIMS),
            "layer 0's post_feedforward_layernorm is not an mlx.nn.RMSNorm",
        ),
        (
            "olmo2",
            1,
            "post_attention_layernorm",
            gemma2.RMSNorm(DIMS),
            "layer 1's post_attention_layernorm is not an mlx.nn.RMSNorm",
        ),
        (
            "gemma2",
            1,
            "pre_feedforward_layernorm",
            nn.RMSNorm(DIMS),
            "layer 1's pre_feedforward_layernorm is not an mlx_lm.models.gemma2.RMSNorm",
        ),
        (
            "gemma2",
            None,
            "norm",
            nn.RMSNorm(DIMS),
            "its final norm is not an mlx_lm.models.gemma2.RMSNorm",
        ),
        (
            "gemma3_text",
            0,
            "input_layernorm",
            gemma2.RMSNorm(GEMMA3_DIMS),
            "layer 0's input_layernorm is not an mlx_lm.models.gemma3_text.RMSNorm",
        ),
    ],
)
def test_foreign_norm_refused(
    family: str, layer: int | None, name: str, foreign: nn.Module, why: str
) -> None:
    """A supported model whose norm between blocks is not its family's own norm class."""
    model = random_stock(family)
    owner = model.model if layer is None else model.model.layers[layer]
    setattr(owner, name, foreign)
    shapes = {"olmo2": "post-norm", "gemma2": "sandwich-norm", "gemma3_text": "sandwich-norm"}
    shape = shapes.get(family, "pre-norm")
    with pytest.raises(ValueError) as err:
        mlxr.fuse(model)
    assert str(err.value) == REFUSE.format(family, why, shape)
    assert not mlxr.is_fused(model)


def test_qwen2_pipeline_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pipeline stages in one process, the exchange between them monkeypatched: the last
    stage's output is the stock model's."""
    stock = random_stock("qwen2")
    sent: list[mx.array] = []
    monkeypatch.setattr(mx.distributed, "send", lambda h, dst: sent.append(h) or h)
    monkeypatch.setattr(mx.distributed, "recv_like", lambda h, src: sent[-1])
    monkeypatch.setattr(mx.distributed, "all_gather", lambda h: h)

    class Group:
        def __init__(self, rank: int) -> None:
            self._rank = rank

        def rank(self) -> int:
            return self._rank

        def size(self) -> int:
            return 2

    stages = []
    for rank in (1, 0):  # rank 1 runs the first layer, rank 0 the last
        model = fused_twin("qwen2", stock)
        model.model.pipeline(Group(rank))
        stages.append(model)
    stages[0](TOKENS)
    assert len(sent) == 1
    assert rel_err(stages[1](TOKENS), stock(TOKENS)) <= 1e-5


F16_MAX = 65504.0


def test_gemma3_float16_residual_clipped_as_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3 in float16 adds its residuals in float32 and clips the sum to the float16
    range (`clip_residual`). With residuals and branches whose sums overflow, every fused
    add is the stock `clip_residual` of the same inputs, and the logits stay finite."""
    stock = random_stock("gemma3_text")
    stock.set_dtype(mx.float16)
    mx.random.seed(1)
    # A stream of +-49000 from the start (the embedding times sqrt(96)), and branch norms
    # that scale by about 15000, so that a sum of equal signs passes 65504.
    dims = stock.args.hidden_size
    emb = stock.model.embed_tokens.weight
    stock.model.embed_tokens.weight = (mx.sign(mx.random.normal(emb.shape)) * 5000).astype(
        mx.float16
    )
    for layer in stock.model.layers:
        for name in ("post_attention_layernorm", "post_feedforward_layernorm"):
            weight = 15000 + 100 * mx.random.normal((dims,))
            getattr(layer, name).weight = weight.astype(mx.float16)
    fused = fused_twin("gemma3_text", stock)

    sandwiches: list[tuple[mx.array, mx.array, mx.array, float, mx.array]] = []
    real = mx.fast.rmsnorm_fused

    def recording(x: mx.array, weight: mx.array, eps: float, **kwargs: Any) -> Any:
        out = real(x, weight, eps, **kwargs)
        if "branch_weight" in kwargs:
            sandwiches.append((x, kwargs["residual"], kwargs["branch_weight"], eps, out[1]))
        return out

    monkeypatch.setattr(mx.fast, "rmsnorm_fused", recording)
    fused_out = fused(TOKENS)
    monkeypatch.undo()
    stock_out = stock(TOKENS)

    assert len(sandwiches) == 2 * LAYERS
    for x, residual, branch_weight, eps, h in sandwiches:
        branch_norm = gemma3_text.RMSNorm(dims, eps)
        branch_norm.weight = branch_weight
        branch = branch_norm(x)
        want = gemma3_text.clip_residual(residual, branch)
        assert h.dtype == mx.float16 and mx.isfinite(want).all() and mx.isfinite(branch).all()
        assert mx.isinf(residual + branch).any()  # a plain float16 add overflows here
        assert (mx.abs(h) == F16_MAX).any() and mx.isfinite(h).all()
        # The stock norm rounds the branch to float16 before the add, the fused op rounds
        # once: one float16 ulp of the branch and one of the sum apart at most.
        assert rel_err(h, want) <= 2**-9
    assert mx.isfinite(stock_out).all() and mx.isfinite(fused_out).all()
    assert rel_err(fused_out, stock_out) <= 4e-3
