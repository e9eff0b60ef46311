"""Turns one step's scheduling decisions into a `StepPlan`, tracking what workers know.

Workers cache each sequence's prompt, sampling parameters and block table, so a plan
carries a sequence in full only when it joins (`new_seqs`) and afterwards only deltas: the
step's input tokens and the blocks appended since the workers last saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.request import Request


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """One request's work in one step: its next `num_tokens` uncomputed tokens, or (a
    lookahead step, overlapped scheduling) the one token its in-flight step will sample."""

    request: Request
    num_tokens: int
    sample: bool  # the step computes the request's last token, so a new token is sampled
    lookahead: bool = False  # the input is the token the previous plan samples


class PlanBuilder:
    """Builds plans with increasing step ids and remembers each sequence's block table
    length on the workers, and which sequences the workers must drop."""

    def __init__(self) -> None:
        self._next_step_id = 1
        self._blocks_on_workers: dict[str, int] = {}
        self._to_release: dict[str, None] = {}  # ordered set

    @property
    def has_pending_releases(self) -> bool:
        """Whether the next plan must carry released sequence ids."""
        return bool(self._to_release)

    def is_pending_release(self, seq_id: str) -> bool:
        """Whether `seq_id` waits to be released; it cannot join again until it is, because
        workers apply a plan's releases after its new sequences."""
        return seq_id in self._to_release

    def release(self, seq_id: str) -> None:
        """Have the next plan tell workers to drop `seq_id` (no-op if they never saw it)."""
        if self._blocks_on_workers.pop(seq_id, None) is not None:
            self._to_release[seq_id] = None

    def build(self, batch: Sequence[ScheduledStep]) -> worker_pb2.StepPlan:
        """The plan for `batch` (in batch order), flushing pending releases."""
        plan = worker_pb2.StepPlan(step_id=self._next_step_id, released_seq_ids=self._to_release)
        self._next_step_id += 1
        self._to_release = {}
        for scheduled in batch:
            request = scheduled.request
            seq_id = request.request_id
            known = self._blocks_on_workers.get(seq_id)
            if known is None:
                if seq_id in plan.released_seq_ids:
                    raise AssertionError(f"{seq_id} joins in the plan that releases it")
                plan.new_seqs.add(
                    seq_id=seq_id,
                    prompt_token_ids=request.prompt_token_ids,
                    output_token_ids=request.output_token_ids,
                    sampling=request.sampling,
                    block_ids=request.block_ids,
                )
                known = len(request.block_ids)
            if scheduled.lookahead:  # at the position of the token still being sampled
                start, token_ids = request.num_tokens, [0]
            else:
                start = request.num_computed_tokens
                token_ids = request.token_slice(start, start + scheduled.num_tokens)
            plan.steps.add(
                seq_id=seq_id,
                start_position=start,
                token_ids=token_ids,
                new_block_ids=request.block_ids[known:],
                sample=scheduled.sample,
                input_is_last_sampled=scheduled.lookahead,
            )
            self._blocks_on_workers[seq_id] = len(request.block_ids)
        return plan
