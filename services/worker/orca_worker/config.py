"""Reads a Hugging Face `config.json` into one typed `ModelConfig` for every model family."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orca_worker.errors import ModelLoadError

# One field, several spellings: GPT-2 and OPT predate the Llama-era names. Reading through
# aliases keeps family quirks out of the parser (no `if model_type ==` chain).
_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_heads": ("num_attention_heads", "n_head"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
    "norm_eps": ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"),
    "hidden_act": ("hidden_act", "activation_function"),
    "attention_bias": ("attention_bias", "enable_bias"),
    "mlp_bias": ("mlp_bias", "enable_bias"),
    "dtype": ("dtype", "torch_dtype"),
}

DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters: base theta plus optional context scaling."""

    theta: float = 10000.0
    rope_type: str = "default"  # "default", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model code needs from config.json, under one set of names."""

    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    dtype: str | None
    eos_token_ids: tuple[int, ...]
    rope: RopeConfig | None
    # Per layer: the attention window in tokens, or None for full attention.
    sliding_windows: tuple[int | None, ...]
    # OPT: embeddings narrower than the hidden size, post-LN blocks, the optional final norm.
    word_embed_proj_dim: int
    norm_before: bool = True
    final_norm: bool = True
    norm_affine: bool = True
    # GPT-2: attention scaling switches.
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Parse `model_dir/config.json`; raises ModelLoadError when it is absent or malformed."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"no config.json in model directory {str(model_dir)!r}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    return parse_model_config(raw)


def parse_model_config(raw: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from the parsed config.json dictionary."""
    architectures = raw.get("architectures") or []
    if not architectures:
        raise ModelLoadError("config.json has no 'architectures' entry: cannot pick a model class")

    def get(name: str, default: Any = None) -> Any:
        for key in _ALIASES.get(name, (name,)):
            if raw.get(key) is not None:
                return raw[key]
        return default

    required = {
        name: get(name) for name in ("hidden_size", "num_heads", "num_layers", "vocab_size")
    }
    missing = [name for name, value in required.items() if value is None]
    if missing:
        raise ModelLoadError(
            f"config.json of {architectures[0]} lacks required field(s) {', '.join(missing)}"
        )
    try:
        hidden, num_heads, num_layers, vocab_size = (int(v) for v in required.values())
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"config.json has a non-integer size field: {exc}") from exc
    dtype = get("dtype")
    if dtype is not None and dtype not in DTYPE_NAMES:
        dtype = None  # e.g. float64: let the runner fall back to float32
    return ModelConfig(
        architecture=architectures[0],
        model_type=raw.get("model_type", ""),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden // num_heads),
        vocab_size=vocab_size,
        # GPT-2 leaves n_inner null to mean 4 * hidden.
        intermediate_size=int(get("intermediate_size", 4 * hidden)),
        max_position_embeddings=int(get("max_position_embeddings", 2048)),
        norm_eps=float(get("norm_eps", 1e-5)),
        hidden_act=str(get("hidden_act", "silu")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        attention_bias=bool(get("attention_bias", False)),
        mlp_bias=bool(get("mlp_bias", False)),
        dtype=dtype,
        eos_token_ids=parse_token_ids(raw.get("eos_token_id")),
        rope=_parse_rope(raw),
        sliding_windows=_parse_sliding_windows(raw, num_layers),
        word_embed_proj_dim=int(raw.get("word_embed_proj_dim") or hidden),
        norm_before=bool(raw.get("do_layer_norm_before", True)),
        final_norm=bool(raw.get("do_layer_norm_before", True))
        and not raw.get("_remove_final_layer_norm", False),
        norm_affine=bool(raw.get("layer_norm_elementwise_affine", True)),
        scale_attn_weights=bool(raw.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(raw.get("scale_attn_by_inverse_layer_idx", False)),
        raw=raw,
    )


def parse_token_ids(value: Any) -> tuple[int, ...]:
    """Normalize an `eos_token_id` field (null, int or list) to a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _parse_rope(raw: dict[str, Any]) -> RopeConfig | None:
    """Rope settings from transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params: dict[str, Any] = {}
    if isinstance(raw.get("rope_scaling"), dict):
        params.update(raw["rope_scaling"])
    if isinstance(raw.get("rope_parameters"), dict):
        params.update(raw["rope_parameters"])
    if not params and "rope_theta" not in raw:
        # Families with learned positions (GPT-2, OPT) carry no rope fields at all.
        return None if raw.get("model_type") in ("gpt2", "opt") else RopeConfig()
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelLoadError(
            "partial rotary embeddings (partial_rotary_factor != 1) are not supported"
        )
    max_pos = int(raw.get("max_position_embeddings", 8192))
    return RopeConfig(
        theta=float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rope_type=str(params.get("rope_type", params.get("type", "default"))),
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", max_pos)
        ),
    )


def _parse_sliding_windows(raw: dict[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """Per-layer attention windows, following how transformers reads each family's config."""
    window = raw.get("sliding_window")
    layer_types = raw.get("layer_types")
    if layer_types:  # transformers 5 spells out every layer
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if "use_sliding_window" in raw:  # Qwen2/Qwen3 4.x configs: only layers past max_window_layers
        if not raw["use_sliding_window"] or window is None:
            return (None,) * num_layers
        first = int(raw.get("max_window_layers", 0))
        return tuple(window if i >= first else None for i in range(num_layers))
    return (window,) * num_layers  # Mistral: one window for every layer (or null)
