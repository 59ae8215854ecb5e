"""PyTorch baselines for the GPU benchmark, in a process of their own.

PyTorch and MLX's CUDA backend each bring their own CUDA libraries, allocator
and streams, so the baselines (F.rms_norm, torch.compile of add + rms_norm
returning both outputs, and a device-to-device copy) run here, apart from MLX,
on the same card and in the same bench run as the MLX cases. Times are
CUDA-event medians of batches of calls.
"""

from __future__ import annotations

import argparse
import json
from typing import NamedTuple

import torch
import torch.nn.functional as F

EPS = 1e-6
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def median_us(fn, repeats: int, batch: int = 20) -> float:  # type: ignore[no-untyped-def]
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


class Case(NamedTuple):
    shape: tuple[int, int]
    dtype: str
    case: str
    seconds: float
    bytes: int


def bench(rows: int, hidden: int, name: str, repeats: int) -> list[Case]:
    dtype = DTYPES[name]
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    r = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    dst = torch.empty_like(x)
    n = x.numel() * x.element_size()

    def add_rms_norm(a, b, weight):  # type: ignore[no-untyped-def]
        h = a + b
        return F.rms_norm(h, (hidden,), weight, EPS), h

    compiled = torch.compile(add_rms_norm)
    cases = [
        ("torch F.rms_norm", lambda: F.rms_norm(x, (hidden,), w, EPS), 2 * n),
        ("torch.compile(x + r, rms_norm)", lambda: compiled(x, r, w), 4 * n),
        ("device-to-device copy of the same bytes", lambda: dst.copy_(x), 2 * n),
    ]
    return [
        Case((rows, hidden), name, case, median_us(fn, repeats) * 1e-6, moved)
        for case, fn, moved in cases
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="16384x8192")
    p.add_argument("--dtypes", default="bfloat16")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print JSON rows, not a table")
    args = p.parse_args()
    rows = []
    for spec in args.shapes.split(","):
        n_rows, hidden = (int(v) for v in spec.lower().split("x"))
        for name in args.dtypes.split(","):
            rows += bench(n_rows, hidden, name, args.repeats)
    if args.json:
        print(json.dumps([row._asdict() for row in rows]))
        return
    print(f"Card: {torch.cuda.get_device_name()}; torch {torch.__version__}\n")
    print("| shape | dtype | case | time (µs) | GB/s |")
    print("| --- | --- | --- | ---: | ---: |")
    for row in rows:
        us = row.seconds * 1e6
        shape = f"{row.shape[0]}×{row.shape[1]}"
        print(f"| {shape} | {row.dtype} | {row.case} | {us:,.1f} | {row.bytes / us / 1e3:,.1f} |")


if __name__ == "__main__":
    main()
