"""Pipeline parallelism: cut a built model down to one stage, and move a step's carried
tensors from a stage to the next.

Each boundary message is a header, int64 (step_id, ok, num_tokens) over the control group,
then (when ok and num_tokens > 0) one [carried_tensors, num_tokens, hidden] tensor over the
device backend. The receiver knows the shape from its own copy of the plan; the header lets
it check that both stages run the same step, and tells it when an earlier stage failed the
step (then no activations follow), so that no stage waits for tensors that never come.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from orca_worker.models.base import Carry, CausalLM
from orca_worker.parallel.distributed import ParallelComm


def prune_to_stage(model: CausalLM, layers: range, first: bool, last: bool) -> None:
    """Drop (on the meta device, before anything is allocated) every module this stage does
    not run: other stages' layers, the embeddings unless first, the head unless last. A last
    stage whose LM head is tied to the token embedding keeps that embedding."""
    stack = model.get_submodule(model.layer_stack)
    for i in range(len(stack)):
        if i not in layers:
            stack[i] = None
    drop = [] if first else list(model.first_stage_modules)
    if not last:
        drop += model.last_stage_modules
    elif model.config.tie_word_embeddings and model.token_embedding in drop:
        drop.remove(model.token_embedding)
    for path in drop:
        parent, _, leaf = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if hasattr(owner, leaf):
            setattr(owner, leaf, None)


@dataclass(frozen=True)
class StepHeader:
    """What a stage tells the next one about a step, ahead of its activations."""

    step_id: int
    ok: bool
    num_tokens: int


class StageLink:
    """This worker's links to its peers (same TP rank) in the previous and next stages."""

    def __init__(
        self,
        comm: ParallelComm,
        carried_tensors: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.comm = comm
        self.carried_tensors = carried_tensors
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.device = device
        stage = comm.place.stage
        self.prev_stage = stage - 1 if stage > 0 else None
        self.next_stage = stage + 1 if stage < comm.place.pp_size - 1 else None
        # Sends in flight, with the tensors they read: waited for before the next send, so a
        # stage can run step k+1 while the next stage has not yet taken step k.
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []

    def recv_header(self) -> StepHeader:
        """The previous stage's header of its next step."""
        assert self.prev_stage is not None
        values = torch.empty(3, dtype=torch.int64)
        self.comm.recv_control(values, self.prev_stage)
        step_id, ok, num_tokens = values.tolist()
        return StepHeader(step_id, bool(ok), num_tokens)

    def recv_carry(self, num_tokens: int) -> Carry:
        """The carried tensors that follow an ok header of `num_tokens` tokens."""
        assert self.prev_stage is not None
        shape = (self.carried_tensors, num_tokens, self.hidden_size)
        payload = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.comm.recv_tensor(payload, self.prev_stage)
        return tuple(payload.unbind(0))

    def send(self, header: StepHeader, carry: Carry | None) -> None:
        """Send a step's header, and its carried tensors when it is ok, to the next stage."""
        assert self.next_stage is not None
        self.flush()
        values = torch.tensor([header.step_id, int(header.ok), header.num_tokens])
        self._pending.append((self.comm.send_control(values, self.next_stage), values))
        if header.ok and header.num_tokens > 0:
            assert carry is not None and len(carry) == self.carried_tensors
            payload = torch.stack(carry)
            self._pending.append((self.comm.send_tensor(payload, self.next_stage), payload))

    def flush(self) -> None:
        """Wait until the next stage has taken everything sent so far."""
        for work, _ in self._pending:
            work.wait(self.comm.timeout)
        self._pending.clear()
