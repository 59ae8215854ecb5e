"""The bench table: ratios and shares of copy come from cases of the same run."""

from mlxrtools.payloads.bench_options import BenchOptions
from mlxrtools.payloads.bench_report import (
    DEVICE_COPY,
    FUSED,
    FUSED_RES,
    UPSTREAM,
    UPSTREAM_RES,
    Row,
    markdown,
)
from mlxrtools.payloads.benchmark import torch_records


def line_of(table: str, case: str) -> list[str]:
    return next(
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in table.splitlines()
        if line.startswith("|") and line.split("|")[3].strip() == case
    )


def test_shares_and_speed_ups_use_the_device_copy_of_the_same_shape() -> None:
    n = 1_000_000
    rows = [
        Row((8, 4096), "bfloat16", FUSED, 2e-3, 2 * n),
        Row((8, 4096), "bfloat16", UPSTREAM, 4e-3, 2 * n),
        Row((8, 4096), "bfloat16", FUSED_RES, 4e-3, 4 * n),
        Row((8, 4096), "bfloat16", UPSTREAM_RES, 6e-3, 4 * n),
        # PyTorch's rows arrive after MLX's, from another process.
        Row((8, 4096), "bfloat16", DEVICE_COPY, 1e-3, 2 * n),
    ]
    table = markdown(rows, "test card")
    fused = line_of(table, FUSED)
    assert fused[5:] == ["50%", "2.00× vs mx.fast.rms_norm"]
    residual = line_of(table, FUSED_RES)
    assert residual[5:] == ["50%", "1.50× vs x + r, mx.fast.rms_norm"]
    assert line_of(table, DEVICE_COPY)[5] == "100%"


def test_the_forward_table_keeps_its_format() -> None:
    table = markdown([Row((4, 8), "float32", UPSTREAM, 1e-6, 2000)], "test machine")
    assert table.splitlines() == [
        "Machine: test machine",
        "",
        "| shape | dtype | case | time (µs) | GB/s | share of copy | speed-up vs baseline |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        "| 4×8 | float32 | mx.fast.rms_norm | 1.0 | 2.0 | – | 1.00× vs mx.fast.rms_norm |",
    ]


def test_pytorch_baselines_can_be_switched_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLXR_BENCH_TORCH", "0")
    options = BenchOptions(device="gpu", cases=("forward",), shapes=((1, 4096),))
    assert torch_records(options) == []
