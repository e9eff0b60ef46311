"""The scheduler core's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KvPolicy = Literal["paged", "reserve"]
Batching = Literal["iteration", "request"]


@dataclass
class SchedulerConfig:
    """How the scheduler batches requests and accounts for the KV cache.

    `num_kv_blocks`, `block_size` and `max_model_len` describe the workers' KV pool and
    model (from `WorkerInfo`); the rest is policy.
    """

    num_kv_blocks: int
    max_model_len: int
    max_num_seqs: int = 256  # most requests running at once (and so in one batch)
    max_num_batched_tokens: int = 8192  # most tokens (prompt chunks plus decodes) per step
    block_size: int = 16  # tokens per KV block
    # "paged" allocates blocks as a sequence grows; "reserve" (the Orca paper's) reserves
    # prompt + max_tokens slots at admission, so a running request never waits for memory.
    kv_policy: KvPolicy = "paged"
    enable_prefix_caching: bool = True
    pipeline_depth: int = 1  # most plans in flight at once (the number of pipeline stages)
    # "iteration" (Orca's): requests join and leave the batch at every step. "request" (the
    # paper's baseline, for ablations): a batch is formed in one step, when none is running,
    # and no request joins until its last one has finished.
    batching: Batching = "iteration"
    # Overlapped scheduling (single-worker pipelines only: tp = pp = 1): the next plan is
    # built and sent while the current one runs. A decoding request is scheduled again
    # before its token is back; its input is "the token the previous plan samples", which
    # the worker fills in. Two plans are then in flight (pipeline_depth must be 1).
    overlap: bool = False

    def __post_init__(self) -> None:
        for name in (
            "num_kv_blocks",
            "max_model_len",
            "max_num_seqs",
            "max_num_batched_tokens",
            "block_size",
            "pipeline_depth",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be a positive int, got {value!r}")
        if self.max_model_len < 2:
            # One prompt token plus one generated token is the shortest useful sequence.
            raise ValueError(
                f"SchedulerConfig.max_model_len must be >= 2, got {self.max_model_len}"
            )
        if self.overlap and self.pipeline_depth != 1:
            raise ValueError("SchedulerConfig.overlap needs pipeline_depth 1 (tp = pp = 1)")
        if self.batching not in ("iteration", "request"):
            raise ValueError(
                f"SchedulerConfig.batching must be 'iteration' or 'request', got {self.batching!r}"
            )
        if self.kv_policy not in ("paged", "reserve"):
            raise ValueError(
                f"SchedulerConfig.kv_policy must be 'paged' or 'reserve', got {self.kv_policy!r}"
            )
