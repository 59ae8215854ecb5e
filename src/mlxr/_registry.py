"""Which mlx-lm architectures `fuse` knows, by `model_type`, and how to fuse each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """How to fuse one `model_type`.

    `module` is the mlx-lm module whose inner model (`model.model`) the forward was written
    for; `forward` names the function in `mlxr._forwards` that replaces its `__call__`. The
    forward is looked up lazily so that importing mlxr needs no mlx-lm.
    """

    module: str
    forward: str

    def forward_function(self) -> Callable[..., Any]:
        from . import _forwards

        return getattr(_forwards, self.forward)


# mlx-lm 0.32.2 loads "mistral" with its llama module (MODEL_REMAPPING).
FAMILIES: dict[str, Family] = {
    "llama": Family("mlx_lm.models.llama", "llama_call"),
    "mistral": Family("mlx_lm.models.llama", "llama_call"),
    "qwen2": Family("mlx_lm.models.qwen2", "qwen2_call"),
    "qwen3": Family("mlx_lm.models.qwen3", "qwen3_call"),
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
