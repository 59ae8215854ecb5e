"""`fuse`: rewrite a supported mlx-lm model in place, by instance patching.

The inner model (`model.model`) gets a subclass of its own class whose `__call__` is the
family's fused forward. Nothing else changes: the parameter tree, the layers, the caches that
`make_cache` builds, `nn.quantize` (before or after `fuse`), loading weights and `mx.compile`
all see the same modules as before, and mlx-lm's source is not edited.
"""

from __future__ import annotations

from typing import TypeVar

import mlx.core as mx
import mlx.nn as nn

from ._registry import Blocks, Family, family_of

M = TypeVar("M", bound=nn.Module)

_FUSED_CLASSES: dict[tuple[type, Family], type] = {}


def _fused_class(cls: type, family: Family) -> type:
    key = (cls, family)
    if key not in _FUSED_CLASSES:
        _FUSED_CLASSES[key] = type(
            f"Fused{cls.__name__}",
            (cls,),
            {
                "__call__": family.forward_function(),
                "__doc__": f"{cls.__name__} with mlxr's fused residual-add + RMS norm forward.",
                "__module__": __name__,
                "_mlxr_fused": True,
                "_mlxr_blocks": family.blocks,
            },
        )
    return _FUSED_CLASSES[key]


def _model_type(model: nn.Module) -> object:
    model_type = getattr(model, "model_type", None)
    if model_type is None:
        model_type = getattr(getattr(model, "args", None), "model_type", None)
    return model_type


def is_fused(model: nn.Module) -> bool:
    """Whether `fuse` has rewritten this model."""
    return bool(getattr(type(getattr(model, "model", None)), "_mlxr_fused", False))


def _check_structure(model_type: object, inner: nn.Module, blocks: Blocks) -> None:
    def refuse(what: str) -> ValueError:
        return ValueError(
            f"[mlxr.fuse] model_type '{model_type}' is supported, but {what}; mlxr fuses only "
            f"the stock mlx-lm {blocks.description} decoder"
        )

    norm_type = blocks.norm_type()
    if not isinstance(getattr(inner, "norm", None), norm_type):
        raise refuse(f"its final norm is not an {blocks.norm_class}")
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, list):
        raise refuse("its inner model has no list of layers")
    for i, layer in enumerate(layers):
        if layer is None:  # a layer another pipeline stage runs
            continue
        for name in blocks.norms:
            if not isinstance(getattr(layer, name, None), norm_type):
                raise refuse(f"layer {i}'s {name} is not an {blocks.norm_class}")
        for name in ("self_attn", "mlp"):
            if not callable(getattr(layer, name, None)):
                raise refuse(f"layer {i} has no {name}")


def fuse(model: M) -> M:
    """Route every residual add and RMS norm between the decoder blocks of an mlx-lm model
    through `mx.fast.rmsnorm_fused`, in place, and return the model.

    Supported: see `supported_architectures()`. Any other `model_type` raises ValueError
    naming the supported ones. Calling `fuse` again on a fused model changes nothing.
    """
    model_type = _model_type(model)
    family = family_of(model_type)
    if not hasattr(mx.fast, "rmsnorm_fused"):
        raise RuntimeError(
            f"[mlxr.fuse] mlx {mx.__version__} has no mx.fast.rmsnorm_fused; install the "
            "mlx wheel with the +mlxr local version"
        )
    inner = getattr(model, "model", None)
    if not isinstance(inner, nn.Module):
        raise ValueError(f"[mlxr.fuse] model_type '{model_type}' has no inner model at .model")
    cls = type(inner)
    if getattr(cls, "_mlxr_fused", False):
        return model
    if cls.__module__ != family.module:
        raise ValueError(
            f"[mlxr.fuse] model_type '{model_type}' is supported, but its inner model is "
            f"{cls.__module__}.{cls.__qualname__}, not the {family.module} model that mlxr's "
            "forward mirrors"
        )
    _check_structure(model_type, inner, family.blocks)
    inner.__class__ = _fused_class(cls, family)
    return model
