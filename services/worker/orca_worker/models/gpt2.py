"""GPT-2: learned positions, pre-LayerNorm blocks, fused c_attn, tied LM head."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from orca_worker.attention import AttentionMetadata
from orca_worker.config import ModelConfig
from orca_worker.models.base import Carry, CausalLM
from orca_worker.models.layers import MLP, Attention, Embedding, LayerNorm


class GPT2Block(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.ln_1 = LayerNorm(hidden, config.norm_eps)
        self.attn = Attention(
            hidden,
            config.num_heads,
            config.num_heads,
            head_dim,
            qkv_bias=True,
            out_bias=True,
            scale=scale,
        )
        self.ln_2 = LayerNorm(hidden, config.norm_eps)
        self.mlp = MLP(hidden, config.intermediate_size, config.hidden_act, bias=True)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """One block over packed tokens."""
        x = x + self.attn(positions, self.ln_1(x), meta)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """Token and position embeddings, blocks, final LayerNorm (run by GPT2LMHeadModel)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.wte = Embedding(config.vocab_size, config.hidden_size)
        self.wpe = Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.norm_eps)


class GPT2LMHeadModel(CausalLM):
    """GPT-2 (its LM head is normally tied to the token embeddings)."""

    checkpoint_prefix = "transformer."
    layer_stack = "transformer.h"
    first_stage_modules = ("transformer.wte", "transformer.wpe")
    last_stage_modules = ("transformer.ln_f", "lm_head")
    token_embedding = "transformer.wte"
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = (
        ("attn.qkv_proj", "attn.c_attn"),  # already fused on disk
        ("attn.o_proj", "attn.c_proj"),
        ("mlp.fc_in", "mlp.c_fc"),
        ("mlp.fc_out", "mlp.c_proj"),
    )
    # Conv1D stores [in, out].
    transposed_weights: ClassVar[tuple[str, ...]] = (
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    )

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.init_lm_head(self.transformer.wte)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> Carry:
        """Token plus learned position embeddings."""
        return (self.transformer.wte(input_ids) + self.transformer.wpe(positions),)

    def run_layers(
        self, carry: Carry, positions: torch.Tensor, meta: AttentionMetadata, layers: range
    ) -> Carry:
        """The hidden states through blocks `layers`."""
        (x,) = carry
        for i in layers:
            x = self.transformer.h[i](positions, x, meta)
        return (x,)

    def finish(self, carry: Carry) -> torch.Tensor:
        """The final LayerNorm."""
        return self.transformer.ln_f(carry[0])
