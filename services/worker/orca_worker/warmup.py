"""The plans a worker runs on itself before it serves: every kernel variant a real step can
need is compiled then, not in the middle of the first requests.

Triton compiles a kernel variant per set of constexprs; the kernels derive theirs from a
step's token count as powers of two capped at 32 or below (see orca_kernels.dispatch), so
prefills of 1, 2, 3, 5, ..., 129 tokens, a mixed prefill-and-decode step and a sampled
(non-greedy) sequence reach every one. The plans use the KV pool's first blocks, which no
request owns yet, and release every sequence at the end.
"""

from __future__ import annotations

from orca_proto.v1 import worker_pb2

# Prompt lengths: one in each power-of-two bucket from 1 to 256 tokens.
PROMPT_LENGTHS = (1, 2, 3, 5, 9, 17, 33, 65, 129)
SEQ_PREFIX = "__warmup-"


def warmup_plans(
    num_kv_blocks: int, block_size: int, max_model_len: int, vocab_size: int
) -> list[worker_pb2.StepPlan]:
    """The warm-up: one prefill plan per length that fits the pool and the model, then one
    step that decodes them all beside a new prefill, then one that releases them."""
    token = min(1, vocab_size - 1)
    plans: list[worker_pb2.StepPlan] = []
    lengths: dict[str, int] = {}
    next_block = 0

    def blocks_for(tokens: int) -> list[int] | None:
        nonlocal next_block
        count = -(-tokens // block_size)
        if next_block + count > num_kv_blocks:
            return None
        ids = list(range(next_block, next_block + count))
        next_block += count
        return ids

    def prefill(plan: worker_pb2.StepPlan, seq_id: str, length: int, sampled: bool) -> bool:
        # Room for one decode token after the prompt.
        if length + 1 > max_model_len or (blocks := blocks_for(length + 1)) is None:
            return False
        new = plan.new_seqs.add(seq_id=seq_id, prompt_token_ids=[token] * length)
        new.block_ids.extend(blocks)
        if sampled:
            new.sampling.temperature, new.sampling.top_p, new.sampling.top_k = 0.8, 0.9, 50
        plan.steps.add(seq_id=seq_id, start_position=0, token_ids=[token] * length, sample=True)
        lengths[seq_id] = length
        return True

    for i, length in enumerate(PROMPT_LENGTHS):
        plan = worker_pb2.StepPlan(step_id=len(plans))
        if prefill(plan, f"{SEQ_PREFIX}{i}", length, sampled=i == 0):
            plans.append(plan)
    if not plans:
        return plans
    mixed = worker_pb2.StepPlan(step_id=len(plans))
    for seq_id, length in lengths.items():
        mixed.steps.add(seq_id=seq_id, start_position=length, token_ids=[token], sample=True)
    prefill(mixed, f"{SEQ_PREFIX}mixed", PROMPT_LENGTHS[5], sampled=False)
    plans.append(mixed)
    plans.append(worker_pb2.StepPlan(step_id=len(plans), released_seq_ids=list(lengths)))
    return plans
