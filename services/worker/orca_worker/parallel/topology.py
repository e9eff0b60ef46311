"""Where a worker sits in the fleet, and which layers each pipeline stage holds. Pure Python.

Worker ordinal i (a StatefulSet pod index, or a launcher's counter) belongs to pipeline
i // (pp * tp), stage (i // tp) % pp, tensor-parallel rank i % tp. Each pipeline is one
process group of pp * tp workers; a worker's rank in it is stage * tp + tp_rank, so the
pipeline's first worker (ordinal pipeline * pp * tp) is rank 0 and hosts the rendezvous.
"""

from __future__ import annotations

from dataclasses import dataclass

from orca_proto.topology import Topology


class TopologyError(ValueError):
    """A topology or layer split that cannot be built (bad sizes, ranks or layer counts)."""


@dataclass(frozen=True)
class WorkerPlace:
    """One worker's coordinates: its pipeline, stage and tensor-parallel rank."""

    pipeline: int = 0
    stage: int = 0
    tp_rank: int = 0
    pp_size: int = 1
    tp_size: int = 1

    def __post_init__(self) -> None:
        if self.pp_size < 1 or self.tp_size < 1:
            raise TopologyError(f"pp and tp must be >= 1, got pp={self.pp_size} tp={self.tp_size}")
        if self.pipeline < 0:
            raise TopologyError(f"pipeline must be >= 0, got {self.pipeline}")
        if not 0 <= self.stage < self.pp_size:
            raise TopologyError(f"stage {self.stage} outside [0, {self.pp_size})")
        if not 0 <= self.tp_rank < self.tp_size:
            raise TopologyError(f"tp rank {self.tp_rank} outside [0, {self.tp_size})")

    @property
    def world_size(self) -> int:
        """Workers in this pipeline (its process group's size)."""
        return self.pp_size * self.tp_size

    @property
    def rank(self) -> int:
        """This worker's rank inside its pipeline's process group."""
        return self.rank_of(self.stage, self.tp_rank)

    @property
    def ordinal(self) -> int:
        """This worker's ordinal in the fleet."""
        return self.pipeline * self.world_size + self.rank

    @property
    def first_ordinal(self) -> int:
        """Ordinal of the pipeline's rank 0 (the rendezvous host)."""
        return self.pipeline * self.world_size

    @property
    def is_first_stage(self) -> bool:
        """Whether this worker embeds the tokens."""
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        """Whether this worker computes the logits."""
        return self.stage == self.pp_size - 1

    @property
    def samples(self) -> bool:
        """Whether this worker samples and returns tokens (last stage, TP rank 0)."""
        return self.is_last_stage and self.tp_rank == 0

    def rank_of(self, stage: int, tp_rank: int) -> int:
        """Rank, in this pipeline's process group, of the worker at (stage, tp_rank)."""
        return stage * self.tp_size + tp_rank

    def stage_ranks(self, stage: int) -> list[int]:
        """Process-group ranks of one stage's tensor-parallel group."""
        return [self.rank_of(stage, r) for r in range(self.tp_size)]


def place_of(ordinal: int, pp_size: int, tp_size: int) -> WorkerPlace:
    """The place of worker `ordinal` in a fleet of pp x tp pipelines."""
    try:
        position = Topology(pp=pp_size, tp=tp_size).position(ordinal)
    except ValueError as exc:
        raise TopologyError(str(exc)) from exc
    return WorkerPlace(position.pipeline, position.stage, position.tp_rank, pp_size, tp_size)


def pipeline_ordinals(pipeline: int, pp_size: int, tp_size: int) -> range:
    """Ordinals of the workers of `pipeline`, in process-group rank order."""
    return Topology(pp=pp_size, tp=tp_size).members(pipeline)


def parse_layer_counts(text: str) -> tuple[int, ...]:
    """ "12,12,8" -> (12, 12, 8): layers per stage, first stage first."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise TopologyError(
            f"layer counts must be comma-separated integers, got {text!r}"
        ) from None
    return counts


def split_layers(
    num_layers: int, pp_size: int, counts: tuple[int, ...] | None = None
) -> list[range]:
    """The layer range of each stage: `counts` if given, else as even as possible, with the
    remainder going to the first stages (the last one also runs the LM head)."""
    if counts is None:
        base, extra = divmod(num_layers, pp_size)
        counts = tuple(base + (1 if s < extra else 0) for s in range(pp_size))
    if len(counts) != pp_size:
        raise TopologyError(f"{len(counts)} layer counts given for {pp_size} stages")
    if sum(counts) != num_layers:
        raise TopologyError(
            f"layer counts {counts} sum to {sum(counts)}, the model has {num_layers}"
        )
    if min(counts) < 1:
        raise TopologyError(f"every stage needs at least one layer, got {counts}")
    ranges, start = [], 0
    for n in counts:
        ranges.append(range(start, start + n))
        start += n
    return ranges
