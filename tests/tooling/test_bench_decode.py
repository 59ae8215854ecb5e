"""The decode case's table and targets, and its options.

Pure functions only: nothing here needs MLX, NumPy or PyTorch.
"""

import argparse

from mlxrtools.payloads.bench_options import BenchOptions, add_arguments, from_args
from mlxrtools.payloads.decode_report import (
    ADD,
    OPS,
    PAIR,
    PLAIN,
    RESIDUAL,
    RMS_NORM,
    DecodeRow,
    markdown,
    target_cell,
)

US = 1e-6


def row(plain: float, residual: float) -> DecodeRow:
    per_call = {ADD: 3 * US, RMS_NORM: 10 * US, PLAIN: plain * US, PAIR: 14 * US}
    per_call[RESIDUAL] = residual * US
    build = {op: 0.5 * US for op in OPS}
    evaluate = {op: 2.25 * US for op in OPS}
    return DecodeRow((1, 4096), "bfloat16", per_call, build, evaluate)


def cells(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("| 1×4096"))
    return [cell.strip() for cell in line.split("|")[1:-1]]


def test_the_targets_are_met_at_or_below_their_bound() -> None:
    assert target_cell(row(10, 12), PLAIN, RMS_NORM, 1.00) == "1.00 (met)"
    assert target_cell(row(10, 12), RESIDUAL, RMS_NORM, 1.20) == "1.20 (met)"
    assert target_cell(row(10.5, 12.5), PLAIN, RMS_NORM, 1.00) == "1.05 (missed)"
    assert target_cell(row(10.5, 12.5), RESIDUAL, RMS_NORM, 1.20) == "1.25 (missed)"


def test_the_table_has_every_op_its_host_times_and_the_ratios() -> None:
    table = markdown([row(8, 13)], calls=64)
    assert "64 dependent calls" in table
    c = cells(table)
    assert c[:7] == ["1×4096", "bfloat16", "3.00", "10.00", "8.00", "14.00", "13.00"]
    assert c[7:12] == ["0.50"] * 5
    assert c[12:17] == ["2.25"] * 5
    assert c[17:] == ["0.80 (met)", "1.30 (missed)", "0.93"]
    header = next(line for line in table.splitlines() if line.startswith("| shape"))
    assert len(header.split("|")) == len(next(line for line in table.splitlines() if
                                              line.startswith("| 1×4096")).split("|"))  # fmt: skip


def parse(*argv: str, device: str = "cpu") -> BenchOptions:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(argv), device)


def test_decode_is_opt_in_and_its_options_are_typed() -> None:
    assert "decode" not in parse().cases
    options = parse("--cases", "decode", "--decode-shapes", "1x64,8x128", "--decode-calls", "16")
    assert options.cases == ("decode",)
    assert options.decode_shapes == ((1, 64), (8, 128))
    assert options.decode_calls == 16
    assert options.decode_dtypes == ("bfloat16",)
    assert BenchOptions().decode_shapes == (
        (1, 2048), (1, 4096), (1, 8192), (8, 2048), (8, 4096), (8, 8192),
    )  # fmt: skip
    assert BenchOptions.from_json(options.to_json()) == options
