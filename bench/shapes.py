"""Model shapes of the benchmark, as HF `config.json` dicts (no checkpoints: random weights).

The shapes are those of `SHAPES` in the shared peers_hf.py: the Llama-3.2-1B shape, the
Llama-3-8B shape, the paper's GPT-3 13B (GPT-2 architecture), plus tiny ones for CPU smoke
runs. Orca loads them with `load_format="random"` from a directory holding only the
config.json written by `write_config`; the HF peers build their model from the same file,
so both serve exactly the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_LLAMA_COMMON: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "rope_theta": 500000.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

_GPT2_COMMON: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "n_inner": None,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "tie_word_embeddings": True,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B (its config.json, llama3 RoPE scaling included)
    "llama1b": {
        **_LLAMA_COMMON,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    # Llama-3-8B (no RoPE scaling in its config)
    "llama8b": {
        **_LLAMA_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    },
    # GPT-3 13B: the Orca paper's model family (GPT-2 architecture: LayerNorm, GeLU,
    # learned positions), hidden 5120, 40 layers, 40 heads, GPT-2's vocabulary
    "gpt3_13b": {
        **_GPT2_COMMON,
        "n_embd": 5120,
        "n_layer": 40,
        "n_head": 40,
        "n_positions": 2048,
        "n_ctx": 2048,
        "vocab_size": 50257,
    },
    # CPU smoke runs (the same tiny Llama as peers_hf.py's "tiny")
    "tiny": {
        **_LLAMA_COMMON,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "tiny_gpt2": {
        **_GPT2_COMMON,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 1024,
        "n_ctx": 1024,
        "vocab_size": 512,
        "bos_token_id": 2,
        "eos_token_id": 2,
    },
}


def hf_config(shape: str) -> dict[str, Any]:
    """The config.json contents of `shape` (a fresh copy)."""
    if shape not in SHAPES:
        raise KeyError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return json.loads(json.dumps(SHAPES[shape]))


def write_config(shape: str, model_dir: str | Path) -> Path:
    """Write `shape`'s config.json into `model_dir` (created if missing); return the dir."""
    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config(shape), indent=2) + "\n")
    return path


def vocab_size(shape: str) -> int:
    """The vocabulary size of `shape` (the trace draws prompt ids below it)."""
    return int(SHAPES[shape]["vocab_size"])


def max_model_len(shape: str) -> int:
    """The longest sequence `shape` supports (learned positions bound GPT-2's)."""
    cfg = SHAPES[shape]
    return int(cfg.get("max_position_embeddings") or cfg["n_positions"])


def param_count(shape: str) -> int:
    """Number of weights, counted from the shape as HF counts them (a tied LM head once)."""
    cfg = SHAPES[shape]
    vocab = cfg["vocab_size"]
    if cfg["model_type"] == "gpt2":
        e, layers = cfg["n_embd"], cfg["n_layer"]
        inner = cfg["n_inner"] or 4 * e
        per_layer = (
            2 * e  # ln_1
            + e * 3 * e
            + 3 * e  # c_attn
            + e * e
            + e  # attn c_proj
            + 2 * e  # ln_2
            + e * inner
            + inner  # c_fc
            + inner * e
            + e  # mlp c_proj
        )
        return vocab * e + cfg["n_positions"] * e + layers * per_layer + 2 * e
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg["num_key_value_heads"] * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * cfg["intermediate_size"] + 2 * h
    lm_head = 0 if cfg["tie_word_embeddings"] else vocab * h
    return vocab * h + layers * per_layer + h + lm_head


def weight_bytes(shape: str, bytes_per_param: int = 2) -> int:
    """Bytes of all weights (bf16 by default): what one batch-1 decode step must read."""
    return param_count(shape) * bytes_per_param
