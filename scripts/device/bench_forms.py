"""Time each form of mx.fast.rmsnorm_fused against its unfused chain and a copy.

Run with the wheel under test importable (and PyTorch for the copy baseline,
as on the lent GPU machines). Modes are interleaved in shuffled order within
each repetition; the table gives medians. "of copy" is the bytes a form must
move over its time, against a device-to-device copy's (read + write) rate
measured in the same run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

EPS = 1e-5


@dataclass(frozen=True)
class Form:
    name: str
    arrays_moved: int  # rows x hidden arrays each call must read or write
    fused: Callable[..., object]
    unfused: Callable[..., object]


def gemma_norm(u: mx.array, w: mx.array) -> mx.array:
    # mlx-lm's Gemma norms: the offset added to the weight in its own type.
    return mx.fast.rms_norm(u, 1.0 + w, EPS)


FORMS = (
    Form(
        "pre-norm",
        4,
        lambda x, r, wb, w: mx.fast.rmsnorm_fused(x, w, EPS, residual=r),
        lambda x, r, wb, w: pre_norm_unfused(x, r, w),
    ),
    Form(
        "post-norm",
        3,
        lambda x, r, wb, w: mx.fast.rmsnorm_fused(x, w, EPS, residual=r, post_norm=True),
        lambda x, r, wb, w: r + mx.fast.rms_norm(x, w, EPS),
    ),
    Form(
        "sandwich",
        4,
        lambda x, r, wb, w: mx.fast.rmsnorm_fused(x, w, EPS, residual=r, branch_weight=wb),
        lambda x, r, wb, w: sandwich_unfused(x, r, wb, w, mx.fast.rms_norm),
    ),
    Form(
        "sandwich, offset 1",
        4,
        lambda x, r, wb, w: mx.fast.rmsnorm_fused(
            x, w, EPS, residual=r, branch_weight=wb, weight_offset=1.0
        ),
        lambda x, r, wb, w: sandwich_unfused(x, r, wb, w, lambda u, v, e: gemma_norm(u, v)),
    ),
)


def pre_norm_unfused(x: mx.array, r: mx.array, w: mx.array) -> tuple[mx.array, mx.array]:
    h = x + r
    return mx.fast.rms_norm(h, w, EPS), h


def sandwich_unfused(x, r, wb, w, norm):  # type: ignore[no-untyped-def]
    h = r + norm(x, wb, EPS)
    return norm(h, w, EPS), h


def time_call(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call, over `iters` independent calls queued back to back and
    evaluated together, as a model's layers run: no wait between calls."""
    mx.synchronize()
    start = time.perf_counter()
    mx.eval([fn() for _ in range(iters)])
    mx.synchronize()
    return (time.perf_counter() - start) / iters


def copy_rate(nbytes: int, iters: int, repeats: int) -> float:
    """Bytes a second that a device-to-device copy reads plus writes (PyTorch)."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / iters)
    return 2 * nbytes / statistics.median(times)


def bench_shape(rows: int, hidden: int, dtype_name: str, args: argparse.Namespace) -> None:
    dtype = getattr(mx, dtype_name)
    keys = mx.random.split(mx.random.key(0), 4)
    x = mx.random.normal((rows, hidden), key=keys[0]).astype(dtype)
    r = mx.random.normal((rows, hidden), key=keys[1]).astype(dtype)
    wb = (0.1 * mx.random.normal((hidden,), key=keys[2])).astype(dtype)
    w = (0.1 * mx.random.normal((hidden,), key=keys[3])).astype(dtype)
    mx.eval(x, r, wb, w)
    rate = None if args.no_copy else copy_rate(x.nbytes, args.iters, args.repeats)
    modes = [(form, kind) for form in FORMS for kind in ("fused", "unfused")]
    times: dict[tuple[str, str], list[float]] = {(f.name, k): [] for f, k in modes}
    for form, kind in modes:  # warm-up: kernels compiled, buffers cached
        mx.eval(getattr(form, kind)(x, r, wb, w))
    for _ in range(args.repeats):
        random.shuffle(modes)
        for form, kind in modes:
            call = getattr(form, kind)
            times[(form.name, kind)].append(
                time_call(lambda call=call: call(x, r, wb, w), args.iters)
            )
    for form in FORMS:
        fused = statistics.median(times[(form.name, "fused")])
        unfused = statistics.median(times[(form.name, "unfused")])
        of_copy = "" if rate is None else f"{form.arrays_moved * x.nbytes / fused / rate:.0%}"
        print(
            f"| {rows}x{hidden} | {dtype_name} | {form.name} | {fused * 1e6:.1f} | "
            f"{unfused * 1e6:.1f} | {unfused / fused:.2f}x | {of_copy} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="16384x8192,32768x4096")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-copy", action="store_true", help="no PyTorch copy baseline")
    args = p.parse_args()
    print(f"device: {mx.default_device()}, mlx {mx.__version__}")
    print("| shape | dtype | form | fused µs | unfused µs | speed-up | of copy |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for shape in args.shapes.split(","):
        rows, hidden = map(int, shape.split("x"))
        for dtype_name in args.dtypes.split(","):
            bench_shape(rows, hidden, dtype_name, args)


if __name__ == "__main__":
    main()
