"""The fused decoder stacks, one runner per block shape, each ending in the final norm.

Every runner takes the stream `h` entering the first layer and returns `(y, h)`: the final
norm of the stream after the last layer, and that stream. Each branch output is held until
the next norm, so that its residual add goes into that norm's fused call; the stream `h`
is the fused op's output, as the stock adds round it.

- `pre_norm` (llama, mistral, qwen2, qwen3): `h = h + attn(input_layernorm(h));
  h = h + mlp(post_attention_layernorm(h))`, then `norm(h)`. A layer's input norm takes the
  previous MLP output, its post-attention norm its own attention output, the final norm the
  last MLP output; layer 0's input norm is the plain form. `2L + 1` calls.
- `post_norm` (olmo2): `h = h + post_attention_layernorm(attn(h));
  h = h + post_feedforward_layernorm(mlp(h))`, then `norm(h)`. Each add is a post-norm call,
  except the last layer's MLP add, which is one sandwich call with the final norm. `2L` calls.
- `sandwich` (gemma2, gemma3_text): `h = h + post_attention_layernorm(attn(input_layernorm(h)));
  h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))`, then `norm(h)`.
  Layer 0's input norm is the plain form; then each add is a sandwich call with the next
  norm: `pre_feedforward_layernorm`, the next layer's `input_layernorm` or the final norm.
  `2L + 1` calls.

Where a sandwich's two norms have different eps, it is two calls (`Fused.sandwich`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ._ops import Fused

Result = tuple[mx.array, mx.array]


def pre_norm(
    op: Fused,
    layers: Sequence[nn.Module],
    h: mx.array,
    masks: Sequence[Any],
    caches: Sequence[Any],
    final_norm: nn.Module,
) -> Result:
    branch: mx.array | None = None  # the last MLP output, not yet added to h
    for layer, mask, cache in zip(layers, masks, caches, strict=False):
        if branch is None:
            x = op.norm(h, layer.input_layernorm)
        else:
            x, h = op.pre(branch, layer.input_layernorm, h)
        x, h = op.pre(layer.self_attn(x, mask, cache), layer.post_attention_layernorm, h)
        branch = layer.mlp(x)
    if branch is None:
        return op.norm(h, final_norm), h
    return op.pre(branch, final_norm, h)


def post_norm(
    op: Fused,
    layers: Sequence[nn.Module],
    h: mx.array,
    masks: Sequence[Any],
    caches: Sequence[Any],
    final_norm: nn.Module,
) -> Result:
    pending: tuple[mx.array, nn.Module] | None = None  # the last MLP output and its norm
    for layer, mask, cache in zip(layers, masks, caches, strict=False):
        if pending is not None:
            h = op.post(*pending, h)
        h = op.post(layer.self_attn(h, mask, cache), layer.post_attention_layernorm, h)
        pending = (layer.mlp(h), layer.post_feedforward_layernorm)
    if pending is None:
        return op.norm(h, final_norm), h
    return op.sandwich(*pending, final_norm, h)


def sandwich(
    op: Fused,
    layers: Sequence[nn.Module],
    h: mx.array,
    masks: Sequence[Any],
    caches: Sequence[Any],
    final_norm: nn.Module,
) -> Result:
    pending: tuple[mx.array, nn.Module] | None = None  # the last MLP output and its norm
    for layer, mask, cache in zip(layers, masks, caches, strict=False):
        if pending is None:
            x = op.norm(h, layer.input_layernorm)
        else:
            x, h = op.sandwich(*pending, layer.input_layernorm, h)
        r = layer.self_attn(x, mask, cache)
        x, h = op.sandwich(r, layer.post_attention_layernorm, layer.pre_feedforward_layernorm, h)
        pending = (layer.mlp(x), layer.post_feedforward_layernorm)
    if pending is None:
        return op.norm(h, final_norm), h
    return op.sandwich(*pending, final_norm, h)
