"""Qwen3 (dense): Llama with a per-head RMSNorm on q and k before rotary."""

from __future__ import annotations

from orca_worker.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3: q_norm / k_norm over head_dim; biases only if config.json's attention_bias."""

    qk_norm = True
