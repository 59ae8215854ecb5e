"""The MLX side of the `decode` case: per-call cost of each op in a chain.

Imported only by the payload, inside the venv that has the wheel. A chain is
`calls` dependent calls of one op, each call's output the next one's input, as
a decode step's layers are. On a GPU, CHAINS_PER_BATCH chains are queued with
async_eval before one wait, so that building a chain overlaps the kernels of the
one before, as in a model; on the CPU, where ops run in order anyway, each
chain is built and evaluated with mx.eval. The ops are timed in turns, so that
a change in the machine's load falls on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import mlx.core as mx

from .bench_mlx import DTYPES, on_gpu, random_inputs
from .bench_report import EPS, Shape
from .decode_report import ADD, OPS, PAIR, PLAIN, RESIDUAL, RMS_NORM, DecodeRow

CHAINS_PER_BATCH = 5

Arrays = list[mx.array]
Chain = Callable[[], Arrays]


def chains(x: mx.array, r: mx.array, w: mx.array, calls: int, s: mx.Stream) -> dict[str, Chain]:
    """Each op's chain builder: builds the graph of `calls` dependent calls and
    returns its outputs, unevaluated."""

    def add() -> Arrays:
        a = x
        for _ in range(calls):
            a = mx.add(a, r, stream=s)
        return [a]

    def rms_norm() -> Arrays:
        a = x
        for _ in range(calls):
            a = mx.fast.rms_norm(a, w, EPS, stream=s)
        return [a]

    def plain() -> Arrays:
        a = x
        for _ in range(calls):
            a = mx.fast.rmsnorm_fused(a, w, EPS, stream=s)
        return [a]

    def pair() -> Arrays:
        a, h = x, r
        for _ in range(calls):
            h = mx.add(a, h, stream=s)
            a = mx.fast.rms_norm(h, w, EPS, stream=s)
        return [a, h]

    def residual() -> Arrays:
        a, h = x, r
        for _ in range(calls):
            a, h = mx.fast.rmsnorm_fused(a, w, EPS, residual=h, stream=s)
        return [a, h]

    built = {ADD: add, RMS_NORM: rms_norm, PLAIN: plain, PAIR: pair, RESIDUAL: residual}
    assert list(built) == list(OPS)
    return built


def total_seconds(chain: Chain, s: mx.Stream) -> float:
    """Time of one chain, built and evaluated, over a batch queued as the docstring says."""
    batch = CHAINS_PER_BATCH if on_gpu(s) else 1
    evaluate = mx.async_eval if on_gpu(s) else mx.eval
    start = time.perf_counter()
    for _ in range(batch):
        evaluate(*chain())
    mx.synchronize(s)
    return (time.perf_counter() - start) / batch


def build_seconds(chain: Chain) -> float:
    """Time to construct one chain's graph, which is then dropped unevaluated."""
    start = time.perf_counter()
    arrays = chain()
    seconds = time.perf_counter() - start
    del arrays
    return seconds


def evaluate_seconds(chain: Chain, s: mx.Stream) -> float:
    """Host time to hand one built chain to MLX with async_eval: evaluating the
    graph and, on a GPU, encoding its kernels; the wait for them is not counted.
    (On the CPU the call also runs most of the ops.)"""
    arrays = chain()
    start = time.perf_counter()
    mx.async_eval(*arrays)
    seconds = time.perf_counter() - start
    mx.synchronize(s)
    return seconds


def decode_row(
    shape: Shape, dtype_name: str, device: mx.Device, calls: int, repeats: int
) -> DecodeRow:
    """Median per-call seconds of every op at one shape and dtype."""
    s = mx.default_stream(device)
    x, r, w = random_inputs(*shape, DTYPES[dtype_name], 2)
    built = chains(x, r, w, calls, s)
    for chain in built.values():
        for _ in range(3):
            mx.eval(*chain())
    totals: dict[str, list[float]] = {op: [] for op in built}
    builds: dict[str, list[float]] = {op: [] for op in built}
    evaluations: dict[str, list[float]] = {op: [] for op in built}
    for _ in range(repeats):
        for op, chain in built.items():
            totals[op].append(total_seconds(chain, s))
            builds[op].append(build_seconds(chain))
            evaluations[op].append(evaluate_seconds(chain, s))

    def per_call(times: dict[str, list[float]]) -> dict[str, float]:
        return {op: statistics.median(t) / calls for op, t in times.items()}

    return DecodeRow(shape, dtype_name, per_call(totals), per_call(builds), per_call(evaluations))


def decode_rows(
    shapes: Sequence[Shape], dtypes: Sequence[str], device: mx.Device, calls: int, repeats: int
) -> list[DecodeRow]:
    return [decode_row(shape, d, device, calls, repeats) for shape in shapes for d in dtypes]
