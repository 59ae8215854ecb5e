"""Times rmsnorm_fused against its baselines. Runs inside a venv with the wheel.

Cases: forward (rmsnorm_fused against mx.fast.rms_norm and against x + r then
mx.fast.rms_norm), backward (the gradients of the same, from mx.vjp), a
training step (mx.value_and_grad of a stack of pre-norm blocks, fused against
stock), decode (per-call cost of each op in a chain of dependent calls,
decode_mlx) and models (stock mlx-lm models against mlxr.fuse'd ones, tokens/s,
models_mlx). Every ratio compares cases measured in the same run on the same
machine; each time is a median after a warm-up. Shares of copy count the bytes
each case must move. On a GPU, PyTorch's baselines run in a process of their
own, where PyTorch is present.

Run as `python -m mlxrtools.payloads.benchmark OPTIONS_JSON --out-dir DIR`,
where OPTIONS_JSON is a BenchOptions (bench_options.py) as `mlxr.py bench`
wrote it. This module imports no MLX at load time, so that the tooling tests
can import it anywhere; the MLX cases live in bench_mlx.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import decode_report, models_report
from .bench_options import BenchOptions
from .bench_report import (
    COPY,
    FUSED,
    FUSED_RES,
    UPSTREAM,
    UPSTREAM_RES,
    BackwardRow,
    Row,
    TrainRow,
    backward_markdown,
    markdown,
    train_markdown,
)


def torch_records(options: BenchOptions | None) -> list[dict[str, Any]]:
    """PyTorch's cases on the same card, from a process of their own, so that
    neither framework's CUDA libraries, allocator or streams disturb the other's
    timings. None where no case is asked for, where PyTorch or its CUDA is
    missing, or MLXR_BENCH_TORCH=0."""
    if os.environ.get("MLXR_BENCH_TORCH") == "0" or options is None:
        return []
    module = "mlxrtools.payloads.torch_baselines"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--json", "--options", options.to_json()],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        print(f"PyTorch baselines skipped: {tail[0] if tail else proc.returncode}", flush=True)
        return []
    return json.loads(proc.stdout)


def torch_rows(records: list[dict[str, Any]]) -> tuple[list[Row], list[BackwardRow]]:
    """The runner's JSON records as forward rows and backward rows."""
    forward, backward = [], []
    for r in records:
        shape = (r["shape"][0], r["shape"][1])
        if r["kind"] == "backward":
            fields = (r["form"], r["case"], r["seconds"], r["bytes"], r["peak_bytes"])
            backward.append(BackwardRow(shape, r["dtype"], *fields))
        else:
            forward.append(Row(shape, r["dtype"], r["case"], r["seconds"], r["bytes"]))
    return forward, backward


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


def report(
    machine: str, forward: list[Row], backward: list[BackwardRow], train: list[TrainRow]
) -> str:
    """The tables of the cases that ran; the forward one, as before, names the machine."""
    parts = [markdown(forward, machine) if forward else f"Machine: {machine}\n"]
    if backward:
        parts.append(backward_markdown(backward))
    if train:
        parts.append(train_markdown(train))
    return "\n".join(parts)


def write_results(out_dir: Path, device: str, text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench-{device}.md").write_text(text)


def write_models(out_dir: Path, device: str, results: dict[str, Any]) -> None:
    """The models case's raw numbers as JSON, and its chart where matplotlib is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-models-{device}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    models_report.try_chart(results, stem.with_suffix(".png"))


def decode_text(options: BenchOptions, device: Any) -> str:
    from . import decode_mlx  # MLX only here, in the wheel's venv

    shapes, dtypes = options.decode_shapes, options.decode_dtypes
    rows = decode_mlx.decode_rows(shapes, dtypes, device, options.decode_calls, options.repeats)
    return decode_report.markdown(rows, options.decode_calls)


def models_results(options: BenchOptions, machine: str) -> dict[str, Any]:
    from . import models_mlx  # MLX, mlx-lm and mlxr only here, in the wheel's venv

    return models_mlx.bench_models(
        options.models or (),
        options.prefill_tokens or 0,
        options.decode_tokens,
        options.model_repeats,
        options.seed,
        machine,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("options", type=BenchOptions.from_json, help="the BenchOptions, as JSON")
    p.add_argument(
        "--out-dir",
        type=Path,
        help="write bench-<device>.md (and .png) here; with the models case, also "
        "bench-models-<device>.json and .png",
    )
    args = p.parse_args(argv)
    options: BenchOptions = args.options.for_device()
    if "models" in options.cases:
        # Each preset runs stock and fused in turns, twice the CUDA graphs of one mode:
        # with MLX's default cache of 400, Gemma-3-4B in 4 bits on an H200 raised
        # "Cache thrashing is happening" and aborted the run.
        os.environ.setdefault("MLX_CUDA_GRAPH_CACHE_SIZE", "4000")
    from . import bench_mlx  # MLX only here, in the wheel's venv

    device, machine = bench_mlx.setup(options.device, options.cache_limit_mb)
    run = set(options.cases)
    shapes, dtypes, repeats = options.shapes, options.dtypes, options.repeats
    forward = bench_mlx.forward_rows(shapes, dtypes, device, repeats) if "forward" in run else []
    backward = (
        bench_mlx.backward_rows(options.backward_shapes or (), dtypes, device, repeats)
        if "backward" in run
        else []
    )
    train = [bench_mlx.bench_train(options, device)] if "train" in run else []
    if options.device == "gpu":
        torch_forward, torch_backward = torch_rows(torch_records(options.torch_cases()))
        forward, backward = forward + torch_forward, backward + torch_backward
    text = report(machine, forward, backward, train)
    if "decode" in run:
        text += "\n" + decode_text(options, device)
    models = models_results(options, machine) if "models" in run else None
    if models is not None:
        text += "\n" + models_report.markdown(models)
    print(text)
    swept = bench_mlx.sweep(dtypes, device, repeats) if options.sweep else []
    if swept:
        print(markdown(swept, machine))
        text += "\n" + markdown(swept, machine)
    if args.out_dir:
        write_results(args.out_dir, options.device, text)
        if swept:
            chart(swept, machine, args.out_dir / f"bench-{options.device}.png")
        if models is not None:
            write_models(args.out_dir, options.device, models)


if __name__ == "__main__":
    main()
