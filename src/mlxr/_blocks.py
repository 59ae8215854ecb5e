"""The fused pre-norm decoder stack, shared by every supported family.

A stock mlx-lm pre-norm block computes

    h = h + attn(input_layernorm(h));  h = h + mlp(post_attention_layernorm(h))

and the model ends with `norm(h)`. Here each residual add goes into the next norm's fused
call: a layer's input norm takes the previous layer's MLP output, its post-attention norm
takes its own attention output, and the final norm takes the last MLP output. Only the first
layer's input norm has no add to fuse, so it is the plain form. The stream `h` is the fused
op's second output, bit-identical to the stock `h + branch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def norm(x: mx.array, module: nn.Module, residual: mx.array | None = None) -> Any:
    """`module(x)`, or `module(x + residual)` and the sum, in one fused call. The weight and
    eps are read from the module at every call, so loaded or updated weights are used."""
    if residual is None:
        return mx.fast.rmsnorm_fused(x, module["weight"], module.eps)
    return mx.fast.rmsnorm_fused(x, module["weight"], module.eps, residual=residual)


def run_layers(
    layers: Sequence[nn.Module],
    h: mx.array,
    masks: Sequence[Any],
    caches: Sequence[Any],
    branch: mx.array | None = None,
) -> tuple[mx.array | None, mx.array]:
    """Run pre-norm decoder layers on the stream `h`, leaving the last branch unadded.

    Returns `(branch, h)`: the stream after the layers is `h + branch` (`h` alone when
    `branch` is None, i.e. when there were no layers), for the caller to fuse into its norm.
    """
    for layer, mask, cache in zip(layers, masks, caches, strict=False):
        if branch is None:
            x = norm(h, layer.input_layernorm)
        else:
            x, h = norm(branch, layer.input_layernorm, h)
        x, h = norm(layer.self_attn(x, mask, cache), layer.post_attention_layernorm, h)
        branch = layer.mlp(x)
    return branch, h


def finish(
    branch: mx.array | None, h: mx.array, final_norm: nn.Module
) -> tuple[mx.array, mx.array]:
    """The final norm of `h + branch`, and that sum: `(y, h)`."""
    if branch is None:
        return norm(h, final_norm), h
    return norm(branch, final_norm, h)
