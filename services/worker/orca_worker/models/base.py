"""What every model class provides to the runner, the loader and the parallel wrappers."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from orca_worker.attention import AttentionMetadata
from orca_worker.config import ModelConfig
from orca_worker.models.layers import Embedding, Linear

# The tensors one decoder layer hands to the next (Llama: hidden and residual; GPT-2 and
# OPT: the hidden states). A pipeline stage sends them to the next stage as they are.
Carry = tuple[torch.Tensor | None, ...]


class TiedLMHead(nn.Module):
    """Logits from the token embedding's own matrix: no parameter of its own."""

    def __init__(self, embed: Embedding) -> None:
        super().__init__()
        # A plain list, not a submodule: the embedding must keep its one parameter name.
        self._embed = [embed]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, dim] -> logits [n, rows of the embedding]."""
        return F.linear(hidden, self._embed[0].weight)


class CausalLM(nn.Module):
    """A decoder-only LM over packed tokens, run as embed -> layers -> finish -> logits.

    Splitting the forward lets a pipeline stage run any range of layers and hand the carried
    tensors on. Subclasses set the class attributes below; they hold no distributed code:
    `parallel/` reads these declarations to prune and shard a built model.

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

    # Pipeline parallelism: the ModuleList of decoder layers, the modules only the first
    # stage runs (embeddings) and only the last (final norm, projections, LM head), the token
    # embedding (kept by the last stage too when the LM head is tied to it), and how many
    # tensors the layer loop carries.
    layer_stack: ClassVar[str]
    first_stage_modules: ClassVar[tuple[str, ...]]
    last_stage_modules: ClassVar[tuple[str, ...]]
    token_embedding: ClassVar[str]
    carried_tensors: ClassVar[int] = 1
    # Tensor parallelism, by module attribute name (the shared layers' names): "qkv" splits a
    # fused q|k|v projection by attention heads (KV heads replicated when fewer than ranks),
    # "column" splits output features (each packed part alike), "row" splits input features
    # and sums the partial outputs. The token embedding and the LM head are split by
    # vocabulary. Anything else is replicated.
    tp_plan: ClassVar[dict[str, str]] = {
        "qkv_proj": "qkv",
        "o_proj": "row",
        "gate_up_proj": "column",
        "down_proj": "row",
        "fc_in": "column",
        "fc_out": "row",
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> Carry:
        """input_ids, positions [T] -> what enters the first layer."""
        raise NotImplementedError

    def run_layers(
        self, carry: Carry, positions: torch.Tensor, meta: AttentionMetadata, layers: range
    ) -> Carry:
        """Run decoder layers `layers` (a range of layer indexes) over the carried tensors."""
        raise NotImplementedError

    def finish(self, carry: Carry) -> torch.Tensor:
        """What leaves the last layer -> final hidden states [T, hidden] (after final norm)."""
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]: every layer."""
        carry = self.embed(input_ids, positions)
        carry = self.run_layers(carry, positions, meta, range(self.config.num_layers))
        return self.finish(carry)

    def init_lm_head(self, embed: Embedding) -> None:
        """Give the model its `lm_head`: its own matrix, or the tied embedding's."""
        if self.config.tie_word_embeddings:
            self.lm_head = TiedLMHead(embed)
        else:
            self.lm_head = Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of the sampled positions [n, hidden] -> logits [n, vocab]."""
        return self.lm_head(hidden)
