"""Turns a StepPlan into the packed input of one forward, validating it first.

Validation happens before anything changes: `prepare_batch` only reads the worker's
sequence table and stages every change in the returned `PreparedBatch`; the runner
applies them with `commit` once the step has run. A bad plan leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from orca_proto.v1 import worker_pb2
from orca_worker.attention import AttentionMetadata, HostLayout
from orca_worker.errors import InvalidPlanError
from orca_worker.host_staging import HostStaging
from orca_worker.sampler import SequenceSamplingState


@dataclass
class SequenceState:
    """What a worker caches per sequence: sampling inputs and the block table."""

    sampling: SequenceSamplingState
    block_ids: list[int]


@dataclass(frozen=True)
class BatchLimits:
    """Bounds a plan must respect (from the model and the KV pool)."""

    vocab_size: int
    max_model_len: int
    num_kv_blocks: int
    block_size: int


@dataclass
class PreparedBatch:
    """A validated plan: packed tensors for the forward plus the staged state changes."""

    sampled_seq_ids: list[str]  # plan order
    sampled_states: list[SequenceSamplingState]
    added: dict[str, SequenceState]
    released: list[str]
    block_tables: dict[str, list[int]]  # of the plan's sequences, after this step's appends
    # The forward's inputs; None when the plan has no steps.
    input_ids: torch.Tensor | None = None  # [T]
    positions: torch.Tensor | None = None  # [T]
    meta: AttentionMetadata | None = None
    sample_indices: torch.Tensor | None = None  # [num sampled] rows of the packed hidden


def prepare_batch(
    plan: worker_pb2.StepPlan,
    seqs: dict[str, SequenceState],
    limits: BatchLimits,
    device: torch.device,
    staging: HostStaging | None = None,
) -> PreparedBatch:
    """Validate `plan` against `seqs` (unchanged) and build the step's inputs: computed on
    the host, then moved to `device` in one copy per dtype through `staging` (the runner
    keeps one, so its pinned buffers are reused; None: a fresh one)."""
    added = _stage_new_seqs(plan, seqs, limits)
    released = list(dict.fromkeys(plan.released_seq_ids))
    # The table the steps see: existing and new sequences, minus those released now.
    visible = {**seqs, **added}
    for seq_id in released:
        visible.pop(seq_id, None)

    input_ids: list[int] = []
    starts, lens, tables = [], [], []
    sample_rows: list[int] = []
    sampled_ids: list[str] = []
    block_tables: dict[str, list[int]] = {}
    for step in plan.steps:
        state = visible.get(step.seq_id)
        if state is None:
            raise InvalidPlanError(f"step for unknown sequence {step.seq_id!r}")
        if step.seq_id in block_tables:
            raise InvalidPlanError(f"sequence {step.seq_id!r} appears twice in the plan")
        table = state.block_ids + list(step.new_block_ids)
        _check_step(step, table, limits)
        block_tables[step.seq_id] = table
        n = len(step.token_ids)
        if step.input_is_last_sampled:
            input_ids.append(_last_sampled(step, state))
        else:
            input_ids.extend(step.token_ids)
        starts.append(step.start_position)
        lens.append(n)
        tables.append(table)
        if step.sample:
            sample_rows.append(len(input_ids) - 1)
            sampled_ids.append(step.seq_id)

    batch = PreparedBatch(
        sampled_seq_ids=sampled_ids,
        sampled_states=[visible[s].sampling for s in sampled_ids],
        added=added,
        released=released,
        block_tables=block_tables,
    )
    if input_ids:
        layout = HostLayout.compute(starts, lens, tables, limits.block_size)
        staging = staging or HostStaging(device)
        ids, positions, samples, *meta64 = staging.upload(
            [
                np.asarray(input_ids, dtype=np.int64),
                layout.positions,
                np.asarray(sample_rows, dtype=np.int64),
                *layout.int64_arrays(),
            ]
        )
        meta32 = staging.upload(layout.int32_arrays())
        batch.input_ids, batch.positions, batch.sample_indices = ids, positions, samples
        batch.meta = AttentionMetadata.from_layout(
            layout, limits.block_size, tuple(meta64), tuple(meta32)
        )
    return batch


def commit(
    batch: PreparedBatch, seqs: dict[str, SequenceState], sampled_token_ids: list[int] | None
) -> None:
    """Apply the staged changes of a step that ran, and record its sampled tokens (None on a
    worker that does not sample: only the sampler reads them)."""
    seqs.update(batch.added)
    for seq_id in batch.released:
        seqs.pop(seq_id, None)  # releasing an unknown id is a no-op (idempotent)
    for seq_id, table in batch.block_tables.items():
        seqs[seq_id].block_ids = table
    if sampled_token_ids is not None:
        for state, token_id in zip(batch.sampled_states, sampled_token_ids, strict=True):
            state.output_token_ids.append(token_id)


def _stage_new_seqs(
    plan: worker_pb2.StepPlan, seqs: dict[str, SequenceState], limits: BatchLimits
) -> dict[str, SequenceState]:
    added: dict[str, SequenceState] = {}
    for new in plan.new_seqs:
        if new.seq_id in seqs or new.seq_id in added:
            raise InvalidPlanError(f"new sequence {new.seq_id!r} is already tracked")
        _check_blocks(new.seq_id, new.block_ids, limits)
        _check_tokens(new.seq_id, new.prompt_token_ids, limits)
        _check_tokens(new.seq_id, new.output_token_ids, limits)
        sampling = worker_pb2.SamplingParams()
        sampling.CopyFrom(new.sampling)
        added[new.seq_id] = SequenceState(
            SequenceSamplingState(sampling, list(new.prompt_token_ids), list(new.output_token_ids)),
            list(new.block_ids),
        )
    return added


def _last_sampled(step: worker_pb2.SequenceStep, state: SequenceState) -> int:
    """The input of a lookahead step (overlapped scheduling): the sequence's last token,
    sampled by this worker in its previous step. InvalidPlanError unless the step is one
    token at that token's position."""
    sampling = state.sampling
    last_position = len(sampling.prompt_token_ids) + len(sampling.output_token_ids) - 1
    if len(step.token_ids) != 1 or step.start_position != last_position:
        raise InvalidPlanError(
            f"lookahead step for {step.seq_id!r} must be one token at position {last_position}, "
            f"got {len(step.token_ids)} at {step.start_position}"
        )
    if not sampling.output_token_ids:
        raise InvalidPlanError(f"lookahead step for {step.seq_id!r}, which has sampled nothing")
    return sampling.output_token_ids[-1]


def _check_step(step: worker_pb2.SequenceStep, table: list[int], limits: BatchLimits) -> None:
    seq = step.seq_id
    if not step.token_ids:
        raise InvalidPlanError(f"step for {seq!r} has no input tokens")
    if step.start_position < 0:
        raise InvalidPlanError(
            f"step for {seq!r} starts at negative position {step.start_position}"
        )
    end = step.start_position + len(step.token_ids)
    if end > limits.max_model_len:
        raise InvalidPlanError(
            f"step for {seq!r} reaches position {end - 1}, beyond max_model_len {limits.max_model_len}"
        )
    if end > len(table) * limits.block_size:
        raise InvalidPlanError(
            f"step for {seq!r} reaches position {end - 1} but its {len(table)} blocks hold "
            f"{len(table) * limits.block_size} tokens"
        )
    _check_blocks(seq, step.new_block_ids, limits)
    _check_tokens(seq, step.token_ids, limits)


def _check_blocks(seq_id: str, block_ids, limits: BatchLimits) -> None:
    bad = [b for b in block_ids if not 0 <= b < limits.num_kv_blocks]
    if bad:
        raise InvalidPlanError(
            f"sequence {seq_id!r}: block id {bad[0]} outside the pool [0, {limits.num_kv_blocks})"
        )


def _check_tokens(seq_id: str, token_ids, limits: BatchLimits) -> None:
    # An out-of-range id would fault the embedding lookup (a device assert on GPU).
    bad = [t for t in token_ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise InvalidPlanError(
            f"sequence {seq_id!r}: token id {bad[0]} outside the vocabulary [0, {limits.vocab_size})"
        )
