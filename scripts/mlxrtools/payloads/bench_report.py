"""Rows, ratios and Markdown tables of a bench run.

Pure Python, with no MLX, NumPy or PyTorch, so that the tooling tests import it
anywhere. Every ratio compares rows of the same run; every share of copy divides
a row's GB/s, counting the bytes that row must move, by the GB/s of a copy of
one tensor of the same shape and dtype (read once, written once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Shape = tuple[int, int]
# The epsilon of every case, ours and the baselines.
EPS = 1e-6

FUSED, UPSTREAM = "rmsnorm_fused", "mx.fast.rms_norm"
FUSED_RES, UPSTREAM_RES = "rmsnorm_fused(residual)", "x + r, mx.fast.rms_norm"
# The other forms of the op, each against the chain of ops it replaces.
FUSED_POST, UNFUSED_POST = "rmsnorm_fused(post_norm)", "r + mx.fast.rms_norm(x)"
FUSED_SANDWICH = "rmsnorm_fused(branch_weight)"
UNFUSED_SANDWICH = "r + rms_norm(x, wb), rms_norm(h, w)"
FUSED_GEMMA = "rmsnorm_fused(branch_weight, weight_offset=1)"
UNFUSED_GEMMA = "r + rms_norm(x, 1 + wb), rms_norm(h, 1 + w)"
COPY = "numpy copy of the same bytes"
DEVICE_COPY = "device-to-device copy of the same bytes"
TORCH, TORCH_COMPILE_RES = "torch F.rms_norm", "torch.compile(x + r, rms_norm)"
BASELINE = {
    FUSED: UPSTREAM,
    UPSTREAM: UPSTREAM,
    COPY: UPSTREAM,
    FUSED_RES: UPSTREAM_RES,
    UPSTREAM_RES: UPSTREAM_RES,
    DEVICE_COPY: UPSTREAM,
    TORCH: UPSTREAM,
    TORCH_COMPILE_RES: UPSTREAM_RES,
    FUSED_POST: UNFUSED_POST,
    UNFUSED_POST: UNFUSED_POST,
    FUSED_SANDWICH: UNFUSED_SANDWICH,
    UNFUSED_SANDWICH: UNFUSED_SANDWICH,
    FUSED_GEMMA: UNFUSED_GEMMA,
    UNFUSED_GEMMA: UNFUSED_GEMMA,
}

# Backward cases: the gradients of x (and r) and of the weight, given cotangents.
PLAIN, RESIDUAL, COPY_FORM = "plain", "residual", "copy"
FORMS = (PLAIN, RESIDUAL, COPY_FORM)
FUSED_VJP, UPSTREAM_VJP = "rmsnorm_fused vjp", "mx.fast.rms_norm vjp"
FUSED_RES_VJP, UNFUSED_RES_VJP = "rmsnorm_fused(residual) vjp", "x + r, mx.fast.rms_norm vjp"
TORCH_VJP, TORCH_RES_VJP = "torch F.rms_norm autograd", "torch x + r, F.rms_norm autograd"
OURS = {PLAIN: FUSED_VJP, RESIDUAL: FUSED_RES_VJP}


def forward_bytes(residual: bool, n: int) -> int:
    """Read x and write y; the residual form also reads r and writes h."""
    return 4 * n if residual else 2 * n


def backward_bytes(form: str, n: int) -> int:
    """Bytes a backward must move, for tensors of n bytes; weight-sized terms
    are left out. Plain: read x and g, write gx. Residual: read h, g and the
    cotangent of h, write gx (which is also the gradient of r). Copy: read and
    write one tensor."""
    return {PLAIN: 3 * n, RESIDUAL: 4 * n, COPY_FORM: 2 * n}[form]


def gbps(bytes_moved: int, seconds: float) -> float:
    return bytes_moved / seconds / 1e9


def share_of_copy(row_gbps: float, copy_gbps: float) -> float:
    """The fraction of the copy's bandwidth a row reaches."""
    return row_gbps / copy_gbps


def speed_up(baseline_seconds: float, seconds: float) -> float:
    """How many times faster a case is than its baseline (above 1: faster)."""
    return baseline_seconds / seconds


def peak_ratio(ours_bytes: int | None, other_bytes: int | None) -> float | None:
    """Our peak memory over another case's; None where either was not measured."""
    if not ours_bytes or not other_bytes:
        return None
    return ours_bytes / other_bytes


def calls_per_batch(bytes_per_call: int, budget: int = 16 << 30, most: int = 20) -> int:
    """How many calls a queued GPU batch may hold alive at once, within a
    memory budget (16 GiB by default): at least one, at most `most`."""
    return max(1, min(most, budget // max(bytes_per_call, 1)))


def mib(n: int | None) -> str:
    return "–" if n is None else f"{n / (1 << 20):,.0f}"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.0%}"


class _Rate:
    """A timed case's rate: the bytes it must move over its time."""

    seconds: float
    bytes_moved: int

    @property
    def gbps(self) -> float:
        return gbps(self.bytes_moved, self.seconds)


@dataclass
class Row(_Rate):
    """A forward case."""

    shape: Shape
    dtype: str
    case: str
    seconds: float
    bytes_moved: int


@dataclass(frozen=True)
class BackwardRow(_Rate):
    """A backward case: `form` is plain, residual, or copy (the reference)."""

    shape: Shape
    dtype: str
    form: str
    case: str
    seconds: float
    bytes_moved: int
    peak_bytes: int | None


@dataclass(frozen=True)
class TrainRow:
    """One training step of the same stack, fused and stock, with the same weights."""

    tokens: int
    hidden: int
    blocks: int
    dtype: str
    fused_seconds: float
    stock_seconds: float
    fused_peak: int
    stock_peak: int

    @property
    def speed_up(self) -> float:
        """Stock time over fused time: above 1, the fused stack is faster."""
        return speed_up(self.stock_seconds, self.fused_seconds)

    @property
    def peak_ratio(self) -> float | None:
        """Fused peak memory over stock: below 1, the fused stack needs less."""
        return peak_ratio(self.fused_peak, self.stock_peak)


def markdown(rows: list[Row], machine: str) -> str:
    """The forward table."""
    lines = [
        f"Machine: {machine}",
        "",
        "| shape | dtype | case | time (µs) | GB/s | share of copy | speed-up vs baseline |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    by_key: dict[tuple[Shape, str], dict[str, Row]] = {}
    for row in rows:
        by_key.setdefault((row.shape, row.dtype), {})[row.case] = row
    for (shape, dtype), cases in by_key.items():
        copy = cases.get(DEVICE_COPY) or cases.get(COPY)
        for row in cases.values():
            base = cases[BASELINE[row.case]]
            share = percent(share_of_copy(row.gbps, copy.gbps)) if copy else "–"
            up = speed_up(base.seconds, row.seconds)
            lines.append(
                f"| {shape[0]}×{shape[1]} | {dtype} | {row.case} | {row.seconds * 1e6:,.1f} "
                f"| {row.gbps:,.1f} | {share} | {up:.2f}× vs {base.case} |"
            )
    return "\n".join(lines) + "\n"


BACKWARD_HEADER = [
    "Backward: time to evaluate the gradients of x (and r) and of the weight, given the "
    "cotangents, with the forward's outputs already evaluated. Bytes moved: plain reads x "
    "and g and writes gx (3 tensors); residual reads h, g and gh and writes gx (4). Peak "
    "memory: of one backward call, counting the inputs, the forward's outputs and the "
    "cotangents that it starts from. The last two columns compare ours (the rmsnorm_fused "
    "row of the same form) with each row.",
    "",
    "| shape | dtype | form | case | time (µs) | GB/s | share of copy | peak memory (MiB) "
    "| ours' speed-up (this row's time / ours) | ours' peak memory / this row's |",
    "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def grouped(rows: Iterable[BackwardRow]) -> dict[tuple[Shape, str], list[BackwardRow]]:
    """Rows by shape and dtype, each group in the order plain, residual, copy,
    and within a form in the order they arrived."""
    groups: dict[tuple[Shape, str], list[BackwardRow]] = {}
    for row in rows:
        groups.setdefault((row.shape, row.dtype), []).append(row)
    return {key: sorted(group, key=lambda r: FORMS.index(r.form)) for key, group in groups.items()}


def backward_line(row: BackwardRow, ours: BackwardRow | None, copy: BackwardRow | None) -> str:
    share = share_of_copy(row.gbps, copy.gbps) if copy else None
    compared = ours is not None and row is not ours
    up = speed_up(row.seconds, ours.seconds) if compared else None
    peak = peak_ratio(ours.peak_bytes, row.peak_bytes) if compared else None
    return (
        f"| {row.shape[0]}×{row.shape[1]} | {row.dtype} | {row.form} | {row.case} "
        f"| {row.seconds * 1e6:,.1f} | {row.gbps:,.1f} | {percent(share)} | {mib(row.peak_bytes)} "
        f"| {times(up)} | {times(peak)} |"
    )


def backward_markdown(rows: list[BackwardRow]) -> str:
    """The backward table: per shape and dtype, each form's rows against ours."""
    lines = list(BACKWARD_HEADER)
    for group in grouped(rows).values():
        ours = {r.form: r for r in group if r.case == OURS.get(r.form)}
        copy = next((r for r in group if r.form == COPY_FORM), None)
        lines += [backward_line(r, ours.get(r.form), copy) for r in group]
    return "\n".join(lines) + "\n"


TRAIN_HEADER = [
    "Training step: forward and backward (mx.value_and_grad of a scalar loss) of a stack of "
    "pre-norm blocks (RMS norm, Linear(hidden, hidden), residual add) and a final norm. Fused "
    "carries the residual through rmsnorm_fused; stock adds x + r and calls "
    "mx.fast.rms_norm; both have the same weights. Times are medians of steps of the two "
    "stacks timed in turns. Peak memory: of one step, counting the weights and the input.",
    "",
    "| tokens × hidden | blocks | dtype | fused step (ms) | stock step (ms) "
    "| speed-up (stock / fused time) | fused peak (MiB) | stock peak (MiB) "
    "| fused / stock peak |",
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def train_line(row: TrainRow) -> str:
    return (
        f"| {row.tokens}×{row.hidden} | {row.blocks} | {row.dtype} "
        f"| {row.fused_seconds * 1e3:,.2f} | {row.stock_seconds * 1e3:,.2f} "
        f"| {times(row.speed_up)} | {mib(row.fused_peak)} | {mib(row.stock_peak)} "
        f"| {times(row.peak_ratio)} |"
    )


def train_markdown(rows: list[TrainRow]) -> str:
    return "\n".join([*TRAIN_HEADER, *(train_line(r) for r in rows)]) + "\n"
