"""The fused forward of each supported family's inner model (`model.model`).

Each mirrors the stock `__call__` of mlx-lm 0.32.2 line for line (embeddings and their
scaling, the attention masks from mlx-lm's own `create_attention_mask`, the KV caches,
sliding windows, pipeline stages) and differs only in running the layers and the final norm
through the family's `Blocks` (`_registry`), which `fuse` puts on the fused class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask

from ._registry import Blocks


def _start(
    model: nn.Module,
    inputs: mx.array,
    input_embeddings: mx.array | None,
    cache: list[Any] | None,
    layers: list[nn.Module],
) -> tuple[mx.array, list[Any]]:
    """The stream entering the first layer, and a cache entry for every layer."""
    h = model.embed_tokens(inputs) if input_embeddings is None else input_embeddings
    return h, [None] * len(layers) if cache is None else cache


def _blocks(model: nn.Module) -> Blocks:
    blocks: Blocks = type(model)._mlxr_blocks
    return blocks


def _run(
    model: nn.Module,
    layers: list[nn.Module],
    h: mx.array,
    masks: Sequence[Any],
    cache: list[Any],
) -> tuple[mx.array, mx.array]:
    """The fused layers and final norm: `(y, h)`."""
    return _blocks(model).run(layers, h, masks, cache, model.norm)


def llama_call(
    self: nn.Module,
    inputs: mx.array,
    cache: list[Any] | None = None,
    input_embeddings: mx.array | None = None,
) -> mx.array:
    """`LlamaModel.__call__` (llama, mistral), with full and sliding-window layers."""
    h, cache = _start(self, inputs, input_embeddings, cache, self.layers)
    fa_mask = create_attention_mask(h, cache[self.fa_idx])
    swa_mask = None
    if self.swa_idx is not None:
        swa_mask = create_attention_mask(h, cache[self.swa_idx], window_size=self.sliding_window)
    masks = [swa_mask if layer.use_sliding else fa_mask for layer in self.layers]
    return _run(self, self.layers, h, masks, cache)[0]


def qwen3_call(
    self: nn.Module,
    inputs: mx.array,
    cache: list[Any] | None = None,
    input_embeddings: mx.array | None = None,
) -> mx.array:
    """`Qwen3Model.__call__`: one causal mask for every layer."""
    h, cache = _start(self, inputs, input_embeddings, cache, self.layers)
    mask = create_attention_mask(h, cache[0])
    return _run(self, self.layers, h, [mask] * len(self.layers), cache)[0]


def qwen2_call(
    self: nn.Module,
    inputs: mx.array,
    cache: list[Any] | None = None,
    input_embeddings: mx.array | None = None,
) -> mx.array:
    """`Qwen2Model.__call__`, including its pipeline stages (`PipelineMixin`).

    A pipeline stage hands the full stream to the next stage, so there the last MLP add is
    fused with a final norm whose output is dropped, and the norm of the gathered stream is
    a plain `rmsnorm_fused` after the exchange, as in the stock model.
    """
    rank, size = self.pipeline_rank, self.pipeline_size
    layers = self.pipeline_layers
    h, cache = _start(self, inputs, input_embeddings, cache, layers)
    mask = create_attention_mask(h, cache[0])

    if rank < size - 1:
        h = mx.distributed.recv_like(h, rank + 1)

    y, h = _run(self, layers, h, [mask] * len(layers), cache)
    if size == 1:
        return y

    if rank != 0:
        h = mx.distributed.send(h, (rank - 1) % size)
        if cache[-1] is not None:
            cache[-1].keys = mx.depends(cache[-1].keys, h)
    h = mx.distributed.all_gather(h)[: h.shape[0]]
    return _blocks(self).op.norm(h, self.norm)


def olmo2_call(self: nn.Module, inputs: mx.array, cache: list[Any] | None = None) -> mx.array:
    """`olmo2.LlamaModel.__call__`: post-norm layers, one causal mask."""
    h = self.embed_tokens(inputs)

    if cache is None:
        cache = [None] * len(self.layers)
    mask = create_attention_mask(h, cache[0])
    return _run(self, self.layers, h, [mask] * len(self.layers), cache)[0]


def gemma2_call(self: nn.Module, inputs: mx.array, cache: list[Any] | None = None) -> mx.array:
    """`gemma2.GemmaModel.__call__`: scaled embeddings, one causal mask as an array."""
    h = self.embed_tokens(inputs)
    h = h * (self.args.hidden_size**0.5)

    if cache is None:
        cache = [None] * len(self.layers)

    mask = create_attention_mask(h, cache[0], return_array=True)
    return _run(self, self.layers, h, [mask] * len(self.layers), cache)[0]


def gemma3_text_call(
    self: nn.Module,
    inputs: mx.array,
    cache: list[Any] | None = None,
    input_embeddings: mx.array | None = None,
) -> mx.array:
    """`Gemma3Model.__call__`: scaled embeddings (in place, as stock scales them), and a
    global layer every `sliding_window_pattern` layers, the others sliding-window."""
    h, cache = _start(self, inputs, input_embeddings, cache, self.layers)
    h *= mx.array(self.args.hidden_size**0.5, mx.bfloat16).astype(h.dtype)

    pattern = self.sliding_window_pattern
    global_mask = create_attention_mask(h, cache[pattern - 1])
    sliding_window_mask = None
    if pattern > 1:
        sliding_window_mask = create_attention_mask(h, cache[0], window_size=self.window_size)
    masks = [
        global_mask if i % pattern == pattern - 1 else sliding_window_mask
        for i in range(len(self.layers))
    ]
    return _run(self, self.layers, h, masks, cache)[0]
