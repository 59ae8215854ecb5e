"""A 4-bit quantized mlx-lm Llama runs on the default device: prefill (qmm) and
cached decode steps (qmv) match the same model with its weights dequantized."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten

# Checks of our wheel's build and its bundled dependencies, not of the op. The
# test command installs mlx-lm; the upstream pull-request branch deselects these.
pytestmark = pytest.mark.vendor
llama = pytest.importorskip("mlx_lm.models.llama")
make_prompt_cache = pytest.importorskip("mlx_lm.models.cache").make_prompt_cache

ARGS = llama.ModelArgs(
    model_type="llama",
    hidden_size=256,
    num_hidden_layers=2,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=512,
    tie_word_embeddings=False,
)


def dequantized_copy(quantized: nn.Module) -> nn.Module:
    """The same model with float weights equal to the dequantized ones."""
    params = dict(tree_flatten(quantized.parameters()))
    for name, layer in quantized.named_modules():
        if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            params[f"{name}.weight"] = mx.dequantize(
                layer.weight, layer.scales, layer.biases, layer.group_size, layer.bits
            )
            del params[f"{name}.scales"], params[f"{name}.biases"]
    plain = llama.Model(ARGS)
    plain.update(tree_unflatten(list(params.items())))
    return plain


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module, nn.Module]:
    """The 4-bit model, its dequantized twin, and the float model it came from."""
    mx.random.seed(0)
    original = llama.Model(ARGS)
    # Larger than the default init, so that quantization error shows.
    original.update(tree_map(lambda p: p * 4 if p.ndim == 2 else p, original.parameters()))
    quantized = llama.Model(ARGS)
    quantized.update(original.parameters())
    nn.quantize(quantized, group_size=64, bits=4)
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    return quantized, dequantized_copy(quantized), original


# The two models differ only in how their matmuls round: qmm against a float
# matmul (TF32 on CUDA), through two layers and a softmax. Quantization itself
# moves the logits by about 0.5 (test_four_bits_differ_from_the_float_model).
TOLERANCE = 1e-2


def rel_error(a: mx.array, b: mx.array) -> float:
    a64 = np.array(a.astype(mx.float32), np.float64)
    b64 = np.array(b.astype(mx.float32), np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


TOKENS = mx.random.randint(0, ARGS.vocab_size, (1, 16), key=mx.random.key(1))


def test_prefill_and_decode_match_dequantized_weights(models):
    quantized, plain, _ = models
    caches = make_prompt_cache(quantized), make_prompt_cache(plain)
    logits = [m(TOKENS, cache=c) for m, c in zip((quantized, plain), caches, strict=True)]
    assert logits[0].shape == (1, 16, ARGS.vocab_size)
    assert rel_error(*logits) < TOLERANCE, rel_error(*logits)
    # Decode: one token at a time through the KV cache.
    token = mx.argmax(logits[1][:, -1:], axis=-1)
    for _ in range(3):
        steps = [m(token, cache=c) for m, c in zip((quantized, plain), caches, strict=True)]
        assert steps[0].shape == (1, 1, ARGS.vocab_size)
        assert rel_error(*steps) < TOLERANCE, rel_error(*steps)
        token = mx.argmax(steps[1][:, -1:], axis=-1)
    assert caches[0][0].offset == 19


def test_four_bits_differ_from_the_float_model(models):
    """The tolerance above separates kernels from quantization error."""
    quantized, _, original = models
    assert rel_error(quantized(TOKENS), original(TOKENS)) > 10 * TOLERANCE
