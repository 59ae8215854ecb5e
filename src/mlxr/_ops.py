"""The calls to `mx.fast.rmsnorm_fused` that the block runners make, one per block shape.

A `Fused` carries what a family's norms add to the plain RMS norm: Gemma's weight offset
(its norms scale by `1 + weight`) and Gemma 3's clipped float16 residual. The weight and
eps are read from the norm modules at every call, so loaded or updated weights are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass(frozen=True)
class Fused:
    """The fused calls for norms that scale by `weight_offset + weight`, and whose residual
    adds clip to the float16 range when `clip_residual` (float16 only, as the op says)."""

    weight_offset: float = 0.0
    clip_residual: bool = False

    def norm(self, x: mx.array, module: nn.Module) -> mx.array:
        """`module(x)`."""
        return mx.fast.rmsnorm_fused(
            x, module["weight"], module.eps, weight_offset=self.weight_offset
        )

    def pre(self, x: mx.array, module: nn.Module, residual: mx.array) -> tuple[mx.array, mx.array]:
        """Pre-norm: `h = x + residual` and `module(h)`, as `(y, h)`."""
        return mx.fast.rmsnorm_fused(
            x,
            module["weight"],
            module.eps,
            residual=residual,
            weight_offset=self.weight_offset,
            clip_residual=self.clip_residual,
        )

    def post(self, x: mx.array, module: nn.Module, residual: mx.array) -> mx.array:
        """Post-norm: `residual + module(x)`."""
        return mx.fast.rmsnorm_fused(
            x,
            module["weight"],
            module.eps,
            residual=residual,
            post_norm=True,
            weight_offset=self.weight_offset,
            clip_residual=self.clip_residual,
        )

    def sandwich(
        self, x: mx.array, branch: nn.Module, module: nn.Module, residual: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Sandwich: `h = residual + branch(x)` and `module(h)`, as `(y, h)`.

        The op takes one eps for both norms; where the two modules' eps differ, this is a
        post-norm call and a plain one."""
        if branch.eps != module.eps:
            h = self.post(x, branch, residual)
            return self.norm(h, module), h
        return mx.fast.rmsnorm_fused(
            x,
            module["weight"],
            module.eps,
            residual=residual,
            branch_weight=branch["weight"],
            weight_offset=self.weight_offset,
            clip_residual=self.clip_residual,
        )
