"""Tiny random Hugging Face checkpoints for tests: one per supported model family.

Random tiny models tend to repeat one token under greedy decoding, which makes an equality
test prove little. So matrices are scaled up (std ~0.02 * WEIGHT_SCALE) and norm scales and
biases are randomized too (a loader that swaps two of them must change the output). The
checkpoints are float32, seeded, and saved with `save_pretrained` as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB_SIZE = 384
MAX_POSITIONS = 512
EOS_TOKEN_ID = 2
WEIGHT_SCALE = 8.0
# The output embeddings get an extra factor: logits with std ~4 keep top-2 margins wide.
LOGIT_SCALE = 4.0

_LLAMA_SHAPE = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_POSITIONS,
    bos_token_id=1,
    eos_token_id=EOS_TOKEN_ID,
)


def _llama() -> PretrainedConfig:
    return LlamaConfig(**_LLAMA_SHAPE, tie_word_embeddings=False, rope_theta=10000.0)


def _llama3_tied() -> PretrainedConfig:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    return LlamaConfig(**_LLAMA_SHAPE, tie_word_embeddings=True, rope_parameters=rope)


def _mistral() -> PretrainedConfig:
    # A window shorter than the test sequences, so that the sliding mask is exercised.
    return MistralConfig(**_LLAMA_SHAPE, tie_word_embeddings=False, sliding_window=24)


def _qwen2() -> PretrainedConfig:
    return Qwen2Config(**_LLAMA_SHAPE, tie_word_embeddings=False)


def _qwen3() -> PretrainedConfig:
    return Qwen3Config(**_LLAMA_SHAPE, head_dim=32, tie_word_embeddings=True)


def _gpt2() -> PretrainedConfig:
    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        bos_token_id=EOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
    )


def _opt() -> PretrainedConfig:
    return OPTConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        word_embed_proj_dim=64,
        pad_token_id=1,
        bos_token_id=EOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
    )


def _opt_proj() -> PretrainedConfig:
    # OPT-350m's shape: narrower embeddings (project_in/out) and post-LN blocks.
    return OPTConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        word_embed_proj_dim=48,
        do_layer_norm_before=False,
        pad_token_id=1,
        bos_token_id=EOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
    )


_CONFIGS = {
    "llama": _llama,
    "llama3-tied": _llama3_tied,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "gpt2": _gpt2,
    "opt": _opt,
    "opt-proj": _opt_proj,
}

# Every tiny checkpoint kind, by name.
ARCHITECTURES: tuple[str, ...] = tuple(_CONFIGS)


def tiny_config(arch: str) -> PretrainedConfig:
    """The transformers config of the tiny `arch` checkpoint (float32)."""
    if arch not in _CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")
    config = _CONFIGS[arch]()
    config.dtype = torch.float32
    return config


def build_tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A seeded random transformers model of kind `arch`, weights scaled to vary its output."""
    config = tiny_config(arch)
    # Distinct weights per kind, even for kinds of the same shape.
    generator = torch.Generator().manual_seed(seed * 1000 + ARCHITECTURES.index(arch))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for _name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() > 1:
                param.copy_(noise * 0.02 * WEIGHT_SCALE)
            elif _name.endswith("bias"):
                param.copy_(noise * 0.1)
            else:  # norm scales
                param.copy_(1.0 + noise * 0.1)
        _last_projection(model).mul_(LOGIT_SCALE)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id,
        bos_token_id=config.bos_token_id,
        pad_token_id=0,
    )
    return model.eval()


def _last_projection(model: torch.nn.Module) -> torch.Tensor:
    """The parameter whose scale sets the logits' scale without touching the input side:
    the LM head when untied, else the last module before it."""
    if not model.config.tie_word_embeddings:
        return model.get_output_embeddings().weight
    for name in (
        "model.norm",
        "transformer.ln_f",
        "model.decoder.project_out",
        "model.decoder.final_layer_norm",
    ):
        try:
            return model.get_submodule(name).weight
        except AttributeError:
            continue
    raise ValueError(f"no final projection found in {type(model).__name__}")


def make_tiny_checkpoint(
    arch: str, path: str | Path, seed: int = 0, max_shard_size: str | None = None
) -> Path:
    """Write the tiny `arch` checkpoint (config.json, generation_config.json, safetensors)
    to `path` and return it; `max_shard_size` (e.g. "100KB") writes a sharded one."""
    path = Path(path)
    model = build_tiny_model(arch, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


def load_hf_model(path: str | Path) -> torch.nn.Module:
    """Load a checkpoint with transformers in float32, eager attention, eval mode."""
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def hf_greedy(model, prompt: list[int], max_new_tokens: int):
    """transformers' greedy tokens and the log-softmax of its logits at each step."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    assert len(tokens) == max_new_tokens
    logprobs = [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]
    return tokens, logprobs


def random_prompts(lengths: tuple[int, ...], vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Seeded random prompts of the given lengths (ids >= 3: clear of special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=gen).tolist() for n in lengths]


def assert_matches_hf(model, prompts, outputs, max_new_tokens: int) -> None:
    """Each engine output equals HF's greedy tokens (all `max_new_tokens`, finish "length");
    where the output carries logprobs, they and HF's top-3 match within 1e-3."""
    for prompt, out in zip(prompts, outputs, strict=True):
        hf_tokens, hf_logprobs = hf_greedy(model, prompt, max_new_tokens)
        assert out.token_ids == hf_tokens, f"prompt len {len(prompt)}"
        assert out.finish_reason == "length"
        if out.logprobs is not None:
            for token, ours, theirs in zip(out.token_ids, out.logprobs, hf_logprobs, strict=True):
                assert ours[token] == pytest.approx(theirs[token].item(), abs=1e-3)
                top = torch.topk(theirs, 3).indices.tolist()
                assert set(top) <= set(ours), "top-3 alternatives missing"
                for alt in top:
                    assert ours[alt] == pytest.approx(theirs[alt].item(), abs=1e-3)
