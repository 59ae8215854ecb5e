"""The models case's presets, options and tables, from known raw numbers.

Pure functions only: nothing here needs MLX, mlx-lm or NumPy.
"""

import argparse
import json
from pathlib import Path

import pytest
from mlxrtools.payloads import models_report
from mlxrtools.payloads.bench_options import BenchOptions, add_arguments, from_args
from mlxrtools.payloads.model_presets import DEFAULT_MODELS, PRESETS, REAL, SMALL_PRESETS
from mlxrtools.payloads.model_stats import FASTER, NO_DIFFERENCE, SLOWER, TOO_FEW


def parse(*argv: str, device: str = "cpu") -> BenchOptions:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(argv), device)


def preset(name: str, fused_prefill: list[float], fused_decode: list[float]) -> dict:
    """A preset whose stock runs at 100 tok/s throughout."""
    reps = [
        {"order": ["stock", "fused"], "stock": {"prefill": 100.0, "decode": 100.0},
         "fused": {"prefill": p, "decode": d}}
        for p, d in zip(fused_prefill, fused_decode, strict=True)
    ]  # fmt: skip
    return {"name": name, "model_type": "llama", "dtype": "bfloat16", "repetitions": reps}


def results(*presets: dict) -> dict:
    reps = len(presets[0]["repetitions"])
    return {
        "machine": "test machine",
        "prefill_tokens": 512,
        "decode_tokens": 32,
        "repetitions": reps,
        "seed": 0,
        "presets": list(presets),
    }


def rows(table: str, phase_heading: str) -> dict[str, list[str]]:
    """The rows of one phase's table, by preset."""
    block = table[table.index(phase_heading) :].split("\n\n")[0]
    return {
        cells[0]: cells
        for line in block.splitlines()[2:]
        for cells in [[c.strip() for c in line.split("|")[1:-1]]]
    }


FASTER_RUN = [100.0 + i for i in range(15)]  # ratios 1.00 .. 1.14
SLOWER_RUN = [90.0 + 0.1 * i for i in range(15)]
EVEN_RUN = [98.0, 99.0, 100.0, 101.0, 102.0] * 3


def test_the_tables_give_each_phase_its_ratio_interval_and_verdict() -> None:
    data = results(preset("a", FASTER_RUN, EVEN_RUN), preset("b", SLOWER_RUN, FASTER_RUN))
    table = models_report.markdown(data)
    prefill = rows(table, "| prefill of 512 tokens")
    decode = rows(table, "| 32 decode steps")
    assert prefill["a"][4] == "1.070 [1.030, 1.110]"
    assert prefill["a"][5] == "1.000–1.140"
    assert prefill["a"][6] == FASTER
    assert prefill["b"][6] == SLOWER
    assert decode["a"][6] == NO_DIFFERENCE
    assert decode["b"][6] == FASTER
    assert prefill["a"][2] == "100 (100–100)"  # stock: median (min–max)
    assert prefill["a"][3] == "107 (100–114)"
    assert "binomial order statistics" in table


def test_fewer_than_fifteen_repetitions_claim_nothing() -> None:
    table = models_report.markdown(results(preset("a", FASTER_RUN[:10], FASTER_RUN[:10])))
    assert rows(table, "| prefill of 512 tokens")["a"][6] == TOO_FEW


def test_the_chart_and_table_commands_read_the_json(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bench-models-cpu.json"
    path.write_text(json.dumps(results(preset("a", FASTER_RUN, EVEN_RUN))))
    models_report.main(["table", str(path)])
    assert "| a | bfloat16 |" in capsys.readouterr().out
    models_report.main(["chart", str(path), str(tmp_path / "out.png")])
    assert (tmp_path / "out.png").stat().st_size > 0


def test_the_real_presets_have_the_published_shapes() -> None:
    llama, qwen, gemma, olmo = (PRESETS[n].args for n in ("llama-3-8b", "qwen3-8b",
                                                          "gemma-3-4b", "olmo-2-7b"))  # fmt: skip
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["vocab_size"]) == (
        4096, 32, 128256,
    )  # fmt: skip
    assert (qwen["num_hidden_layers"], qwen["head_dim"], qwen["intermediate_size"]) == (
        36, 128, 12288,
    )  # fmt: skip
    assert (gemma["hidden_size"], gemma["head_dim"], gemma["vocab_size"]) == (2560, 256, 262208)
    assert (olmo["num_key_value_heads"], olmo["intermediate_size"]) == (32, 11008)
    assert all(p.bits == 4 for p in REAL + SMALL_PRESETS if p.name.endswith("-4bit"))
    # Every quantized matrix's input size is a multiple of the group size.
    for p in SMALL_PRESETS:
        assert p.args["hidden_size"] % 64 == 0 and p.args["intermediate_size"] % 64 == 0


def test_models_is_opt_in_and_its_defaults_follow_the_device() -> None:
    assert "models" not in parse().cases
    cpu = parse("--cases", "models").for_device()
    assert (cpu.models, cpu.prefill_tokens, cpu.decode_tokens) == (DEFAULT_MODELS["cpu"], 128, 32)
    gpu = parse("--cases", "models", device="gpu").for_device()
    assert (gpu.models, gpu.prefill_tokens, gpu.model_repeats) == (
        tuple(p.name for p in REAL), 512, 15,
    )  # fmt: skip
    options = parse("--cases", "models", "--models", "llama-small,qwen3-8b-4bit",
                    "--prefill-tokens", "64", "--decode-tokens", "8", "--model-repeats", "20",
                    "--seed", "3")  # fmt: skip
    assert options.models == ("llama-small", "qwen3-8b-4bit")
    assert (options.prefill_tokens, options.decode_tokens) == (64, 8)
    assert (options.model_repeats, options.seed) == (20, 3)
    assert BenchOptions.from_json(options.to_json()) == options
    filled = options.for_device()
    assert BenchOptions.from_json(filled.to_json()) == filled


@pytest.mark.parametrize(
    "argv", [("--models", "llama-70b"), ("--model-repeats", "0"), ("--cases", "model")]
)
def test_bad_model_options_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
