"""The MLX side of the `models` case: stock mlx-lm models against `mlxr.fuse`d ones.

Imported only by the payload, inside a venv that has the wheel, mlx-lm and
mlxr. One model per preset, with random weights: the two modes are the same
module tree, whose inner model's class is switched between mlx-lm's and the
fused subclass that `mlxr.fuse` makes of it, so that both run the same weights
and an 8B model is held once.

Each repetition runs both modes in shuffled order. A run mirrors mlx-lm's
`generate_step`: prefill P - 1 tokens into a fresh prompt cache (evaluating
only the cache), then the last prompt token gives the first greedy token
(prefill time ends when it is evaluated); then D greedy decode steps, each
queued with async_eval before the token of the step before is read.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

import mlxr

from .model_presets import GROUP_SIZE, PRESETS, Preset
from .models_report import FUSED, MODES, PHASES, STOCK, ratio_summary

# Stock and fused logits differ by rounding only: the fused op adds and
# normalizes in float32 where the stock chain rounds the sum to bfloat16 first.
# Measured on the small presets: 0 to 6% (relative L2) in bfloat16 and 4-bit,
# while in float32 the two agree to 1e-5. Deeper models may amplify rounding,
# hence the margin; a lost norm or residual moves the logits by far more.
RELATIVE_TOLERANCE = 0.2
# Where the greedy tokens differ, a near tie: stock rates both within this many
# standard deviations of its logits.
LOGIT_TOLERANCE = 0.25
CHECK_TOKENS = 64

Say = Callable[[str], None]


def build(preset: Preset) -> nn.Module:
    """The preset's model with random weights in bfloat16, quantized if it asks, evaluated."""
    module = importlib.import_module(f"mlx_lm.models.{preset.model_type}")
    model = module.Model(module.ModelArgs.from_dict(preset.model_args()))
    if preset.args.get("tie_word_embeddings") and "lm_head" in model:
        # As mlx-lm's sanitize does for a checkpoint without lm_head (Gemma 3).
        model.pop("lm_head")
        model.tie_word_embeddings = True
    model.set_dtype(mx.bfloat16)
    if preset.bits:
        nn.quantize(model, group_size=GROUP_SIZE, bits=preset.bits)
    mx.eval(model.parameters())
    return model


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch the model between stock mlx-lm and mlxr's fused forward, in place.
    `fuse` swaps the inner model's class for a subclass of it; stock swaps it back."""
    if mode == FUSED:
        mlxr.fuse(model)
    elif mlxr.is_fused(model):
        inner = model.model
        inner.__class__ = type(inner).__bases__[0]
    if mlxr.is_fused(model) != (mode == FUSED):
        raise RuntimeError(f"could not switch the model to {mode}")


def greedy_step(model: nn.Module, cache: list[Any], tokens: mx.array) -> mx.array:
    """One step of generate_step with the greedy sampler: the next token."""
    logits = model(tokens[None], cache=cache)[:, -1, :]
    logprobs = logits - mx.logsumexp(logits, keepdims=True)
    return mx.argmax(logprobs, axis=-1)


def run(model: nn.Module, prompt: mx.array, decode_tokens: int) -> tuple[float, float]:
    """Seconds of the prefill (to the first token) and of the decode steps."""
    cache = make_prompt_cache(model)
    start = time.perf_counter()
    model(prompt[None, :-1], cache=cache)
    mx.eval([c.state for c in cache])
    y = greedy_step(model, cache, prompt[-1:])
    mx.eval(y)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(decode_tokens):
        next_y = greedy_step(model, cache, y)
        mx.async_eval(next_y)
        y.item()
        y = next_y
    y.item()
    return prefill, time.perf_counter() - start


def last_logits(model: nn.Module, prompt: mx.array) -> mx.array:
    """Float32 logits of the prompt's last position and of one decode step after
    it, fed the prompt's first token (the same in both modes)."""
    cache = make_prompt_cache(model)
    first = model(prompt[None], cache=cache)[0, -1]
    second = model(prompt[None, :1], cache=cache)[0, -1]
    out = mx.stack([first, second]).astype(mx.float32)
    mx.eval(out)
    return out


def check_same(model: nn.Module, prompt: mx.array, preset: Preset) -> dict[str, Any]:
    """Stock and fused give the same logits within the tolerance and the same
    greedy tokens (or a near tie): a bench of different work would mislead."""
    logits = {}
    for mode in MODES:
        set_mode(model, mode)
        logits[mode] = last_logits(model, prompt)
    stock, fused = logits[STOCK], logits[FUSED]
    error = (mx.linalg.norm(stock - fused) / mx.linalg.norm(stock)).item()
    tolerance = LOGIT_TOLERANCE * mx.std(stock).item()
    stock_tokens = mx.argmax(stock, axis=-1).tolist()
    fused_tokens = mx.argmax(fused, axis=-1).tolist()
    problems = []
    for row, (s, f) in enumerate(zip(stock_tokens, fused_tokens, strict=True)):
        # A different argmax is a near tie when stock rates both tokens within the tolerance.
        gap = stock[row, s].item() - stock[row, f].item()
        if s != f and gap > tolerance:
            problems.append(
                f"greedy tokens differ ({s} against {f}, stock logit gap {gap:.4g} > "
                f"tolerance {tolerance:.4g})"
            )
    if error > RELATIVE_TOLERANCE:
        problems.append(f"logits differ by {error:.3g} (relative L2) > {RELATIVE_TOLERANCE}")
    # Reported with the preset's row rather than raised: one preset's doubt must not
    # cost the other presets' timings of a GPU session.
    return {
        "problems": problems,
        "relative_l2_error": error,
        "stock_tokens": stock_tokens,
        "fused_tokens": fused_tokens,
    }


def bench_preset(
    name: str, prefill_tokens: int, decode_tokens: int, repetitions: int, seed: int, say: Say
) -> dict[str, Any]:
    """Every repetition's tokens/s of both modes for one preset, with its check."""
    preset = PRESETS[name]
    start = time.perf_counter()
    say(f"{name}: building ({preset.model_type}, {preset.dtype}, random weights)")
    model = build(preset)
    prompt = mx.random.randint(
        0, preset.args["vocab_size"], (prefill_tokens,), key=mx.random.key(seed)
    )
    check = check_same(model, prompt[:CHECK_TOKENS], preset)
    for problem in check["problems"]:
        say(f"{name}: WARNING: stock and fused {problem}; its timings are marked")
    warm_start = time.perf_counter()
    once = {}
    for mode in MODES:  # the first run compiles; the second one's time sizes the estimate
        set_mode(model, mode)
        run(model, prompt, decode_tokens)
        once[mode] = sum(run(model, prompt, decode_tokens))
    say(
        f"{name}: built and checked in {warm_start - start:.1f} s, warmed up in "
        f"{time.perf_counter() - warm_start:.1f} s; about {repetitions * sum(once.values()):.0f} s "
        f"for {repetitions} repetitions"
    )
    order_rng = random.Random(seed)
    reps = []
    for _ in range(repetitions):
        order = list(MODES)
        order_rng.shuffle(order)
        rep: dict[str, Any] = {"order": order}
        for mode in order:
            set_mode(model, mode)
            prefill, decode = run(model, prompt, decode_tokens)
            rep[mode] = {"prefill": prefill_tokens / prefill, "decode": decode_tokens / decode}
        reps.append(rep)
    set_mode(model, STOCK)
    parameters = sum(v.size for _, v in tree_flatten(model.parameters()))
    del model
    mx.clear_cache()
    result = {
        "name": name,
        "model_type": preset.model_type,
        "dtype": preset.dtype,
        "stored_parameters": parameters,
        "check": check,
        "repetitions": reps,
    }
    # Each preset's ratios as it ends, so that a run stopped later still tells them.
    ratios = ", ".join(
        f"{phase} {ratio_summary(result, phase).median:.3f} "
        f"[{ratio_summary(result, phase).low:.3f}, {ratio_summary(result, phase).high:.3f}]"
        for phase in PHASES
    )
    say(f"{name}: done in {time.perf_counter() - start:.1f} s; fused / stock: {ratios}")
    return result


def bench_models(
    names: tuple[str, ...],
    prefill_tokens: int,
    decode_tokens: int,
    repetitions: int,
    seed: int,
    machine: str,
) -> dict[str, Any]:
    """The whole case's raw numbers, as models_report reads them."""
    begin = time.perf_counter()

    def say(text: str) -> None:
        print(f"[models {time.perf_counter() - begin:6.1f} s] {text}", flush=True)

    mx.random.seed(seed)
    presets = [
        bench_preset(name, prefill_tokens, decode_tokens, repetitions, seed, say) for name in names
    ]
    return {
        "machine": machine,
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "prefill_tokens": prefill_tokens,
        "decode_tokens": decode_tokens,
        "repetitions": repetitions,
        "seed": seed,
        "presets": presets,
    }
