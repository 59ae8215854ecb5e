"""The bench's options: chosen on mlxr.py's command line, carried to the payload once, as JSON.

Pure Python: mlxr.py reads them outside the wheel's venv, and the payload and
its PyTorch runner read them inside.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

from .bench_report import Shape
from .model_presets import DEFAULT_MODELS, PRESETS

# Every case; the decode and models cases run only when asked for.
CASES = ("forward", "backward", "train", "decode", "models")
DEFAULT_CASES = ("forward", "backward", "train")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
SHAPES = "4096x4096,8x4096,1x4096"
BACKWARD_SHAPES = {"gpu": "16384x8192,32768x4096,4096x4096", "cpu": "4096x4096"}
TRAIN_TOKENS = {"gpu": 4096, "cpu": 32}
TRAIN_DTYPE = {"gpu": "bfloat16", "cpu": "float32"}
# The models case's prompt: mlx-lm's default prefill step on a GPU; shorter on the
# CPU, where a small 4-bit model prefills only a few hundred tokens a second.
PREFILL_TOKENS = {"gpu": 512, "cpu": 128}
DECODE_SHAPES = "1x2048,1x4096,1x8192,8x2048,8x4096,8x8192"
# The cases PyTorch has baselines for.
TORCH_CASES = ("forward", "backward")


def names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma-separated list, each name one of `allowed`."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(bad) or 'none given'}; choose from {', '.join(allowed)}"
        )
    return items


def case_list(text: str) -> tuple[str, ...]:
    return names(text, CASES, "unknown case")


def dtype_list(text: str) -> tuple[str, ...]:
    return names(text, DTYPE_NAMES, "unknown dtype")


def model_list(text: str) -> tuple[str, ...]:
    return names(text, tuple(PRESETS), "unknown model preset")


def shape(text: str) -> Shape:
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"not a ROWSxHIDDEN shape: {text!r}")
    return int(parts[0]), int(parts[1])


def shape_list(text: str) -> tuple[Shape, ...]:
    return tuple(shape(spec) for spec in text.split(","))


def format_shapes(shapes: Sequence[Shape]) -> str:
    return ",".join(f"{rows}x{hidden}" for rows, hidden in shapes)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


@dataclass(frozen=True)
class BenchOptions:
    """Which cases to time, at which sizes, on which device. None: the device's default."""

    device: str = "cpu"
    repeats: int = 30
    cases: tuple[str, ...] = DEFAULT_CASES
    shapes: tuple[Shape, ...] = shape_list(SHAPES)
    backward_shapes: tuple[Shape, ...] | None = None
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    train_tokens: int | None = None
    train_hidden: int = 4096
    train_blocks: int = 8
    train_repeats: int = 10
    train_dtype: str | None = None
    cache_limit_mb: int | None = None
    sweep: bool = False
    decode_shapes: tuple[Shape, ...] = shape_list(DECODE_SHAPES)
    decode_dtypes: tuple[str, ...] = ("bfloat16",)
    decode_calls: int = 64
    models: tuple[str, ...] | None = None
    prefill_tokens: int | None = None
    decode_tokens: int = 32
    model_repeats: int = 15
    seed: int = 0

    def for_device(self) -> BenchOptions:
        """The options with every device default filled in."""
        return replace(
            self,
            backward_shapes=self.backward_shapes or shape_list(BACKWARD_SHAPES[self.device]),
            train_tokens=self.train_tokens or TRAIN_TOKENS[self.device],
            train_dtype=self.train_dtype or TRAIN_DTYPE[self.device],
            models=self.models or DEFAULT_MODELS[self.device],
            prefill_tokens=self.prefill_tokens or PREFILL_TOKENS[self.device],
        )

    def torch_cases(self) -> BenchOptions | None:
        """The forward and backward cases asked for, for PyTorch; None where neither was."""
        cases = tuple(c for c in self.cases if c in TORCH_CASES)
        return replace(self.for_device(), cases=cases) if cases else None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchOptions:
        data = json.loads(text)
        for key in ("shapes", "backward_shapes", "decode_shapes"):
            if data[key] is not None:
                data[key] = tuple((rows, hidden) for rows, hidden in data[key])
        for key in ("cases", "dtypes", "decode_dtypes", "models"):
            if data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)


_REPEATS_HELP = (
    "forward, backward and decode: timed calls (batches on a GPU; decode: chains) per case "
    "(default: 30)"
)
# The training step's whole-number options: flag, default (None: the device's), help.
_TRAIN_COUNTS = (
    (
        "--train-tokens",
        None,
        f"train: rows of the input (default: {TRAIN_TOKENS['gpu']} on the GPU, "
        f"{TRAIN_TOKENS['cpu']} on the CPU)",
    ),
    ("--train-hidden", 4096, "train: hidden size (default: 4096)"),
    ("--train-blocks", 8, "train: pre-norm blocks (default: 8)"),
    (
        "--train-repeats",
        10,
        "train: timed steps (batches of 4 on a GPU) of each stack, in turns (default: 10)",
    ),
)
# The comma-separated options: flag, how to read it, default, metavar and help.
_LISTS = (
    (
        "--cases",
        case_list,
        DEFAULT_CASES,
        "LIST",
        f"comma-separated cases to run, of {','.join(CASES)} (default: "
        f"{','.join(DEFAULT_CASES)}); decode: per-call cost of each op in a chain of dependent "
        "calls at decode shapes; models: prefill and decode tokens/s of stock mlx-lm models "
        "against mlxr.fuse'd ones (needs mlx-lm)",
    ),
    (
        "--shapes",
        shape_list,
        shape_list(SHAPES),
        "SHAPES",
        f"forward: comma-separated ROWSxHIDDEN shapes (default: {SHAPES})",
    ),
    (
        "--backward-shapes",
        shape_list,
        None,
        "SHAPES",
        "backward: comma-separated ROWSxHIDDEN shapes (default: "
        f"{BACKWARD_SHAPES['gpu']} on the GPU, {BACKWARD_SHAPES['cpu']} on the CPU)",
    ),
    (
        "--dtypes",
        dtype_list,
        dtype_list("float32,bfloat16"),
        "LIST",
        "forward and backward: comma-separated dtypes (default: float32,bfloat16)",
    ),
    (
        "--decode-shapes",
        shape_list,
        shape_list(DECODE_SHAPES),
        "SHAPES",
        f"decode: comma-separated ROWSxHIDDEN shapes (default: {DECODE_SHAPES})",
    ),
    (
        "--decode-dtypes",
        dtype_list,
        ("bfloat16",),
        "LIST",
        "decode: comma-separated dtypes (default: bfloat16)",
    ),
    (
        "--models",
        model_list,
        None,
        "LIST",
        "models: comma-separated presets: "
        + ", ".join(name for name in PRESETS if not name.endswith("-4bit"))
        + ", each also as NAME-4bit, the same model after nn.quantize(group_size=64, "
        "bits=4) (default: the first four and their -4bit twins on the GPU, the small ones "
        "on the CPU)",
    ),
)
# The decode and models cases' whole-number options: flag, default, help.
_CASE_COUNTS = (
    (
        "--decode-calls",
        64,
        "decode: dependent calls in each timed chain (default: 64); the repeats are --repeats",
    ),
    (
        "--prefill-tokens",
        None,
        f"models: prompt tokens of each prefill (default: {PREFILL_TOKENS['gpu']} on the GPU, "
        f"{PREFILL_TOKENS['cpu']} on the CPU)",
    ),
    ("--decode-tokens", 32, "models: greedy decode steps after each prefill (default: 32)"),
    (
        "--model-repeats",
        15,
        "models: repetitions, each running stock and fused in shuffled order (default: 15; "
        "fewer than 15 claim nothing)",
    ),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose and size the cases, as `mlxr.py bench` takes them."""
    p.add_argument("--repeats", type=positive, default=30, metavar="N", help=_REPEATS_HELP)
    for flag, kind, default, metavar, text in _LISTS:
        p.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    for flag, default, text in (*_TRAIN_COUNTS, *_CASE_COUNTS):
        p.add_argument(flag, type=positive, default=default, metavar="N", help=text)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="models: the seed of the random weights, prompts and the modes' order (default: 0)",
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


def from_args(args: argparse.Namespace, device: str) -> BenchOptions:
    """The options add_arguments parsed, for `device`."""
    given = {f.name: getattr(args, f.name) for f in fields(BenchOptions) if f.name != "device"}
    return BenchOptions(device=device, **given)
