"""Test doubles for the scheduler core: a fake worker that checks every plan, and helpers.

The fake worker plays a real worker's part without a model: it caches sequences as told by
`new_seqs` / `released_seq_ids`, keeps a fake KV pool (each slot holds a hash of the prefix
that produced it), checks that every step's context is really in the cache, and samples a
token that is a pure function of the sequence so far. So any scheduling bug (a wrong block
table, a lost token, a wrong prefix hit, a recompute that differs) changes the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.request import Request

VOCAB = 50


def next_token(tokens: list[int]) -> int:
    """The fake model: the token that follows `tokens`."""
    return (sum(tokens) * 31 + len(tokens)) % VOCAB


def reference_output(
    prompt: list[int],
    max_tokens: int,
    max_len: int,
    stop_ids: frozenset[int] = frozenset(),
) -> tuple[list[int], str]:
    """What a correct engine generates for `prompt` with the fake model, and why it stops."""
    tokens, out = list(prompt), []
    while True:
        token = next_token(tokens)
        tokens.append(token)
        out.append(token)
        if token in stop_ids:
            return out, "stop"
        if len(out) >= max_tokens or len(tokens) >= max_len:
            return out, "length"


def make_request(
    request_id: str,
    prompt: list[int] | int,
    max_tokens: int = 8,
    *,
    arrival_time: float | None = None,
    **kwargs,
) -> Request:
    """A request with greedy sampling; `prompt` may be a length (tokens 1, 2, ...)."""
    if isinstance(prompt, int):
        prompt = [(i % (VOCAB - 1)) + 1 for i in range(prompt)]
    if arrival_time is not None:
        kwargs["arrival_time"] = arrival_time
    return Request(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        sampling=worker_pb2.SamplingParams(temperature=0.0),
        max_tokens=max_tokens,
        **kwargs,
    )


@dataclass
class _Seq:
    tokens: list[int]
    blocks: list[int]
    prefix_hashes: list[int] = field(default_factory=list)

    def prefix_hash(self, position: int) -> int:
        """A stand-in for the KV at `position`: it depends on every token up to it."""
        while len(self.prefix_hashes) <= position:
            i = len(self.prefix_hashes)
            parent = self.prefix_hashes[-1] if self.prefix_hashes else 0
            self.prefix_hashes.append(hash((parent, self.tokens[i])))
        return self.prefix_hashes[position]


class FakeWorker:
    """Runs plans in order against a fake KV pool; raises AssertionError on a bad plan."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv: dict[tuple[int, int], int] = {}
        self.seqs: dict[str, _Seq] = {}
        self.next_step_id = 1

    def execute(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Run one plan; return the sampled tokens."""
        assert plan.step_id == self.next_step_id, "plans must come in step order"
        self.next_step_id += 1
        for new in plan.new_seqs:
            assert new.seq_id not in self.seqs, f"{new.seq_id} joined twice"
            tokens = list(new.prompt_token_ids) + list(new.output_token_ids)
            self.seqs[new.seq_id] = _Seq(tokens, list(new.block_ids))
        for seq_id in plan.released_seq_ids:
            assert seq_id in self.seqs, f"released unknown {seq_id}"
            del self.seqs[seq_id]
        result = worker_pb2.StepResult(step_id=plan.step_id)
        for step in plan.steps:
            self._run_step(step, result)
        return result

    def _run_step(self, step: worker_pb2.SequenceStep, result: worker_pb2.StepResult) -> None:
        seq = self.seqs[step.seq_id]
        bs = self.block_size
        seq.blocks.extend(step.new_block_ids)
        assert all(0 <= b < self.num_blocks for b in seq.blocks)
        assert len(set(seq.blocks)) == len(seq.blocks), "block twice in one table"
        start, ids = step.start_position, list(step.token_ids)
        if step.input_is_last_sampled:  # overlapped scheduling: the token sampled last step
            assert len(ids) == 1 and start == len(seq.tokens) - 1, f"{step.seq_id}: bad lookahead"
            ids = [seq.tokens[start]]
        end = start + len(ids)
        assert ids, "a step computes at least one token"
        assert ids == seq.tokens[start:end], f"{step.seq_id}: wrong input tokens"
        assert len(seq.blocks) * bs >= end, f"{step.seq_id}: block table too short"
        for pos in range(start):
            slot = (seq.blocks[pos // bs], pos % bs)
            assert self.kv.get(slot) == seq.prefix_hash(pos), f"{step.seq_id}: KV at {pos} lost"
        for pos in range(start, end):
            self.kv[(seq.blocks[pos // bs], pos % bs)] = seq.prefix_hash(pos)
        if step.sample:
            assert end == len(seq.tokens), f"{step.seq_id}: sampled before its last token"
            token = next_token(seq.tokens)
            seq.tokens.append(token)
            result.tokens.add(seq_id=step.seq_id, token_id=token, logprob=-0.5)
        else:
            assert end < len(seq.tokens), f"{step.seq_id}: no sample after its last token"


class Harness:
    """A scheduler driven against a FakeWorker: one plan in flight at a time, or, with
    `config.overlap`, the next plan scheduled before the current one has run."""

    def __init__(self, config, eos_token_ids=()) -> None:
        from orca_scheduler.core.scheduler import Scheduler

        self.sched = Scheduler(config, eos_token_ids)
        self.worker = FakeWorker(config.num_kv_blocks, config.block_size)
        self.outputs: dict[str, list[int]] = {}
        self.reasons: dict[str, str] = {}
        self.plans: list[worker_pb2.StepPlan] = []
        self.pending: list[worker_pb2.StepPlan] = []  # scheduled, not run yet (overlap)

    def add(self, *requests: Request) -> None:
        """Add requests to the scheduler."""
        for request in requests:
            self.sched.add_request(request)
            self.outputs[request.request_id] = list(request.output_token_ids)

    def record(self, updates) -> None:
        """Fold updates into outputs and reasons; a finished request gets no more updates."""
        for update in updates:
            assert update.request_id not in self.reasons, f"update after finish: {update}"
            self.outputs[update.request_id].extend(update.new_token_ids)
            if update.finished:
                self.reasons[update.request_id] = update.finish_reason

    def step(self) -> worker_pb2.StepPlan | None:
        """Schedule (as many plans as the scheduler gives), run and apply the oldest; None
        when nothing was scheduled or pending."""
        while (plan := self.sched.schedule()) is not None:
            self.sched.check_invariants()
            self.plans.append(plan)
            self.pending.append(plan)
            if not self.sched.config.overlap:
                break
        self.sched.check_invariants()
        if not self.pending:
            return None
        plan = self.pending.pop(0)
        self.record(self.sched.update(self.worker.execute(plan)))
        self.sched.check_invariants()
        return plan

    def run(self, max_steps: int = 10_000) -> None:
        """Step until every request is done, then flush releases to the worker."""
        for _ in range(max_steps):
            if not self.sched.has_unfinished():
                while self.step() is not None:
                    pass
                return
            assert self.step() is not None, "unfinished requests but no plan"
        raise AssertionError("did not finish")
