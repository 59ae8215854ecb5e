"""Times rmsnorm_fused against its baselines. Runs inside a venv with the wheel.

Every ratio compares cases measured in the same run on the same machine; each
time is the median of many calls after a warm-up. Bytes are those the op must
move: x and y, plus r and h for the residual form.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

EPS = 1e-6
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
FUSED, UPSTREAM = "rmsnorm_fused", "mx.fast.rms_norm"
FUSED_RES, UPSTREAM_RES = "rmsnorm_fused(residual)", "x + r, mx.fast.rms_norm"
COPY = "numpy copy of the same bytes"
DEVICE_COPY = "device-to-device copy of the same bytes"
BASELINE = {FUSED: UPSTREAM, UPSTREAM: UPSTREAM, COPY: UPSTREAM, FUSED_RES: UPSTREAM_RES}
BASELINE[UPSTREAM_RES] = UPSTREAM_RES
BASELINE[DEVICE_COPY] = UPSTREAM
BASELINE["torch F.rms_norm"] = UPSTREAM
BASELINE["torch.compile(x + r, rms_norm)"] = UPSTREAM_RES


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


def median_seconds(
    fn: Callable[[], list[mx.array]],
    repeats: int,
    stream: mx.Stream,
    batch: int = 20,
) -> float:
    """Median time of one call. On a GPU, a batch of calls is queued with
    async_eval and timed to the synchronization after it, so that the host's
    work for one call overlaps the kernels of the one before, as in a model.
    On the CPU, where ops run one after another anyway, each call is timed."""
    on_gpu = stream.device == mx.gpu
    evaluate = mx.async_eval if on_gpu else mx.eval
    batch = batch if on_gpu else 1
    for _ in range(3):
        mx.eval(*fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            evaluate(*fn())
        mx.synchronize(stream)
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


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


def torch_rows(shapes: str, dtypes: str, repeats: int) -> list[Row]:
    """PyTorch's cases on the same card, from a process of its own, so that
    neither framework's CUDA libraries, allocator or streams disturb the other's
    timings. None where PyTorch or its CUDA is missing, or MLXR_BENCH_TORCH=0."""
    if os.environ.get("MLXR_BENCH_TORCH") == "0":
        return []
    cmd = [
        sys.executable, "-m", "mlxrtools.torch_baselines", "--json",
        "--shapes", shapes, "--dtypes", dtypes, "--repeats", str(repeats),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        print(f"PyTorch baselines skipped: {tail[0] if tail else proc.returncode}", flush=True)
        return []
    return [
        Row((r["shape"][0], r["shape"][1]), r["dtype"], r["case"], r["seconds"], r["bytes"])
        for r in json.loads(proc.stdout)
    ]


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

    def upstream_residual() -> list[mx.array]:
        h = mx.add(x, r, stream=s)
        return [mx.fast.rms_norm(h, w, EPS, stream=s), h]

    cases: list[tuple[str, Callable[[], list[mx.array]], int]] = [
        (FUSED, lambda: [mx.fast.rmsnorm_fused(x, w, EPS, stream=s)], 2 * n),
        (UPSTREAM, lambda: [mx.fast.rms_norm(x, w, EPS, stream=s)], 2 * n),
        (FUSED_RES, lambda: list(mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=s)), 4 * n),
        (UPSTREAM_RES, upstream_residual, 4 * n),
    ]
    result = [
        Row((rows, hidden), dtype_name, name, median_seconds(fn, repeats, s), moved)
        for name, fn, moved in cases
    ]
    if device != mx.gpu:
        # The machine's bandwidth limit for the bytes rms_norm moves: read n, write n.
        result.append(Row((rows, hidden), dtype_name, COPY, numpy_copy_seconds(n, repeats), 2 * n))
    return result


def markdown(rows: list[Row], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| shape | dtype | case | time (µs) | GB/s | share of copy | speed-up vs baseline |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    by_key: dict[tuple[tuple[int, int], str], dict[str, Row]] = {}
    for row in rows:
        by_key.setdefault((row.shape, row.dtype), {})[row.case] = row
    for (shape, dtype), cases in by_key.items():
        copy = cases.get(DEVICE_COPY) or cases.get(COPY)
        for row in cases.values():
            base = cases[BASELINE[row.case]]
            share = f"{row.gbps / copy.gbps:.0%}" if copy else "–"
            lines.append(
                f"| {shape[0]}×{shape[1]} | {dtype} | {row.case} | {row.seconds * 1e6:,.1f} "
                f"| {row.gbps:,.1f} | {share} | {base.seconds / row.seconds:.2f}× vs {base.case} |"
            )
    return "\n".join(lines) + "\n"


def sweep(dtypes: list[str], device: mx.Device, repeats: int, elements: int = 1 << 22) -> list[Row]:
    """GB/s against hidden size, at a fixed number of elements per call."""
    rows = []
    for dtype in dtypes:
        for hidden in (256, 1024, 4096, 16384, 65536):
            rows += bench_shape(max(elements // hidden, 1), hidden, dtype, device, repeats)
    return rows


def chart(rows: list[Row], machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r.dtype for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        for case in (FUSED, FUSED_RES, UPSTREAM, UPSTREAM_RES, COPY):
            pts = sorted((r.shape[1], r.gbps) for r in rows if r.dtype == dtype and r.case == case)
            style = "--" if case == COPY else "-"
            ax.plot(*zip(*pts, strict=True), style, marker="o", label=case)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden size (rows × hidden fixed at 4M elements)")
        ax.set_ylabel("GB/s")
        ax.set_title(dtype)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(machine, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--shapes", default="4096x4096,8x4096,1x4096")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument(
        "--cache-limit-mb",
        type=int,
        default=None,
        help="MLX buffer cache limit; large outputs skip the default cache and page-fault",
    )
    p.add_argument("--sweep", action="store_true", help="also sweep hidden sizes for a chart")
    p.add_argument("--out-dir", type=Path, help="write bench-<device>.md (and .png) here")
    args = p.parse_args()
    if args.cache_limit_mb is not None:
        mx.set_cache_limit(args.cache_limit_mb << 20)
    device = mx.cpu if args.device == "cpu" else mx.gpu
    machine = machine_name(args.device, args.cache_limit_mb)
    rows: list[Row] = []
    dtypes = args.dtypes.split(",")
    for spec in args.shapes.split(","):
        n_rows, hidden = (int(v) for v in spec.lower().split("x"))
        for dtype in dtypes:
            rows += bench_shape(n_rows, hidden, dtype, device, args.repeats)
    if device == mx.gpu:
        rows += torch_rows(args.shapes, args.dtypes, args.repeats)
    table = markdown(rows, machine)
    print(table)
    swept = sweep(dtypes, device, args.repeats) if args.sweep else []
    if swept:
        print(markdown(swept, machine))
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        text = table + ("\n" + markdown(swept, machine) if swept else "")
        (args.out_dir / f"bench-{args.device}.md").write_text(text)
        if swept:
            chart(swept, machine, args.out_dir / f"bench-{args.device}.png")


if __name__ == "__main__":
    main()
