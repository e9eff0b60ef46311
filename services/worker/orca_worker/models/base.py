"""What every model class provides to the runner and the loader."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from orca_worker.attention import AttentionMetadata
from orca_worker.config import ModelConfig
from orca_worker.models.layers import Embedding, Linear


class CausalLM(nn.Module):
    """A decoder-only LM over packed tokens. Subclasses set the checkpoint-naming hints below.

    The loader derives each checkpoint tensor's name from the parameter's name:
    fused projections are split back into their `packed_modules` parts, `checkpoint_renames`
    substitutions are applied, and `transposed_weights` are stored [in, out] on disk.
    """

    # Fused module attribute -> the checkpoint modules stacked in it, in row order.
    packed_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Substring substitutions from our parameter names to the checkpoint's.
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Checkpoint weight names (suffixes) stored transposed, e.g. GPT-2's Conv1D.
    transposed_weights: ClassVar[tuple[str, ...]] = ()
    # Prefix of the base model's tensors; some checkpoints (GPT-2, OPT on the Hub) omit it.
    checkpoint_prefix: ClassVar[str] = "model."

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        raise NotImplementedError

    def init_lm_head(self, embed: Embedding) -> None:
        """Give an untied model its own `lm_head`; a tied one reads `embed`'s matrix."""
        # A plain list, not a submodule: the embedding must keep its one parameter name.
        self._tied_embedding = [embed]
        if not self.config.tie_word_embeddings:
            self.lm_head = Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of the sampled positions [n, hidden] -> logits [n, vocab]."""
        if self.config.tie_word_embeddings:
            return F.linear(hidden, self._tied_embedding[0].weight)
        return self.lm_head(hidden)
