"""PyTorch baselines for the GPU benchmark, in a process of their own.

PyTorch and MLX's CUDA backend each bring their own CUDA libraries, allocator
and streams, so the baselines run here, apart from MLX, on the same card and in
the same bench run as the MLX cases. Forward: F.rms_norm, torch.compile of
add + rms_norm returning both outputs, and a device-to-device copy. Backward:
autograd of F.rms_norm and of add + F.rms_norm, the forward built once and its
graph kept, so that only the gradients are timed, plus the copy again. Times
are CUDA-event medians of batches of calls; peak memory is
torch.cuda.max_memory_allocated over one backward.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .bench_options import BenchOptions, format_shapes, shape_list
from .bench_report import (
    COPY_FORM,
    DEVICE_COPY,
    EPS,
    PLAIN,
    RESIDUAL,
    TORCH,
    TORCH_COMPILE_RES,
    TORCH_RES_VJP,
    TORCH_VJP,
    Shape,
    backward_bytes,
    forward_bytes,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def median_us(fn: Callable[[], Any], repeats: int, batch: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / batch)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak allocated memory over one call, counting what is resident before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


class Case(NamedTuple):
    shape: Shape
    dtype: str
    case: str
    seconds: float
    bytes: int
    kind: str = "forward"
    form: str = ""
    peak_bytes: int | None = None


def inputs(shape: Shape, name: str, count: int) -> list[torch.Tensor]:
    """`count` tensors of the shape, then a weight of the hidden size."""
    dtype = DTYPES[name]
    tensors = [torch.randn(*shape, device="cuda", dtype=dtype) for _ in range(count)]
    return [*tensors, torch.randn(shape[1], device="cuda", dtype=dtype)]


def forward(shape: Shape, name: str, repeats: int) -> list[Case]:
    x, r, w = inputs(shape, name, 2)
    hidden = shape[1]
    dst = torch.empty_like(x)
    n = x.numel() * x.element_size()

    def add_rms_norm(a, b, weight):  # type: ignore[no-untyped-def]
        h = a + b
        return F.rms_norm(h, (hidden,), weight, EPS), h

    compiled = torch.compile(add_rms_norm)
    cases = [
        (TORCH, lambda: F.rms_norm(x, (hidden,), w, EPS), forward_bytes(False, n)),
        (TORCH_COMPILE_RES, lambda: compiled(x, r, w), forward_bytes(True, n)),
        (DEVICE_COPY, lambda: dst.copy_(x), 2 * n),
    ]
    return [
        Case(shape, name, case, median_us(fn, repeats) * 1e-6, moved) for case, fn, moved in cases
    ]


def gradients(
    form: str, tensors: list[torch.Tensor], hidden: int
) -> Callable[[], tuple[torch.Tensor, ...]]:
    """Build the forward of a form once; the call computes its gradients,
    keeping the graph for the next call."""
    x, r, g, gh, w = tensors
    if form == PLAIN:
        y = F.rms_norm(x, (hidden,), w, EPS)
        return lambda: torch.autograd.grad(y, (x, w), g, retain_graph=True)
    h = x + r
    y = F.rms_norm(h, (hidden,), w, EPS)
    return lambda: torch.autograd.grad((y, h), (x, r, w), (g, gh), retain_graph=True)


def backward(shape: Shape, name: str, repeats: int) -> list[Case]:
    """Autograd's gradients of x (and r) and of the weight, given cotangents;
    each form's graph is freed before the next is built."""
    tensors = inputs(shape, name, 4)
    for t in (tensors[0], tensors[1], tensors[4]):
        t.requires_grad_(True)
    n = tensors[0].numel() * tensors[0].element_size()
    rows = []
    for form, case in ((PLAIN, TORCH_VJP), (RESIDUAL, TORCH_RES_VJP)):
        fn = gradients(form, tensors, shape[1])
        seconds = median_us(fn, repeats) * 1e-6
        moved = backward_bytes(form, n)
        rows.append(Case(shape, name, case, seconds, moved, "backward", form, peak_bytes(fn)))
    dst = torch.empty_like(tensors[2])
    seconds = median_us(lambda: dst.copy_(tensors[2]), repeats) * 1e-6
    moved = backward_bytes(COPY_FORM, n)
    return [*rows, Case(shape, name, DEVICE_COPY, seconds, moved, "backward", COPY_FORM)]


def run(options: BenchOptions) -> list[Case]:
    rows = []
    dtypes, repeats = options.dtypes, options.repeats
    if "forward" in options.cases:
        rows += [c for s in options.shapes for d in dtypes for c in forward(s, d, repeats)]
    if "backward" in options.cases:
        shapes = options.backward_shapes or ()
        rows += [c for s in shapes for d in dtypes for c in backward(s, d, repeats)]
    return rows


def table(rows: list[Case]) -> str:
    lines = [
        f"Card: {torch.cuda.get_device_name()}; torch {torch.__version__}",
        "",
        "| kind | shape | dtype | case | time (µs) | GB/s | peak memory (MiB) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        us = row.seconds * 1e6
        peak = "–" if row.peak_bytes is None else f"{row.peak_bytes / (1 << 20):,.0f}"
        lines.append(
            f"| {row.kind} | {format_shapes([row.shape])} | {row.dtype} | {row.case} "
            f"| {us:,.1f} | {row.bytes / us / 1e3:,.1f} | {peak} |"
        )
    return "\n".join(lines)


# On its own, without `--options`: one large shape in bfloat16.
STANDALONE = BenchOptions(
    device="gpu",
    repeats=20,
    cases=("forward", "backward"),
    shapes=shape_list("16384x8192"),
    backward_shapes=shape_list("16384x8192"),
    dtypes=("bfloat16",),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--options",
        type=BenchOptions.from_json,
        default=STANDALONE,
        help="the cases, as the JSON of a BenchOptions (bench_options.py)",
    )
    p.add_argument("--json", action="store_true", help="print JSON rows, not a table")
    args = p.parse_args()
    rows = run(args.options)
    if args.json:
        print(json.dumps([row._asdict() for row in rows]))
        return
    print(table(rows))


if __name__ == "__main__":
    main()
