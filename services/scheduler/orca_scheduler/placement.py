"""Which pipeline a request joins: the least loaded one, decided once, at admission.

Load is the prompt plus output tokens of every waiting and running request of the
pipeline (what it still has to hold and compute); ties go to the pipeline with the most
free KV blocks, then to the lowest pipeline id, so that placement is deterministic. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class PipelineLoad:
    """One pipeline's load when a batch of requests is placed."""

    pipeline: int
    unfinished_tokens: int
    free_blocks: int


class Placement:
    """Places a batch of requests one by one, counting each placed request's tokens."""

    def __init__(self, loads: Iterable[PipelineLoad]) -> None:
        self._loads = list(loads)

    def choose(self, num_tokens: int) -> int | None:
        """The pipeline for a request of `num_tokens` tokens (None when there is none)."""
        if not self._loads:
            return None
        best = min(self._loads, key=lambda p: (p.unfinished_tokens, -p.free_blocks, p.pipeline))
        best.unfinished_tokens += num_tokens
        return best.pipeline
