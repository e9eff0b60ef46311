"""Turns the last position's logits of each sampled sequence into its next token.

INTERFACE STUB: greedy only; the full sampler replaces the body, keeping the signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from orca_proto.v1 import worker_pb2


@dataclass
class SequenceSamplingState:
    """What the sampler needs to know about one sequence (cached by the worker)."""

    params: worker_pb2.SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)


@dataclass
class SamplerOutput:
    """Sampled tokens, one per row of the logits, with optional logprobs."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]


class Sampler:
    """Greedy/temperature/top-k/top-p/min-p sampling with penalties and logprobs."""

    def __call__(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> SamplerOutput:
        """Sample one token per row of `logits` ([n, vocab], any float dtype)."""
        token_ids = logits.argmax(dim=-1).tolist()
        return SamplerOutput(token_ids, [None] * len(token_ids), [[] for _ in token_ids])
