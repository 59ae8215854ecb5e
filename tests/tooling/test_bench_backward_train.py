"""The backward and training-step tables and the bench's case options.

Pure functions only: nothing here needs MLX, NumPy or PyTorch.
"""

import argparse

import pytest
from mlxrtools.payloads.bench_options import BenchOptions, add_arguments, from_args
from mlxrtools.payloads.bench_report import (
    COPY,
    COPY_FORM,
    DEVICE_COPY,
    FUSED_RES_VJP,
    FUSED_VJP,
    PLAIN,
    RESIDUAL,
    TORCH_RES_VJP,
    TORCH_VJP,
    UNFUSED_RES_VJP,
    UPSTREAM_VJP,
    BackwardRow,
    TrainRow,
    backward_bytes,
    backward_markdown,
    calls_per_batch,
    peak_ratio,
    share_of_copy,
    speed_up,
    train_markdown,
)
from mlxrtools.payloads.benchmark import report, torch_rows

MiB = 1 << 20
N = 1_000_000  # bytes of one tensor


def cells(table: str, case: str) -> list[str]:
    """The cells of the table row whose case column (the fourth) is `case`."""
    return next(
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in table.splitlines()
        if line.startswith("| ") and line.split("|")[4].strip() == case
    )


def backward_rows() -> list[BackwardRow]:
    shape, dtype = (4096, 4096), "bfloat16"
    return [
        BackwardRow(shape, dtype, PLAIN, FUSED_VJP, 3e-3, backward_bytes(PLAIN, N), 100 * MiB),
        BackwardRow(shape, dtype, PLAIN, UPSTREAM_VJP, 6e-3, backward_bytes(PLAIN, N), 200 * MiB),
        BackwardRow(
            shape, dtype, RESIDUAL, FUSED_RES_VJP, 4e-3, backward_bytes(RESIDUAL, N), 150 * MiB
        ),
        BackwardRow(
            shape, dtype, RESIDUAL, UNFUSED_RES_VJP, 5e-3, backward_bytes(RESIDUAL, N), 300 * MiB
        ),
        # The copy and PyTorch's rows arrive last, from another process.
        BackwardRow(shape, dtype, COPY_FORM, DEVICE_COPY, 1e-3, backward_bytes(COPY_FORM, N), None),
        BackwardRow(shape, dtype, PLAIN, TORCH_VJP, 12e-3, backward_bytes(PLAIN, N), 400 * MiB),
        BackwardRow(
            shape, dtype, RESIDUAL, TORCH_RES_VJP, 2e-3, backward_bytes(RESIDUAL, N), 75 * MiB
        ),
    ]


def test_backward_bytes_count_what_each_form_must_move() -> None:
    assert backward_bytes(PLAIN, N) == 3 * N  # read x, g; write gx
    assert backward_bytes(RESIDUAL, N) == 4 * N  # read h, g, gh; write gx
    assert backward_bytes(COPY_FORM, N) == 2 * N  # read, write


def test_ratio_helpers() -> None:
    assert speed_up(6.0, 3.0) == 2.0
    assert share_of_copy(1.0, 4.0) == 0.25
    assert peak_ratio(100, 200) == 0.5
    assert peak_ratio(None, 200) is None
    assert peak_ratio(100, None) is None


def test_backward_shares_count_each_forms_bytes_against_the_copy() -> None:
    table = backward_markdown(backward_rows())
    # The copy moves 2 N in 1 ms: 2 GB/s. Plain moves 3 N in 3 ms: 1 GB/s.
    assert cells(table, FUSED_VJP)[5:7] == ["1.0", "50%"]
    # Residual moves 4 N in 4 ms: 1 GB/s, half the copy's rate.
    assert cells(table, FUSED_RES_VJP)[5:7] == ["1.0", "50%"]
    assert cells(table, DEVICE_COPY)[6:] == ["100%", "–", "–", "–"]


def test_backward_ratios_compare_ours_of_the_same_form_with_each_row() -> None:
    table = backward_markdown(backward_rows())
    assert cells(table, FUSED_VJP)[7:] == ["100", "–", "–"]
    assert cells(table, UPSTREAM_VJP)[7:] == ["200", "2.00×", "0.50×"]
    assert cells(table, TORCH_VJP)[7:] == ["400", "4.00×", "0.25×"]
    assert cells(table, UNFUSED_RES_VJP)[7:] == ["300", "1.25×", "0.50×"]
    # A baseline faster than ours shows a speed-up below 1.
    assert cells(table, TORCH_RES_VJP)[7:] == ["75", "0.50×", "2.00×"]


def test_backward_rows_are_grouped_plain_then_residual_then_copy() -> None:
    table = backward_markdown(backward_rows())
    order = [line.split("|")[4].strip() for line in table.splitlines() if line.startswith("| 4")]
    assert order == [
        FUSED_VJP,
        UPSTREAM_VJP,
        TORCH_VJP,
        FUSED_RES_VJP,
        UNFUSED_RES_VJP,
        TORCH_RES_VJP,
        DEVICE_COPY,
    ]


def test_backward_without_a_copy_or_ours_shows_dashes() -> None:
    row = BackwardRow((8, 8), "float32", PLAIN, UPSTREAM_VJP, 1e-3, 3 * N, None)
    assert cells(backward_markdown([row]), UPSTREAM_VJP)[6:] == ["–", "–", "–", "–"]


def test_backward_header_names_every_column() -> None:
    header = next(line for line in backward_markdown([]).splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "shape",
        "dtype",
        "form",
        "case",
        "time (µs)",
        "GB/s",
        "share of copy",
        "peak memory (MiB)",
        "ours' speed-up (this row's time / ours)",
        "ours' peak memory / this row's",
    ]


def test_train_row_ratio_is_stock_over_fused() -> None:
    row = TrainRow(4096, 4096, 8, "bfloat16", 0.010, 0.012, 300 * MiB, 400 * MiB)
    assert row.speed_up == pytest.approx(1.2)
    assert row.peak_ratio == 0.75
    line = train_markdown([row]).splitlines()[-1]
    assert [c.strip() for c in line.split("|")[1:-1]] == [
        "4096×4096",
        "8",
        "bfloat16",
        "10.00",
        "12.00",
        "1.20×",
        "300",
        "400",
        "0.75×",
    ]


def test_report_names_the_machine_without_a_forward_table() -> None:
    row = TrainRow(32, 4096, 8, "float32", 0.5, 0.5, MiB, MiB)
    text = report("test machine", [], [], [row])
    assert text.startswith("Machine: test machine\n")
    assert "| 32×4096 | 8 | float32 | 500.00 | 500.00 | 1.00× |" in text
    assert "| shape | dtype | case |" not in text


def test_a_gpu_batch_stays_within_its_memory_budget() -> None:
    assert calls_per_batch(6 * 512 * MiB, budget=16 << 30) == 5
    assert calls_per_batch(1, budget=16 << 30) == 20
    assert calls_per_batch(64 << 30, budget=16 << 30) == 1


def parse(*argv: str, device: str = "cpu") -> BenchOptions:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(argv), device)


def test_case_options_are_typed() -> None:
    options = parse("--cases", "backward,train", "--backward-shapes", "8x16,32x64")
    assert options.cases == ("backward", "train")
    assert options.backward_shapes == ((8, 16), (32, 64))
    assert options.shapes == ((4096, 4096), (8, 4096), (1, 4096))
    assert options.dtypes == ("float32", "bfloat16")


def test_the_defaults_are_the_options_defaults() -> None:
    assert parse() == BenchOptions()
    assert parse(device="gpu") == BenchOptions(device="gpu")


@pytest.mark.parametrize(
    "argv",
    [
        ("--cases", "forward,sideways"),
        ("--shapes", "4096"),
        ("--shapes", "0x4096"),
        ("--dtypes", "float64"),
        ("--train-blocks", "0"),
    ],
)
def test_bad_case_options_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_options_reach_the_payload_unchanged_through_json() -> None:
    options = parse("--cases", "train", "--train-tokens", "64", "--sweep", "--repeats", "3")
    assert BenchOptions.from_json(options.to_json()) == options
    filled = parse("--backward-shapes", "8x16").for_device()
    assert BenchOptions.from_json(filled.to_json()) == filled


def test_device_defaults_fill_only_what_was_not_given() -> None:
    cpu = parse().for_device()
    assert (cpu.backward_shapes, cpu.train_tokens, cpu.train_dtype) == (
        ((4096, 4096),),
        32,
        "float32",
    )
    gpu = parse("--train-tokens", "128", device="gpu").for_device()
    assert gpu.backward_shapes == ((16384, 8192), (32768, 4096), (4096, 4096))
    assert (gpu.train_tokens, gpu.train_dtype) == (128, "bfloat16")


def test_pytorch_runs_only_for_forward_and_backward() -> None:
    assert parse("--cases", "train", device="gpu").torch_cases() is None
    torch = parse("--cases", "backward,train", device="gpu").torch_cases()
    assert torch is not None and torch.cases == ("backward",)
    assert torch.backward_shapes == ((16384, 8192), (32768, 4096), (4096, 4096))


def test_pytorch_records_split_into_forward_and_backward_rows() -> None:
    records = [
        {"kind": "forward", "shape": [8, 16], "dtype": "float32", "case": "torch F.rms_norm",
         "seconds": 1e-3, "bytes": 10, "form": "", "peak_bytes": None},
        {"kind": "backward", "shape": [8, 16], "dtype": "float32", "case": TORCH_VJP,
         "seconds": 2e-3, "bytes": 30, "form": PLAIN, "peak_bytes": 5},
    ]  # fmt: skip
    forward, backward = torch_rows(records)
    assert [(r.shape, r.case, r.bytes_moved) for r in forward] == [
        ((8, 16), "torch F.rms_norm", 10)
    ]
    assert backward == [BackwardRow((8, 16), "float32", PLAIN, TORCH_VJP, 2e-3, 30, 5)]


def test_the_cpu_copy_is_the_reference_where_there_is_no_device_copy() -> None:
    rows = [
        BackwardRow((8, 8), "float32", PLAIN, FUSED_VJP, 1e-3, 3 * N, MiB),
        BackwardRow((8, 8), "float32", COPY_FORM, COPY, 1e-3, 2 * N, None),
    ]
    assert cells(backward_markdown(rows), FUSED_VJP)[6] == "150%"
