"""Which mlx-lm architectures `fuse` knows, by `model_type`, and how to fuse each."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from . import _blocks
from ._ops import Fused

_DESCRIPTIONS = {"pre_norm": "pre-norm", "post_norm": "post-norm", "sandwich": "sandwich-norm"}


@dataclass(frozen=True)
class Blocks:
    """A family's decoder blocks: which runner of `mlxr._blocks` fuses them, the names of
    each layer's norms, the class those norms and the final norm (`.norm`) must be
    (`module.Class`, imported when checked), and the fused calls' weight offset and clip."""

    runner: str
    norms: tuple[str, ...]
    norm_class: str = "mlx.nn.RMSNorm"
    op: Fused = field(default_factory=Fused)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.runner]

    def norm_type(self) -> type:
        module, name = self.norm_class.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def run(
        self,
        layers: Sequence[nn.Module],
        h: mx.array,
        masks: Sequence[Any],
        caches: Sequence[Any],
        final_norm: nn.Module,
    ) -> tuple[mx.array, mx.array]:
        """The layers on the stream `h`, then the final norm: `(y, h)` (see `_blocks`)."""
        return getattr(_blocks, self.runner)(self.op, layers, h, masks, caches, final_norm)


@dataclass(frozen=True)
class Family:
    """How to fuse one `model_type`.

    `module` is the mlx-lm module whose inner model (`model.model`) the forward was written
    for; `forward` names the function in `mlxr._forwards` that replaces its `__call__`, and
    `blocks` says how its layers are fused. The forward and the norm class are looked up
    lazily so that importing mlxr needs no mlx-lm.
    """

    module: str
    forward: str
    blocks: Blocks

    def forward_function(self) -> Callable[..., Any]:
        from . import _forwards

        return getattr(_forwards, self.forward)


PRE_NORM = Blocks("pre_norm", ("input_layernorm", "post_attention_layernorm"))
POST_NORM = Blocks("post_norm", ("post_attention_layernorm", "post_feedforward_layernorm"))
_GEMMA_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)

# mlx-lm 0.32.2 loads "mistral" with its llama module (MODEL_REMAPPING). Gemma's norms are
# their module's own RMSNorm, `rms_norm(x, 1.0 + weight)`; Gemma 3 clips its float16 adds.
FAMILIES: dict[str, Family] = {
    "gemma2": Family(
        "mlx_lm.models.gemma2",
        "gemma2_call",
        Blocks("sandwich", _GEMMA_NORMS, "mlx_lm.models.gemma2.RMSNorm", Fused(weight_offset=1.0)),
    ),
    "gemma3_text": Family(
        "mlx_lm.models.gemma3_text",
        "gemma3_text_call",
        Blocks(
            "sandwich",
            _GEMMA_NORMS,
            "mlx_lm.models.gemma3_text.RMSNorm",
            Fused(weight_offset=1.0, clip_residual=True),
        ),
    ),
    "llama": Family("mlx_lm.models.llama", "llama_call", PRE_NORM),
    "mistral": Family("mlx_lm.models.llama", "llama_call", PRE_NORM),
    "olmo2": Family("mlx_lm.models.olmo2", "olmo2_call", POST_NORM),
    "qwen2": Family("mlx_lm.models.qwen2", "qwen2_call", PRE_NORM),
    "qwen3": Family("mlx_lm.models.qwen3", "qwen3_call", PRE_NORM),
}


def supported_architectures() -> list[str]:
    """The `model_type`s that `fuse` rewrites, sorted."""
    return sorted(FAMILIES)


def family_of(model_type: object) -> Family:
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise ValueError(
            f"[mlxr.fuse] unsupported architecture '{model_type}'; "
            f"supported: {', '.join(supported_architectures())}"
        )
    return family
