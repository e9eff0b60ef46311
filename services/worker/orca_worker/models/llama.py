"""Llama 2/3/3.x, and the families that differ from it only in config: Mistral, Qwen2."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from orca_worker.attention import AttentionMetadata
from orca_worker.config import ModelConfig
from orca_worker.models.base import Carry, CausalLM
from orca_worker.models.layers import (
    Attention,
    Embedding,
    GatedMLP,
    RMSNorm,
    RotaryEmbedding,
)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: attention then gated MLP, each with a residual around it."""

    def __init__(
        self,
        config: ModelConfig,
        layer_idx: int,
        rotary: RotaryEmbedding,
        qkv_bias: bool,
        out_bias: bool,
        qk_norm: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            scale=config.head_dim**-0.5,
            rotary=rotary,
            qk_norm_eps=config.norm_eps if qk_norm else None,
            sliding_window=config.sliding_windows[layer_idx],
        )
        self.mlp = GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (hidden, residual); the next norm adds them (fused add + norm)."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embeddings, decoder layers and the final norm (run by LlamaForCausalLM)."""

    def __init__(self, config: ModelConfig, qkv_bias: bool, out_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        assert config.rope is not None
        self.rotary = RotaryEmbedding(config.head_dim, config.rope)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.rotary, qkv_bias, out_bias, qk_norm)
            for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)


class LlamaForCausalLM(CausalLM):
    """Llama: RMSNorm, rotary (incl. Llama 3 scaling), GQA, SiLU-gated MLP."""

    packed_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
    }
    layer_stack = "model.layers"
    first_stage_modules = ("model.embed_tokens",)
    last_stage_modules = ("model.norm", "lm_head")
    token_embedding = "model.embed_tokens"
    carried_tensors = 2
    # Per family: whether q/k/v and o carry biases (None: config.json's attention_bias),
    # and whether q and k are RMS-normed per head.
    qkv_bias: ClassVar[bool | None] = None
    out_bias: ClassVar[bool | None] = None
    qk_norm: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        qkv_bias = config.attention_bias if self.qkv_bias is None else self.qkv_bias
        out_bias = config.attention_bias if self.out_bias is None else self.out_bias
        self.model = LlamaModel(config, qkv_bias, out_bias, self.qk_norm)
        self.init_lm_head(self.model.embed_tokens)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> Carry:
        """Token embeddings; no residual yet (the first layer starts it)."""
        return self.model.embed_tokens(input_ids), None

    def run_layers(
        self, carry: Carry, positions: torch.Tensor, meta: AttentionMetadata, layers: range
    ) -> Carry:
        """(hidden, residual) through `layers`."""
        hidden, residual = carry
        for i in layers:
            hidden, residual = self.model.layers[i](positions, hidden, residual, meta)
        return hidden, residual

    def finish(self, carry: Carry) -> torch.Tensor:
        """The final norm, fused with the last residual add."""
        hidden, residual = carry
        hidden, _ = self.model.norm(hidden, residual)
        return hidden


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama with a sliding attention window (from config.json)."""


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with biases on q, k and v (never on o)."""

    qkv_bias = True
    out_bias = False
