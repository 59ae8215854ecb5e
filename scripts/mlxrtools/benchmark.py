"""Times rmsnorm_fused against its baselines. Runs inside a venv with the wheel.

Every ratio compares cases measured in the same run on the same machine; each
time is the median of many calls after a warm-up. Bytes are those the op must
move: x and y, plus r and h for the residual form.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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
    fn: Callable[[], object],
    repeats: int,
    sync: Callable[[], object] | None = None,
    batch: int = 1,
) -> float:
    """Median time of one call. On a GPU, calls run in batches between
    synchronizations, so that launch latency overlaps as it does in a model."""
    for _ in range(3):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def torch_cases(
    x: mx.array, r: mx.array, w: mx.array
) -> list[tuple[str, Callable[[], object], int, Callable[[], object]]]:
    """PyTorch on the same CUDA device and data: F.rms_norm, torch.compile of
    add + rms_norm, and a device-to-device copy as the bandwidth ceiling."""
    if os.environ.get("MLXR_BENCH_TORCH") == "0":
        return []
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    dtype = {mx.float32: torch.float32, mx.bfloat16: torch.bfloat16, mx.float16: torch.float16}
    tx = torch.from_numpy(np.array(x.astype(mx.float32))).to("cuda", dtype[x.dtype])
    tr = torch.from_numpy(np.array(r.astype(mx.float32))).to("cuda", dtype[x.dtype])
    tw = torch.from_numpy(np.array(w.astype(mx.float32))).to("cuda", dtype[x.dtype])
    shape = (x.shape[-1],)

    def add_rms_norm(a, b, weight):  # type: ignore[no-untyped-def]
        h = a + b
        return F.rms_norm(h, shape, weight, EPS), h

    compiled = torch.compile(add_rms_norm)
    dst = torch.empty_like(tx)
    n = x.nbytes
    sync = torch.cuda.synchronize
    return [
        ("torch F.rms_norm", lambda: F.rms_norm(tx, shape, tw, EPS), 2 * n, sync),
        ("torch.compile(x + r, rms_norm)", lambda: compiled(tx, tr, tw), 4 * n, sync),
        (DEVICE_COPY, lambda: dst.copy_(tx), 2 * n, sync),
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

    def fused() -> None:
        mx.eval(mx.fast.rmsnorm_fused(x, w, EPS, stream=s))

    def fused_residual() -> None:
        mx.eval(*mx.fast.rmsnorm_fused(x, w, EPS, residual=r, stream=s))

    def upstream() -> None:
        mx.eval(mx.fast.rms_norm(x, w, EPS, stream=s))

    def upstream_residual() -> None:
        h = mx.add(x, r, stream=s)
        mx.eval(mx.fast.rms_norm(h, w, EPS, stream=s), h)

    # The machine's bandwidth limit for the bytes rms_norm moves: read n, write n.
    src = np.frombuffer(np.random.default_rng(0).bytes(n), dtype=np.uint8)
    dst = np.empty_like(src)

    def numpy_copy() -> None:
        np.copyto(dst, src)

    on_gpu = device == mx.gpu
    sync = mx.synchronize if on_gpu else None
    batch = 20 if on_gpu else 1
    cases = [
        (FUSED, fused, 2 * n, sync),
        (UPSTREAM, upstream, 2 * n, sync),
        (FUSED_RES, fused_residual, 4 * n, sync),
        (UPSTREAM_RES, upstream_residual, 4 * n, sync),
    ]
    cases += torch_cases(x, r, w) if on_gpu else [(COPY, numpy_copy, 2 * n, None)]
    return [
        Row((rows, hidden), dtype_name, name, median_seconds(fn, repeats, sync, batch), moved)
        for name, fn, moved, sync in cases
    ]


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
