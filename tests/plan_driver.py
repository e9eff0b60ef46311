"""A minimal stand-in for the scheduler: hands out blocks and builds StepPlans by hand."""

from __future__ import annotations

import random

from orca_proto.v1 import worker_pb2 as pb
from orca_worker.runner import ModelRunner


class PlanDriver:
    """Tracks each sequence's position and blocks; blocks come from a shuffled free list,
    so block tables are never contiguous."""

    def __init__(self, runner: ModelRunner, seed: int = 0) -> None:
        self.runner = runner
        self.block_size = runner.kv_pool.block_size
        self.free = list(range(runner.kv_pool.num_blocks))
        random.Random(seed).shuffle(self.free)
        self.blocks: dict[str, list[int]] = {}
        self.positions: dict[str, int] = {}
        self.pending: list[pb.NewSequence] = []
        self.step_id = 0

    def add(self, seq_id: str, prompt: list[int], output: list[int] = (), **sampling) -> None:
        """Announce a sequence in the next plan."""
        self.pending.append(
            pb.NewSequence(
                seq_id=seq_id,
                prompt_token_ids=prompt,
                output_token_ids=list(output),
                sampling=pb.SamplingParams(**sampling),
            )
        )
        self.blocks[seq_id] = []
        self.positions[seq_id] = 0

    def plan(
        self, work: list[tuple[str, list[int], bool]], released: tuple[str, ...] = ()
    ) -> pb.StepPlan:
        """The next plan: `work` is (seq id, input tokens, sample?) in batch order."""
        steps = []
        for seq_id, tokens, sample in work:
            start = self.positions[seq_id]
            end = start + len(tokens)
            needed = -(-end // self.block_size) - len(self.blocks[seq_id])
            new_blocks = [self.free.pop() for _ in range(max(needed, 0))]
            self.blocks[seq_id] += new_blocks
            self.positions[seq_id] = end
            steps.append(
                pb.SequenceStep(
                    seq_id=seq_id,
                    start_position=start,
                    token_ids=tokens,
                    new_block_ids=new_blocks,
                    sample=sample,
                )
            )
        for seq_id in released:
            self.free += self.blocks.pop(seq_id)
            del self.positions[seq_id]
        plan = pb.StepPlan(
            step_id=self.step_id, new_seqs=self.pending, steps=steps, released_seq_ids=released
        )
        self.pending = []
        self.step_id += 1
        return plan

    def run(
        self, work: list[tuple[str, list[int], bool]], released: tuple[str, ...] = ()
    ) -> pb.StepResult:
        """Build and execute the next plan; fails the test on a StepResult.error."""
        result = self.runner.execute(self.plan(work, released))
        assert result.error == "", result.error
        return result
