"""Times rmsnorm_fused against its baselines. Runs inside a venv with the wheel.

Cases: forward (rmsnorm_fused against mx.fast.rms_norm and against x + r then
mx.fast.rms_norm), backward (the gradients of the same, from mx.vjp) and a
training step (mx.value_and_grad of a stack of pre-norm blocks, fused against
stock). Every ratio compares cases measured in the same run on the same
machine; each time is a median after a warm-up. Shares of copy count the bytes
each case must move. On a GPU, PyTorch's baselines run in a process of their
own, where PyTorch is present.

This module imports no MLX at load time, so that its options and the PyTorch
runner can be used anywhere; the MLX cases live in bench_mlx.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bench_report import (
    COPY,
    FUSED,
    FUSED_RES,
    UPSTREAM,
    UPSTREAM_RES,
    BackwardRow,
    Row,
    Shape,
    TrainRow,
    backward_markdown,
    markdown,
    train_markdown,
)

CASES = ("forward", "backward", "train")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
SHAPES = "4096x4096,8x4096,1x4096"
BACKWARD_SHAPES = {"gpu": "16384x8192,32768x4096,4096x4096", "cpu": "4096x4096"}
TRAIN_TOKENS = {"gpu": 4096, "cpu": 32}
TRAIN_DTYPE = {"gpu": "bfloat16", "cpu": "float32"}


def names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated list, each name one of `allowed`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(bad) or 'none given'}; choose from {', '.join(allowed)}"
        )
    return items


def case_list(text: str) -> list[str]:
    return names(text, CASES, "unknown case")


def dtype_list(text: str) -> list[str]:
    return names(text, DTYPE_NAMES, "unknown dtype")


def shape(text: str) -> Shape:
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"not a ROWSxHIDDEN shape: {text!r}")
    return int(parts[0]), int(parts[1])


def shape_list(text: str) -> list[Shape]:
    return [shape(spec) for spec in text.split(",")]


def format_shapes(shapes: Sequence[Shape]) -> str:
    return ",".join(f"{rows}x{hidden}" for rows, hidden in shapes)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def add_case_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and size the cases; `mlxr.py bench` passes them on."""
    p.add_argument(
        "--repeats",
        type=positive,
        default=30,
        metavar="N",
        help="timed calls (batches on a GPU) per case (default: 30)",
    )
    p.add_argument(
        "--cases",
        type=case_list,
        default=list(CASES),
        metavar="LIST",
        help=f"comma-separated cases to run, of {','.join(CASES)} (default: all)",
    )
    p.add_argument(
        "--shapes",
        type=shape_list,
        default=shape_list(SHAPES),
        metavar="SHAPES",
        help=f"forward: comma-separated ROWSxHIDDEN shapes (default: {SHAPES})",
    )
    p.add_argument(
        "--backward-shapes",
        type=shape_list,
        default=None,
        metavar="SHAPES",
        help="backward: comma-separated ROWSxHIDDEN shapes (default: "
        f"{BACKWARD_SHAPES['gpu']} on the GPU, {BACKWARD_SHAPES['cpu']} on the CPU)",
    )
    p.add_argument(
        "--dtypes",
        type=dtype_list,
        default=dtype_list("float32,bfloat16"),
        metavar="LIST",
        help="forward and backward: comma-separated dtypes (default: float32,bfloat16)",
    )
    p.add_argument(
        "--train-tokens",
        type=positive,
        default=None,
        metavar="N",
        help="train: rows of the input (default: "
        f"{TRAIN_TOKENS['gpu']} on the GPU, {TRAIN_TOKENS['cpu']} on the CPU)",
    )
    p.add_argument(
        "--train-hidden",
        type=positive,
        default=4096,
        metavar="N",
        help="train: hidden size (default: 4096)",
    )
    p.add_argument(
        "--train-blocks",
        type=positive,
        default=8,
        metavar="N",
        help="train: pre-norm blocks (default: 8)",
    )
    p.add_argument(
        "--train-repeats",
        type=positive,
        default=10,
        metavar="N",
        help="train: timed steps (batches of 4 on a GPU) of each stack, in turns (default: 10)",
    )
    p.add_argument(
        "--train-dtype",
        choices=DTYPE_NAMES,
        default=None,
        help=f"train: dtype (default: {TRAIN_DTYPE['gpu']} on the GPU, "
        f"{TRAIN_DTYPE['cpu']} on the CPU)",
    )
    p.add_argument(
        "--cache-limit-mb",
        type=int,
        default=None,
        metavar="MB",
        help="set MLX's buffer cache limit; by default outputs over 32 MB are fresh "
        "allocations that page-fault, in every case alike",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also sweep hidden sizes and chart forward GB/s against hidden size (PNG)",
    )


def case_argv(args: argparse.Namespace) -> list[str]:
    """The parsed case options as arguments again, to hand on to the payload."""
    argv = [
        "--repeats", str(args.repeats),
        "--cases", ",".join(args.cases),
        "--shapes", format_shapes(args.shapes),
        "--dtypes", ",".join(args.dtypes),
        "--train-hidden", str(args.train_hidden),
        "--train-blocks", str(args.train_blocks),
        "--train-repeats", str(args.train_repeats),
    ]  # fmt: skip
    optional = {
        "--backward-shapes": args.backward_shapes and format_shapes(args.backward_shapes),
        "--train-tokens": args.train_tokens,
        "--train-dtype": args.train_dtype,
        "--cache-limit-mb": args.cache_limit_mb,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--sweep"] if args.sweep else [])


def resolve_device_defaults(args: argparse.Namespace, device: str) -> None:
    """Fill in the options whose default depends on the device."""
    if args.backward_shapes is None:
        args.backward_shapes = shape_list(BACKWARD_SHAPES[device])
    if args.train_tokens is None:
        args.train_tokens = TRAIN_TOKENS[device]
    if args.train_dtype is None:
        args.train_dtype = TRAIN_DTYPE[device]


def torch_argv(args: argparse.Namespace) -> list[str]:
    """The PyTorch runner's arguments for the forward and backward cases asked
    for; none where neither was."""
    cases = [c for c in args.cases if c in ("forward", "backward")]
    if not cases:
        return []
    return [
        "--cases", ",".join(cases),
        "--shapes", format_shapes(args.shapes),
        "--backward-shapes", format_shapes(args.backward_shapes),
        "--dtypes", ",".join(args.dtypes),
        "--repeats", str(args.repeats),
    ]  # fmt: skip


def torch_records(argv: list[str]) -> list[dict[str, Any]]:
    """PyTorch's cases on the same card, from a process of their own, so that
    neither framework's CUDA libraries, allocator or streams disturb the other's
    timings. None where PyTorch or its CUDA is missing, or MLXR_BENCH_TORCH=0."""
    if os.environ.get("MLXR_BENCH_TORCH") == "0" or not argv:
        return []
    cmd = [sys.executable, "-m", "mlxrtools.payloads.torch_baselines", "--json", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
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


def train_spec(args: argparse.Namespace) -> tuple[int, int, int, str]:
    """Tokens, hidden size, blocks and dtype of the training step."""
    return args.train_tokens, args.train_hidden, args.train_blocks, args.train_dtype


def write_results(out_dir: Path, device: str, text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench-{device}.md").write_text(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    add_case_options(p)
    p.add_argument("--out-dir", type=Path, help="write bench-<device>.md (and .png) here")
    args = p.parse_args(argv)
    resolve_device_defaults(args, args.device)
    return args


def main() -> None:
    args = parse_args()
    from . import bench_mlx  # MLX only here, in the wheel's venv

    device, machine = bench_mlx.setup(args.device, args.cache_limit_mb)
    run = set(args.cases)
    forward = (
        bench_mlx.forward_rows(args.shapes, args.dtypes, device, args.repeats)
        if "forward" in run
        else []
    )
    backward = (
        bench_mlx.backward_rows(args.backward_shapes, args.dtypes, device, args.repeats)
        if "backward" in run
        else []
    )
    train = (
        [bench_mlx.bench_train(*train_spec(args), device, args.train_repeats)]
        if "train" in run
        else []
    )
    if args.device == "gpu":
        torch_forward, torch_backward = torch_rows(torch_records(torch_argv(args)))
        forward, backward = forward + torch_forward, backward + torch_backward
    text = report(machine, forward, backward, train)
    print(text)
    swept = bench_mlx.sweep(args.dtypes, device, args.repeats) if args.sweep else []
    if swept:
        print(markdown(swept, machine))
        text += "\n" + markdown(swept, machine)
    if args.out_dir:
        write_results(args.out_dir, args.device, text)
        if swept:
            chart(swept, machine, args.out_dir / f"bench-{args.device}.png")


if __name__ == "__main__":
    main()
