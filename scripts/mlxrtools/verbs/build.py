"""`build`: the mlx wheel (and the mlxr wheel) into wheels/."""

from __future__ import annotations

from ..environment.build import BuildOptions, build
from ..layout import Layout
from . import Result


def run(layout: Layout, options: BuildOptions) -> Result:
    built = build(layout, options)
    wheels = (built.wheel, built.adoption_wheel)
    return Result(messages=tuple(str(w) for w in wheels if w is not None))
