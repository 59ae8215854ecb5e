"""The MLX side of the bench: forward, backward and training-step cases.

Imported only by the payload (`benchmark.main`), inside the venv that has the
wheel. A GPU time is the median of batches of calls queued with async_eval; a
CPU time is the median of single calls. Peak memory is MLX's peak of active
memory over one call, counting the arrays that call starts from.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import mlx.core as mx
import numpy as np

from .bench_options import BenchOptions
from .bench_report import (
    COPY,
    COPY_FORM,
    EPS,
    FUSED,
    FUSED_GEMMA,
    FUSED_POST,
    FUSED_RES,
    FUSED_RES_VJP,
    FUSED_SANDWICH,
    FUSED_VJP,
    PLAIN,
    RESIDUAL,
    UNFUSED_GEMMA,
    UNFUSED_POST,
    UNFUSED_RES_VJP,
    UNFUSED_SANDWICH,
    UPSTREAM,
    UPSTREAM_RES,
    UPSTREAM_VJP,
    BackwardRow,
    Row,
    Shape,
    TrainRow,
    backward_bytes,
    calls_per_batch,
    forward_bytes,
)

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
GPU_BATCH = 20

Arrays = list[mx.array]
# One backward call: build its graph, return (the forward's outputs, the gradients).
VjpCall = Callable[[], tuple[Arrays, Arrays]]
RowT = TypeVar("RowT")


def on_gpu(stream: mx.Stream) -> bool:
    return stream.device == mx.gpu


def batch_seconds(fn: Callable[[], Arrays], stream: mx.Stream, batch: int) -> float:
    """Time of one call, over a batch: queued with async_eval on a GPU, so that
    the host's work for one call overlaps the kernels of the one before, as in
    a model; one call at a time on the CPU, where ops run in order anyway."""
    evaluate = mx.async_eval if on_gpu(stream) else mx.eval
    batch = batch if on_gpu(stream) else 1
    start = time.perf_counter()
    for _ in range(batch):
        evaluate(*fn())
    mx.synchronize(stream)
    return (time.perf_counter() - start) / batch


def median_seconds(
    fn: Callable[[], Arrays], repeats: int, stream: mx.Stream, batch: int = GPU_BATCH
) -> float:
    """Median time of one call, after a warm-up."""
    for _ in range(3):
        mx.eval(*fn())
    return statistics.median(batch_seconds(fn, stream, batch) for _ in range(repeats))


def interleaved_medians(
    fns: dict[str, Callable[[], Arrays]], repeats: int, stream: mx.Stream, batch: int
) -> dict[str, float]:
    """Median time of one call of each function, timed in turns, so that a
    change in the machine's load falls on all of them alike."""
    for fn in fns.values():
        for _ in range(2):
            mx.eval(*fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(batch_seconds(fn, stream, batch))
    return {name: statistics.median(t) for name, t in times.items()}


def built_seconds(graphs: list[Arrays], stream: mx.Stream) -> float:
    """Time per graph to evaluate graphs built already, queued as batch_seconds
    queues calls (on the CPU, pass one graph at a time)."""
    evaluate = mx.async_eval if on_gpu(stream) else mx.eval
    start = time.perf_counter()
    for arrays in graphs:
        evaluate(*arrays)
    mx.synchronize(stream)
    return (time.perf_counter() - start) / len(graphs)


def gradient_seconds(call: VjpCall, repeats: int, stream: mx.Stream, batch: int) -> float:
    """Median time to evaluate the gradients of one call. The graphs of a
    batch are built and their forward outputs evaluated first, untimed; then
    the gradients are queued as the forward cases are, and timed."""
    batch = batch if on_gpu(stream) else 1
    for _ in range(3):
        outputs, grads = call()
        mx.eval(*outputs, *grads)
    times = []
    for _ in range(repeats):
        calls = [call() for _ in range(batch)]
        mx.eval(*[o for outputs, _ in calls for o in outputs])
        times.append(built_seconds([grads for _, grads in calls], stream))
    return statistics.median(times)


def batch_budget() -> int:
    """Bytes a queued batch of backward calls may hold: 16 GiB, or an eighth
    of the device's memory where that is less."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    memory = info.get("memory_size") or info.get("total_memory")
    return min(16 << 30, int(memory) // 8) if memory else 16 << 30


def gradient_peak(call: VjpCall) -> int:
    """Peak active memory of one backward, from its evaluated forward outputs."""
    outputs, grads = call()
    mx.eval(*outputs)
    mx.reset_peak_memory()
    mx.eval(*grads)
    return mx.get_peak_memory()


def numpy_copy_seconds(n: int, repeats: int) -> float:
    src = np.frombuffer(np.random.default_rng(0).bytes(n), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_inputs(rows: int, hidden: int, dtype: mx.Dtype, count: int) -> Arrays:
    """`count` arrays of shape (rows, hidden), then a weight of shape (hidden,)."""
    arrays = [mx.random.normal((rows, hidden)).astype(dtype) for _ in range(count)]
    arrays.append(mx.random.normal((hidden,)).astype(dtype))
    mx.eval(*arrays)
    return arrays


def bench_shape(
    rows: int, hidden: int, dtype_name: str, device: mx.Device, repeats: int
) -> list[Row]:
    """The forward cases at one shape and dtype."""
    s = mx.default_stream(device)
    x, r, w = random_inputs(rows, hidden, DTYPES[dtype_name], 2)
    wb = random_inputs(1, hidden, DTYPES[dtype_name], 0)[0]
    n = x.nbytes

    def upstream_residual() -> Arrays:
        h = mx.add(x, r, stream=s)
        return [mx.fast.rms_norm(h, w, EPS, stream=s), h]

    def unfused_post() -> Arrays:
        return [mx.add(r, mx.fast.rms_norm(x, w, EPS, stream=s), stream=s)]

    def unfused_sandwich(offset: float) -> Arrays:
        # mlx-lm's Gemma norms add the offset to the weight in its own type.
        wb_, w_ = (wb, w)
        if offset:
            wb_, w_ = mx.add(wb, offset, stream=s), mx.add(w, offset, stream=s)
        h = mx.add(r, mx.fast.rms_norm(x, wb_, EPS, stream=s), stream=s)
        return [mx.fast.rms_norm(h, w_, EPS, stream=s), h]

    def fused_sandwich(offset: float) -> Arrays:
        return list(
            mx.fast.rmsnorm_fused(
                x, w, EPS, residual=r, branch_weight=wb, weight_offset=offset, stream=s
            )
        )

    cases: list[tuple[str, Callable[[], Arrays], int]] = [
        (FUSED, lambda: [mx.fast.rmsnorm_fused(x, w, EPS, stream=s)], forward_bytes(False, n)),
        (UPSTREAM, lambda: [mx.fast.rms_norm(x, w, EPS, stream=s)], forward_bytes(False, n)),
        (
            FUSED_RES,
            lambda: list(mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=s)),
            forward_bytes(True, n),
        ),
        (UPSTREAM_RES, upstream_residual, forward_bytes(True, n)),
        # Post-norm reads x and r and writes h; the sandwich forms also write y.
        (
            FUSED_POST,
            lambda: [mx.fast.rmsnorm_fused(x, w, EPS, residual=r, post_norm=True, stream=s)],
            3 * n,
        ),
        (UNFUSED_POST, unfused_post, 3 * n),
        (FUSED_SANDWICH, lambda: fused_sandwich(0.0), forward_bytes(True, n)),
        (UNFUSED_SANDWICH, lambda: unfused_sandwich(0.0), forward_bytes(True, n)),
        (FUSED_GEMMA, lambda: fused_sandwich(1.0), forward_bytes(True, n)),
        (UNFUSED_GEMMA, lambda: unfused_sandwich(1.0), forward_bytes(True, n)),
    ]
    result = [
        Row((rows, hidden), dtype_name, name, median_seconds(fn, repeats, s), moved)
        for name, fn, moved in cases
    ]
    if device != mx.gpu:
        # The machine's bandwidth limit for the bytes rms_norm moves: read n, write n.
        result.append(Row((rows, hidden), dtype_name, COPY, numpy_copy_seconds(n, repeats), 2 * n))
    return result


def backward_functions(s: mx.Stream) -> dict[str, tuple[str, Callable[..., Arrays]]]:
    """Each backward case: its form and the forward function whose vjp it takes.
    Plain functions take (x, w), residual ones (x, r, w)."""

    def fused(x: mx.array, w: mx.array) -> Arrays:
        return [mx.fast.rmsnorm_fused(x, w, EPS, stream=s)]

    def upstream(x: mx.array, w: mx.array) -> Arrays:
        return [mx.fast.rms_norm(x, w, EPS, stream=s)]

    def fused_residual(x: mx.array, r: mx.array, w: mx.array) -> Arrays:
        return list(mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=s))

    def unfused_residual(x: mx.array, r: mx.array, w: mx.array) -> Arrays:
        h = mx.add(x, r, stream=s)
        return [mx.fast.rms_norm(h, w, EPS, stream=s), h]

    return {
        FUSED_VJP: (PLAIN, fused),
        UPSTREAM_VJP: (PLAIN, upstream),
        FUSED_RES_VJP: (RESIDUAL, fused_residual),
        UNFUSED_RES_VJP: (RESIDUAL, unfused_residual),
    }


def bench_backward_shape(
    rows: int, hidden: int, dtype_name: str, device: mx.Device, repeats: int
) -> list[BackwardRow]:
    """The backward cases at one shape and dtype: mx.vjp of each function,
    timing only the evaluation of the gradients."""
    s = mx.default_stream(device)
    x, r, g, gh, w = random_inputs(rows, hidden, DTYPES[dtype_name], 4)
    n = x.nbytes
    primals = {PLAIN: [x, w], RESIDUAL: [x, r, w]}
    cotangents = {PLAIN: [g], RESIDUAL: [g, gh]}
    # Alive per call: the forward's outputs (y, h), gx and the unfused pair's temporaries.
    batch = calls_per_batch(6 * n, batch_budget())
    result = []
    for case, (form, fn) in backward_functions(s).items():

        def call(fn: Callable[..., Arrays] = fn, form: str = form) -> tuple[Arrays, Arrays]:
            outputs, grads = mx.vjp(fn, primals[form], cotangents[form])
            return outputs, grads

        seconds = gradient_seconds(call, repeats, s, batch)
        moved = backward_bytes(form, n)
        result.append(
            BackwardRow((rows, hidden), dtype_name, form, case, seconds, moved, gradient_peak(call))
        )
    if device != mx.gpu:
        seconds = numpy_copy_seconds(n, repeats)
        moved = backward_bytes(COPY_FORM, n)
        result.append(
            BackwardRow((rows, hidden), dtype_name, COPY_FORM, COPY, seconds, moved, None)
        )
    return result


Params = dict[str, list[mx.array]]


def train_params(blocks: int, hidden: int, dtype: mx.Dtype) -> Params:
    """A norm weight per block plus a final one, and a Linear(hidden, hidden)
    weight per block, scaled so that activations stay near unit size."""
    scale = hidden**-0.5
    params = {
        "norms": [1 + 0.1 * mx.random.normal((hidden,)) for _ in range(blocks + 1)],
        "linears": [scale * mx.random.normal((hidden, hidden)) for _ in range(blocks)],
    }
    params = {k: [a.astype(dtype) for a in v] for k, v in params.items()}
    mx.eval(params)
    return params


def fused_stack(params: Params, x: mx.array) -> mx.array:
    """Pre-norm blocks with the residual carried through rmsnorm_fused."""
    norms = params["norms"]
    h, y = x, mx.fast.rmsnorm_fused(x, norms[0], EPS)
    for w_linear, w_norm in zip(params["linears"], norms[1:], strict=True):
        y, h = mx.fast.rmsnorm_fused(y @ w_linear.T, w_norm, EPS, residual=h)
    return y


def stock_stack(params: Params, x: mx.array) -> mx.array:
    """The same blocks with x + r and mx.fast.rms_norm."""
    norms = params["norms"]
    h, y = x, mx.fast.rms_norm(x, norms[0], EPS)
    for w_linear, w_norm in zip(params["linears"], norms[1:], strict=True):
        h = y @ w_linear.T + h
        y = mx.fast.rms_norm(h, w_norm, EPS)
    return y


def train_step(stack: Callable[[Params, mx.array], mx.array]) -> Callable[..., tuple]:
    def loss(params: Params, x: mx.array) -> mx.array:
        return mx.mean(mx.square(stack(params, x).astype(mx.float32)))

    return mx.value_and_grad(loss)


def step_peak(step: Callable[[], Arrays]) -> int:
    """Peak active memory of one evaluated step."""
    mx.reset_peak_memory()
    mx.eval(*step())
    return mx.get_peak_memory()


def train_steps(params: Params, x: mx.array) -> dict[str, Callable[[], Arrays]]:
    """One training step of each stack, returning the loss and every gradient."""
    steps = {}
    for name, stack in (("fused", fused_stack), ("stock", stock_stack)):
        grad_fn = train_step(stack)

        def step(grad_fn: Callable[..., tuple] = grad_fn) -> Arrays:
            loss, grads = grad_fn(params, x)
            return [loss, *grads["norms"], *grads["linears"]]

        steps[name] = step
    return steps


def bench_train(options: BenchOptions, device: mx.Device) -> TrainRow:
    """Time per training step of the fused and the stock stack, same weights,
    timed in turns; then the peak memory of one step of each. The options have
    their device defaults filled in."""
    tokens, hidden, blocks = options.train_tokens or 0, options.train_hidden, options.train_blocks
    dtype_name, repeats = options.train_dtype or "float32", options.train_repeats
    dtype = DTYPES[dtype_name]
    params = train_params(blocks, hidden, dtype)
    x = mx.random.normal((tokens, hidden)).astype(dtype)
    mx.eval(x)
    steps = train_steps(params, x)
    check_same_loss(steps["fused"](), steps["stock"]())
    seconds = interleaved_medians(steps, repeats, mx.default_stream(device), batch=4)
    peaks = {name: step_peak(step) for name, step in steps.items()}
    return TrainRow(
        tokens, hidden, blocks, dtype_name,
        seconds["fused"], seconds["stock"], peaks["fused"], peaks["stock"],
    )  # fmt: skip


def check_same_loss(fused: Arrays, stock: Arrays) -> None:
    """Both stacks compute the same function: a bench of different work would mislead."""
    a, b = fused[0].item(), stock[0].item()
    if abs(a - b) > 1e-2 * abs(b):
        raise RuntimeError(f"fused and stock training losses differ: {a} against {b}")


def setup(device_name: str, cache_limit_mb: int | None) -> tuple[mx.Device, str]:
    """Make the device the default one (so that gradients and random inputs
    land on it too), apply the cache limit, and name the machine."""
    if cache_limit_mb is not None:
        mx.set_cache_limit(cache_limit_mb << 20)
    device = mx.cpu if device_name == "cpu" else mx.gpu
    mx.set_default_device(device)
    return device, machine_name(device_name, cache_limit_mb)


def forward_rows(
    shapes: Sequence[Shape], dtypes: Sequence[str], device: mx.Device, repeats: int
) -> list[Row]:
    return _every_shape(bench_shape, shapes, dtypes, device, repeats)


def backward_rows(
    shapes: Sequence[Shape], dtypes: Sequence[str], device: mx.Device, repeats: int
) -> list[BackwardRow]:
    return _every_shape(bench_backward_shape, shapes, dtypes, device, repeats)


def _every_shape(
    bench: Callable[[int, int, str, mx.Device, int], list[RowT]],
    shapes: Sequence[Shape],
    dtypes: Sequence[str],
    device: mx.Device,
    repeats: int,
) -> list[RowT]:
    """bench(rows, hidden, dtype, device, repeats)'s rows for every shape and dtype."""
    return [
        row
        for rows, hidden in shapes
        for dtype in dtypes
        for row in bench(rows, hidden, dtype, device, repeats)
    ]


def machine_name(device: str, cache_limit_mb: int | None) -> str:
    if device == "gpu":
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        name = info.get("device_name") or info.get("architecture") or "GPU"
        return f"{name}; gpu stream; mlx {mx.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"
    cache = (
        "MLX's default buffer cache"
        if cache_limit_mb is None
        else f"buffer cache limit {cache_limit_mb} MB"
    )
    return f"{system}; {device} stream; mlx {mx.__version__}; {cache}"


def sweep(
    dtypes: Sequence[str], device: mx.Device, repeats: int, elements: int = 1 << 22
) -> list[Row]:
    """GB/s against hidden size, at a fixed number of elements per call."""
    rows = []
    for dtype in dtypes:
        for hidden in (256, 1024, 4096, 16384, 65536):
            rows += bench_shape(max(elements // hidden, 1), hidden, dtype, device, repeats)
    return rows
