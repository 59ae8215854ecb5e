"""The `models` case's tables and chart, from the JSON of its raw numbers.

Pure Python (matplotlib only inside `chart`, where it is importable), so that
the tooling tests read it and a machine without matplotlib can leave the chart
for later:

    PYTHONPATH=scripts python3 -m mlxrtools.payloads.models_report chart RESULTS.json OUT.png

The JSON (`bench-models-<device>.json`): the machine, the run's settings and,
per preset, every repetition's tokens/s of each mode, with the order the modes
ran in. Everything here is derived from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model_stats import MIN_REPETITIONS, RatioSummary, paired_ratios, summarize

STOCK, FUSED = "stock", "fused"
MODES = (STOCK, FUSED)
PHASES = ("prefill", "decode")
INTERVAL_METHOD = (
    "95% interval of the median ratio from binomial order statistics (distribution-free; "
    f"for {MIN_REPETITIONS} repetitions, the 4th and 12th smallest ratios)"
)


def tokens_per_second(preset: dict[str, Any], mode: str, phase: str) -> list[float]:
    return [rep[mode][phase] for rep in preset["repetitions"]]


def ratio_summary(preset: dict[str, Any], phase: str) -> RatioSummary:
    fused = tokens_per_second(preset, FUSED, phase)
    return summarize(paired_ratios(fused, tokens_per_second(preset, STOCK, phase)))


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def _interval(s: RatioSummary) -> str:
    if s.low is None or s.high is None:
        return f"{s.median:.3f} [none]"
    return f"{s.median:.3f} [{s.low:.3f}, {s.high:.3f}]"


def _verdict(preset: dict[str, Any], s: RatioSummary) -> str:
    """The verdict, or why it cannot stand: outputs that differ beyond rounding."""
    problems = preset.get("check", {}).get("problems", [])
    return f"{s.verdict}; check failed: {'; '.join(problems)}" if problems else s.verdict


def phase_markdown(results: dict[str, Any], phase: str) -> str:
    tokens = results[f"{phase}_tokens"]
    what = f"prefill of {tokens} tokens" if phase == "prefill" else f"{tokens} decode steps"
    lines = [
        f"| {what} | dtype | stock tok/s | fused tok/s | fused / stock [95% CI] "
        "| ratio min–max | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for preset in results["presets"]:
        s = ratio_summary(preset, phase)
        stock, fused = (tokens_per_second(preset, mode, phase) for mode in MODES)
        lines.append(
            f"| {preset['name']} | {preset['dtype']} | {_spread(stock)} | {_spread(fused)} "
            f"| {_interval(s)} | {s.minimum:.3f}–{s.maximum:.3f} | {_verdict(preset, s)} |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    """Both phases' tables, with how they were measured."""
    reps = results["repetitions"]
    head = (
        f"Models, stock mlx-lm against `mlxr.fuse` (same weights, random, at each preset's "
        f"shapes): {reps} repetitions, the two modes in shuffled order in each (seed "
        f"{results['seed']}), after a warm-up of each; tokens/s as median (min–max); the ratio "
        f"is paired within a repetition; {INTERVAL_METHOD}. Verdict: faster or slower only "
        f"where the interval excludes 1.\n"
    )
    return "\n".join([head, *(phase_markdown(results, phase) for phase in PHASES)])


def chart(results: dict[str, Any], path: Path) -> None:
    """Median ratio per preset with its interval as error bars, prefill and decode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p["name"] for p in results["presets"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(names)) * 2, 4.5), squeeze=False)
    for ax, phase in zip(axes[0], PHASES, strict=True):
        summaries = [ratio_summary(p, phase) for p in results["presets"]]
        medians = [s.median for s in summaries]
        below = [s.median - (s.low if s.low is not None else s.median) for s in summaries]
        above = [(s.high if s.high is not None else s.median) - s.median for s in summaries]
        ax.errorbar(range(len(names)), medians, yerr=[below, above], fmt="o", capsize=4)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("fused / stock tokens/s")
        ax.set_title(f"{phase} (median, 95% CI)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(results["machine"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def try_chart(results: dict[str, Any], path: Path) -> bool:
    """Draw the chart where matplotlib is importable; say how to draw it later elsewhere."""
    try:
        chart(results, path)
    except ImportError:
        print(
            f"matplotlib is missing: draw the chart later with `PYTHONPATH=scripts python3 -m "
            f"mlxrtools.payloads.models_report chart <the .json> {path.name}`",
            flush=True,
        )
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("chart", help="draw the ratios' chart (PNG) from a results JSON")
    c.add_argument("results", type=Path, help="bench-models-<device>.json")
    c.add_argument("out", type=Path, help="the PNG to write")
    t = sub.add_parser("table", help="print the Markdown tables of a results JSON")
    t.add_argument("results", type=Path, help="bench-models-<device>.json")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.command == "chart":
        chart(results, args.out)
    else:
        print(markdown(results))


if __name__ == "__main__":
    main()
