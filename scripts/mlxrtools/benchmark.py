"""Times rmsnorm_fused against its baselines. Runs inside a venv with the wheel.

Every ratio in the table compares cases measured in the same run on the same
machine; each time is the median of many calls after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

EPS = 1e-6
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass
class Row:
    shape: tuple[int, int]
    dtype: str
    case: str
    seconds: float
    bytes_moved: int

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.seconds / 1e9


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(
    rows: int, hidden: int, dtype_name: str, device: mx.Device, repeats: int
) -> list[Row]:
    dtype = DTYPES[dtype_name]
    s = mx.default_stream(device)
    x = mx.random.normal((rows, hidden)).astype(dtype)
    r = mx.random.normal((rows, hidden)).astype(dtype)
    w = mx.random.normal((hidden,)).astype(dtype)
    mx.eval(x, r, w)
    n = x.nbytes

    def fused() -> None:
        mx.eval(mx.fast.rmsnorm_fused(x, w, EPS, stream=s))

    def fused_residual() -> None:
        mx.eval(*mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=s))

    def upstream() -> None:
        mx.eval(mx.fast.rms_norm(x, w, EPS, stream=s))

    def upstream_residual() -> None:
        h = mx.add(x, r, stream=s)
        mx.eval(mx.fast.rms_norm(h, w, EPS, stream=s), h)

    src = np.frombuffer(np.random.default_rng(0).bytes(n), dtype=np.uint8)
    dst = np.empty_like(src)

    def numpy_copy() -> None:
        np.copyto(dst, src)

    cases = [
        ("rmsnorm_fused", fused, 2 * n),
        ("mx.fast.rms_norm", upstream, 2 * n),
        ("rmsnorm_fused(residual)", fused_residual, 4 * n),
        ("x + r, mx.fast.rms_norm", upstream_residual, 4 * n),
        ("numpy copy (same bytes as rms_norm)", numpy_copy, 2 * n),
    ]
    return [
        Row((rows, hidden), dtype_name, name, median_seconds(fn, repeats), moved)
        for name, fn, moved in cases
    ]


def markdown(rows: list[Row], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| shape | dtype | case | time (µs) | GB/s | vs mx.fast.rms_norm |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    by_key: dict[tuple[tuple[int, int], str], dict[str, Row]] = {}
    for row in rows:
        by_key.setdefault((row.shape, row.dtype), {})[row.case] = row
    for (shape, dtype), cases in by_key.items():
        for row in cases.values():
            base = "x + r, mx.fast.rms_norm" if "residual" in row.case else "mx.fast.rms_norm"
            ratio = cases[base].seconds / row.seconds
            lines.append(
                f"| {shape[0]}×{shape[1]} | {dtype} | {row.case} | {row.seconds * 1e6:,.1f} "
                f"| {row.gbps:,.1f} | {ratio:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def machine_name(device: str) -> str:
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
    return f"{system}; {device} stream; mlx {mx.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument(
        "--shapes", default="4096x4096,8x4096,1x4096", help="comma-separated ROWSxHIDDEN list"
    )
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--out", help="also write the Markdown table here")
    args = p.parse_args()
    device = mx.cpu if args.device == "cpu" else mx.gpu
    rows: list[Row] = []
    for spec in args.shapes.split(","):
        n_rows, hidden = (int(v) for v in spec.lower().split("x"))
        for dtype in args.dtypes.split(","):
            rows += bench_shape(n_rows, hidden, dtype, device, args.repeats)
    table = markdown(rows, machine_name(args.device))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
