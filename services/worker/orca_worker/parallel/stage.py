"""This worker's part of one step's forward, and the agreement that keeps a pipeline in step.

Every worker of a pipeline gets every plan, in the same order, and validates it the same
way, so all reach the same verdict; but a verdict can still differ (a draining worker, a
worker that restarted its scheduler stream). So before any collective of a step: a stage
learns from the previous stage's header whether the step is still good, and the TP ranks
of a stage exchange their verdicts. A failed step then fails everywhere, at once, and the
next plan runs normally. Workers that disagree on which step they run are out of step for
good: that raises PipelineBrokenError.
"""

from __future__ import annotations

import torch

from orca_worker.batch import PreparedBatch
from orca_worker.config import ModelConfig
from orca_worker.errors import PipelineBrokenError
from orca_worker.loader import load_model
from orca_worker.models.base import Carry, CausalLM
from orca_worker.parallel.distributed import ParallelComm
from orca_worker.parallel.pp import StageLink, StepHeader, prune_to_stage
from orca_worker.parallel.topology import WorkerPlace, split_layers
from orca_worker.parallel.tp import shard_model

UPSTREAM_FAILED = "an earlier pipeline stage failed this step"
PEER_FAILED = "another tensor-parallel rank of this stage failed this step"


def build_stage(
    config: ModelConfig,
    model_dir: str,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str,
    seed: int,
    place: WorkerPlace,
    pp_layers: tuple[int, ...] | None,
    comm: ParallelComm | None,
) -> StageForward:
    """Load this worker's part of the model (its stage's layers, its TP shard of them) and
    link it to its neighbouring stages."""
    layers = split_layers(config.num_layers, place.pp_size, pp_layers)[place.stage]

    def prepare(model: CausalLM) -> None:  # on the meta device, before any allocation
        prune_to_stage(model, layers, place.is_first_stage, place.is_last_stage)
        if comm is not None:
            shard_model(model, place.tp_rank, place.tp_size, comm)

    model = load_model(config, model_dir, dtype, device, load_format, seed, prepare)
    link = None
    if comm is not None and place.pp_size > 1:
        link = StageLink(comm, model.carried_tensors, config.hidden_size, dtype, device)
    return StageForward(model, layers, comm, link)


class StageForward:
    """Runs layers `layers` of `model` for a step; embeds on the first stage, finishes on the
    last. Without `comm` (tp = pp = 1) it is the plain forward."""

    def __init__(
        self,
        model: CausalLM,
        layers: range,
        comm: ParallelComm | None = None,
        link: StageLink | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.comm = comm
        self.link = link
        self.first = link is None or link.prev_stage is None
        self.last = link is None or link.next_stage is None

    def forward(
        self, step_id: int, batch: PreparedBatch | None, error: str | None
    ) -> tuple[torch.Tensor | None, str | None]:
        """(final hidden states on the last stage else None, the step's error or None).
        `error` is this worker's own verdict (None: the plan is valid here)."""
        num_tokens = 0 if batch is None or batch.input_ids is None else batch.input_ids.numel()
        carry = None
        if self.link is not None and self.link.prev_stage is not None:
            carry, error = self._receive(step_id, num_tokens, error)
        if self.comm is not None and self.comm.place.tp_size > 1:
            error = self._agree(step_id, num_tokens, error)
        if error is not None or num_tokens == 0:
            self._send(StepHeader(step_id, error is None, 0), None)
            return None, error
        assert batch is not None and batch.positions is not None and batch.meta is not None
        if self.first:
            carry = self.model.embed(batch.input_ids, batch.positions)
        carry = self.model.run_layers(carry, batch.positions, batch.meta, self.layers)
        if not self.last:
            self._send(StepHeader(step_id, True, num_tokens), carry)
            return None, None
        return self.model.finish(carry), None

    def close(self) -> None:
        """Wait until the next stage has taken this stage's last activations."""
        if self.link is not None and self.link.next_stage is not None:
            self.link.flush()

    def _receive(
        self, step_id: int, num_tokens: int, error: str | None
    ) -> tuple[Carry | None, str | None]:
        assert self.link is not None
        header = self.link.recv_header()
        if header.step_id != step_id:
            raise PipelineBrokenError(
                f"stage {self.comm.place.stage} runs step {step_id} but the previous stage "
                f"sent step {header.step_id}"
            )
        carry = None
        if header.ok and header.num_tokens > 0:
            # Taken even when this worker fails the step: the sender must not wait for it.
            carry = self.link.recv_carry(header.num_tokens)
        if error is None and not header.ok:
            error = UPSTREAM_FAILED
        if error is None and header.num_tokens != num_tokens:
            raise PipelineBrokenError(
                f"step {step_id}: the previous stage sent {header.num_tokens} tokens, "
                f"this stage's plan has {num_tokens}"
            )
        return carry, error

    def _agree(self, step_id: int, num_tokens: int, error: str | None) -> str | None:
        assert self.comm is not None
        rows = self.comm.tp_gather_control([step_id, int(error is None), num_tokens])
        if any(row[0] != step_id for row in rows):
            raise PipelineBrokenError(
                f"tensor-parallel ranks run different steps: {[row[0] for row in rows]}"
            )
        if error is None and not all(row[1] for row in rows):
            return PEER_FAILED
        if error is None and any(row[2] != num_tokens for row in rows):
            raise PipelineBrokenError(f"tensor-parallel ranks disagree on step {step_id}'s batch")
        return error

    def _send(self, header: StepHeader, carry: Carry | None) -> None:
        if self.link is not None and self.link.next_stage is not None:
            self.link.send(header, carry)
