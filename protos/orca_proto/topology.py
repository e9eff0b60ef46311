"""Where a worker sits: its ordinal (StatefulSet pod index, or place in `--workers`) as
(pipeline, stage, tensor-parallel rank), for pipelines of `pp` stages of `tp` ranks.

Ordinal i is pipeline i // (pp·tp), stage (i // tp) % pp, rank i % tp: a pipeline's workers
are consecutive ordinals, so scaling the workers by pp·tp adds or removes whole pipelines.
Shared by the scheduler (which pipelines are complete) and the workers (where each one
sits). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerPosition:
    """A worker's place in the topology."""

    pipeline: int
    stage: int
    tp_rank: int


@dataclass(frozen=True, slots=True)
class Topology:
    """Pipelines of `pp` stages, each stage `tp` tensor-parallel ranks."""

    pp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        for name in ("pp", "tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Topology.{name} must be a positive int, got {value!r}")

    @property
    def pipeline_size(self) -> int:
        """Workers per pipeline (pp · tp)."""
        return self.pp * self.tp

    def position(self, ordinal: int) -> WorkerPosition:
        """The (pipeline, stage, rank) of worker `ordinal`."""
        if ordinal < 0:
            raise ValueError(f"worker ordinal must be >= 0, got {ordinal}")
        return WorkerPosition(
            ordinal // self.pipeline_size, (ordinal // self.tp) % self.pp, ordinal % self.tp
        )

    def ordinal(self, pipeline: int, stage: int, tp_rank: int) -> int:
        """The ordinal of the worker at (pipeline, stage, rank)."""
        if pipeline < 0 or not 0 <= stage < self.pp or not 0 <= tp_rank < self.tp:
            raise ValueError(f"no worker at pipeline {pipeline} stage {stage} rank {tp_rank}")
        return pipeline * self.pipeline_size + stage * self.tp + tp_rank

    def members(self, pipeline: int) -> range:
        """The ordinals of a pipeline's workers, in ordinal order (stage-major)."""
        if pipeline < 0:
            raise ValueError(f"pipeline must be >= 0, got {pipeline}")
        start = pipeline * self.pipeline_size
        return range(start, start + self.pipeline_size)

    @property
    def last_stage_rank0_index(self) -> int:
        """Index, among a pipeline's members, of the worker whose results carry the tokens."""
        return (self.pp - 1) * self.tp

    def complete_pipelines(self, ready_ordinals: Iterable[int]) -> list[int]:
        """The pipelines all of whose workers are in `ready_ordinals`, in increasing order."""
        ready = set(ready_ordinals)
        counts: dict[int, int] = {}
        for ordinal in ready:
            if ordinal >= 0:
                pipeline = ordinal // self.pipeline_size
                counts[pipeline] = counts.get(pipeline, 0) + 1
        return sorted(p for p, n in counts.items() if n == self.pipeline_size)

    def num_pipelines(self, num_workers: int) -> int:
        """How many pipelines `num_workers` workers make (ValueError unless a whole number)."""
        if num_workers % self.pipeline_size:
            raise ValueError(
                f"{num_workers} workers do not make whole pipelines of pp={self.pp} x tp={self.tp}"
            )
        return num_workers // self.pipeline_size
