"""OPT: learned positions (offset 2), pre- or post-LN blocks, optional in/out projections."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from orca_worker.attention import AttentionMetadata
from orca_worker.config import ModelConfig
from orca_worker.models.base import Carry, CausalLM
from orca_worker.models.layers import MLP, Attention, Embedding, LayerNorm, Linear

# OPT's position table has two extra rows in front (a fairseq padding-idx legacy).
POSITION_OFFSET = 2


class OPTDecoderLayer(nn.Module):
    """Attention then ReLU MLP; LayerNorm before each (do_layer_norm_before) or after."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.norm_before = config.norm_before
        self.self_attn = Attention(
            hidden,
            config.num_heads,
            config.num_heads,
            config.head_dim,
            qkv_bias=config.attention_bias,
            out_bias=config.attention_bias,
            scale=config.head_dim**-0.5,
        )
        self.self_attn_layer_norm = LayerNorm(hidden, config.norm_eps, config.norm_affine)
        self.mlp = MLP(hidden, config.intermediate_size, config.hidden_act, config.mlp_bias)
        self.final_layer_norm = LayerNorm(hidden, config.norm_eps, config.norm_affine)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """One block over packed tokens."""
        h = self.self_attn_layer_norm(x) if self.norm_before else x
        x = x + self.self_attn(positions, h, meta)
        if not self.norm_before:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.norm_before else x
        x = x + self.mlp(h)
        return x if self.norm_before else self.final_layer_norm(x)


class OPTDecoder(nn.Module):
    """Embeddings (projected in when narrower than hidden), layers, final norm, projection out
    (run by OPTForCausalLM)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, embed_dim = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = Embedding(config.vocab_size, embed_dim)
        self.embed_positions = Embedding(config.max_position_embeddings + POSITION_OFFSET, hidden)
        self.project_in = Linear(embed_dim, hidden, bias=False) if embed_dim != hidden else None
        self.project_out = Linear(hidden, embed_dim, bias=False) if embed_dim != hidden else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config) for _ in range(config.num_layers))
        self.final_layer_norm = (
            LayerNorm(hidden, config.norm_eps, config.norm_affine) if config.final_norm else None
        )


class OPTForCausalLM(CausalLM):
    """OPT (its LM head is normally tied to the token embeddings)."""

    packed_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    }
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = (
        ("self_attn.o_proj", "self_attn.out_proj"),
        ("mlp.fc_in", "fc1"),
        ("mlp.fc_out", "fc2"),
    )
    checkpoint_prefix = "model."
    layer_stack = "model.decoder.layers"
    first_stage_modules = (
        "model.decoder.embed_tokens",
        "model.decoder.embed_positions",
        "model.decoder.project_in",
    )
    last_stage_modules = ("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head")
    token_embedding = "model.decoder.embed_tokens"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.model = nn.Module()
        self.model.decoder = OPTDecoder(config)
        self.init_lm_head(self.model.decoder.embed_tokens)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> Carry:
        """Token embeddings (projected in when narrower) plus learned positions."""
        decoder = self.model.decoder
        x = decoder.embed_tokens(input_ids)
        if decoder.project_in is not None:
            x = decoder.project_in(x)
        return (x + decoder.embed_positions(positions + POSITION_OFFSET),)

    def run_layers(
        self, carry: Carry, positions: torch.Tensor, meta: AttentionMetadata, layers: range
    ) -> Carry:
        """The hidden states through layers `layers`."""
        (x,) = carry
        for i in layers:
            x = self.model.decoder.layers[i](positions, x, meta)
        return (x,)

    def finish(self, carry: Carry) -> torch.Tensor:
        """The final norm and the projection out -> [T, word_embed_proj_dim]."""
        decoder, (x,) = self.model.decoder, carry
        if decoder.final_layer_norm is not None:
            x = decoder.final_layer_norm(x)
        if decoder.project_out is not None:
            x = decoder.project_out(x)
        return x
