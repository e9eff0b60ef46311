"""config.json parsing across transformers 4.x and 5.x spellings and model families."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_config
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from orca_worker.config import RopeConfig, load_model_config, parse_model_config
from orca_worker.models.layers import rope_inv_freq

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama(**extra):
    base = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "intermediate_size": 512,
        "max_position_embeddings": 1024,
    }
    return parse_model_config({**base, **extra})


def test_rope_from_4x_fields():
    config = _llama(rope_theta=500000.0, rope_scaling=LLAMA3_ROPE)
    assert config.rope == RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)


def test_rope_from_5x_rope_parameters():
    config = _llama(rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0})
    assert config.rope == RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    assert _llama().rope == RopeConfig(10000.0, "default")


def test_llama3_inv_freq_matches_transformers():
    hf = LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        head_dim=128,
        rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0},
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    config = _llama(rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0})
    torch.testing.assert_close(rope_inv_freq(128, config.rope), expected, rtol=1e-6, atol=0)


def test_defaults_and_aliases():
    config = _llama(num_key_value_heads=2, torch_dtype="bfloat16", eos_token_id=[7, 9])
    assert (config.num_kv_heads, config.head_dim) == (2, 64)
    assert config.dtype == "bfloat16"
    assert config.eos_token_ids == (7, 9)
    assert _llama(dtype="float16").dtype == "float16"
    assert config.sliding_windows == (None, None)


def test_sliding_windows():
    assert _llama(sliding_window=32).sliding_windows == (32, 32)  # Mistral
    qwen_off = _llama(use_sliding_window=False, sliding_window=32, max_window_layers=1)
    assert qwen_off.sliding_windows == (None, None)
    qwen_on = _llama(use_sliding_window=True, sliding_window=32, max_window_layers=1)
    assert qwen_on.sliding_windows == (None, 32)
    typed = _llama(sliding_window=32, layer_types=["sliding_attention", "full_attention"])
    assert typed.sliding_windows == (32, None)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_configs_parse(arch, tiny_checkpoint):
    config = load_model_config(tiny_checkpoint(arch))
    hf = tiny_config(arch)
    assert config.vocab_size == hf.vocab_size
    assert config.tie_word_embeddings == hf.tie_word_embeddings
    assert config.hidden_size == hf.hidden_size
    assert config.num_layers == hf.num_hidden_layers
    assert config.dtype == "float32"


def test_gpt2_and_opt_specifics(tiny_checkpoint):
    gpt2 = load_model_config(tiny_checkpoint("gpt2"))
    assert (gpt2.intermediate_size, gpt2.hidden_act, gpt2.rope) == (256, "gelu_new", None)
    opt = load_model_config(tiny_checkpoint("opt-proj"))
    assert (opt.word_embed_proj_dim, opt.norm_before, opt.final_norm) == (48, False, False)
    assert (opt.hidden_act, opt.attention_bias, opt.rope) == ("relu", True, None)
