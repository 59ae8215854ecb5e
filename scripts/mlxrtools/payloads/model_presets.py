"""The `models` case's presets: mlx-lm model shapes with random weights.

Pure Python, so that mlxr.py checks `--models` names without MLX. The real
presets take their ModelArgs from each model's published config, as mlx-lm
0.32.2 reads it; the small ones keep each family's structure (its norms, its
attention, Gemma's sliding-window layers) at sizes that run on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# nn.quantize's settings for every 4-bit preset.
GROUP_SIZE, BITS = 64, 4


@dataclass(frozen=True)
class Preset:
    """One model: its mlx-lm `model_type`, its ModelArgs fields and whether it
    is quantized. `tie_word_embeddings` in `args` also ties a model whose
    class builds an lm_head regardless (Gemma 3, whose checkpoints have none)."""

    name: str
    model_type: str
    args: dict[str, Any]
    bits: int | None = None

    @property
    def dtype(self) -> str:
        return f"{self.bits}-bit" if self.bits else "bfloat16"

    def model_args(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **self.args}


LLAMA_3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
QWEN3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "intermediate_size": 12288,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}
GEMMA_3_4B = {
    "hidden_size": 2560,
    "num_hidden_layers": 34,
    "intermediate_size": 10240,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "vocab_size": 262208,
    "sliding_window": 1024,
    "sliding_window_pattern": 6,
    "query_pre_attn_scalar": 256,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
}
OLMO_2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-6,
    "vocab_size": 100352,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}

# Small: hidden 256, 2 layers (Gemma 4, so that both its local and global layers
# run, with a window shorter than the default prompt), vocab 2048; every size a
# multiple of the 4-bit group size.
_SMALL = {
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 2048,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
SMALL = {
    "llama": {**_SMALL, "rms_norm_eps": 1e-5},
    "qwen3": {**_SMALL, "rms_norm_eps": 1e-6},
    "gemma3_text": {
        **_SMALL,
        "num_hidden_layers": 4,
        "rms_norm_eps": 1e-6,
        "sliding_window": 64,
        "sliding_window_pattern": 2,
        "query_pre_attn_scalar": 64,
        "tie_word_embeddings": True,
    },
    "olmo2": {**_SMALL, "num_key_value_heads": 4, "rms_norm_eps": 1e-6},
}


def _both(name: str, model_type: str, args: dict[str, Any]) -> tuple[Preset, Preset]:
    """The bfloat16 preset and its 4-bit twin."""
    return Preset(name, model_type, args), Preset(f"{name}-4bit", model_type, args, BITS)


REAL = (
    *_both("llama-3-8b", "llama", LLAMA_3_8B),
    *_both("qwen3-8b", "qwen3", QWEN3_8B),
    *_both("gemma-3-4b", "gemma3_text", GEMMA_3_4B),
    *_both("olmo-2-7b", "olmo2", OLMO_2_7B),
)
SMALL_PRESETS = (
    *_both("llama-small", "llama", SMALL["llama"]),
    *_both("qwen3-small", "qwen3", SMALL["qwen3"]),
    *_both("gemma-3-small", "gemma3_text", SMALL["gemma3_text"]),
    *_both("olmo-2-small", "olmo2", SMALL["olmo2"]),
)
PRESETS = {p.name: p for p in (*REAL, *SMALL_PRESETS)}
# What `--models` runs by default: the real shapes on a GPU, the small ones on the CPU.
DEFAULT_MODELS = {"gpu": tuple(p.name for p in REAL), "cpu": tuple(p.name for p in SMALL_PRESETS)}
