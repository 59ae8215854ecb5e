"""The `decode` case's rows, targets and table: per-call cost in a chain of calls.

Pure Python, so that the tooling tests import it without MLX. A decode step
calls each norm once per layer on a few rows, so the cost that matters is the
per-call overhead (graph construction, dispatch, launch), not bandwidth: each
op is timed as a chain of dependent calls, and the host's two shares are
reported apart: building the graph, and handing it to async_eval (evaluating it
and, on a GPU, encoding its kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .bench_report import Shape

ADD, RMS_NORM, PLAIN, PAIR, RESIDUAL = "add", "rms_norm", "plain", "pair", "residual"
# The ops, in the table's order, and what each chain link computes.
OPS = {
    ADD: "a = a + r",
    RMS_NORM: "a = mx.fast.rms_norm(a, w)",
    PLAIN: "a = rmsnorm_fused(a, w)",
    PAIR: "h = a + h; a = rms_norm(h, w)",
    RESIDUAL: "a, h = rmsnorm_fused(a, w, residual=h)",
}
# Each target: (numerator, denominator, the most the ratio may be).
TARGETS = ((PLAIN, RMS_NORM, 1.00), (RESIDUAL, RMS_NORM, 1.20))


@dataclass(frozen=True)
class DecodeRow:
    """Median seconds per call of each op at one shape and dtype: whole (build
    and evaluate), graph construction alone, and the host's async_eval alone."""

    shape: Shape
    dtype: str
    per_call: dict[str, float]
    build: dict[str, float]
    evaluate: dict[str, float]

    def ratio(self, op: str, baseline: str) -> float:
        return self.per_call[op] / self.per_call[baseline]


def target_cell(row: DecodeRow, op: str, baseline: str, most: float) -> str:
    ratio = row.ratio(op, baseline)
    met = ratio <= most * (1 + 1e-9)  # a ratio exactly at the bound meets it
    return f"{ratio:.2f} ({'met' if met else 'missed'})"


def markdown(rows: Sequence[DecodeRow], calls: int) -> str:
    ops = list(OPS)
    header = [
        "shape",
        "dtype",
        *(f"{op} µs" for op in ops),
        *(f"{op} build µs" for op in ops),
        *(f"{op} async_eval µs" for op in ops),
        *(f"{op} / {base} (≤ {most:.2f})" for op, base, most in TARGETS),
        "residual / pair",
    ]
    lines = [
        f"Decode: µs per call in a chain of {calls} dependent calls (build the chain, then "
        "evaluate it; on a GPU the chains are queued with async_eval so that building one "
        "overlaps the kernels of the one before), ops in turns, medians; build µs: "
        "constructing the chain alone; async_eval µs: the host's call that evaluates a built "
        "chain, on a GPU encoding its kernels without the wait for them (on the CPU it runs "
        "most of the ops too). Ops: "
        + "; ".join(f"{op}: `{what}`" for op, what in OPS.items())
        + ".\n",
        "| " + " | ".join(header) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |",
    ]
    for row in rows:
        cells = [
            f"{row.shape[0]}×{row.shape[1]}",
            row.dtype,
            *(f"{row.per_call[op] * 1e6:.2f}" for op in ops),
            *(f"{row.build[op] * 1e6:.2f}" for op in ops),
            *(f"{row.evaluate[op] * 1e6:.2f}" for op in ops),
            *(target_cell(row, op, base, most) for op, base, most in TARGETS),
            f"{row.ratio(RESIDUAL, PAIR):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
