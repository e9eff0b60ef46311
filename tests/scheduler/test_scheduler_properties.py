"""Property tests: random workloads against the fake worker, with invariants checked after
every schedule() and update().

Random arrivals, prompt lengths (with shared prefixes), max_tokens, priorities, aborts, token
and sequence budgets, pool sizes, KV policies, prefix caching on/off and pipeline depths
1..3 with results delivered late. The fake worker checks every plan against a real worker's
view (block tables, cached KV, input tokens), so the outputs must equal the reference model's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_fakes import VOCAB, FakeWorker, make_request, reference_output

from orca_scheduler.core.block_manager import cdiv
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.errors import PromptTooLongError
from orca_scheduler.core.scheduler import Scheduler

TOKENS = st.integers(1, VOCAB - 1)


@dataclass
class Spec:
    request_id: str
    prompt: list[int]
    max_tokens: int
    priority: int
    stop_ids: frozenset[int]
    ignore_eos: bool
    arrival_tick: int
    abort_tick: int | None


@st.composite
def workloads(draw):
    overlap = draw(st.booleans())
    config = SchedulerConfig(
        num_kv_blocks=draw(st.integers(1, 24)),
        max_model_len=draw(st.integers(2, 64)),
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(1, 40)),
        block_size=draw(st.sampled_from([1, 2, 4, 8])),
        kv_policy=draw(st.sampled_from(["paged", "reserve"])),
        enable_prefix_caching=draw(st.booleans()),
        pipeline_depth=1 if overlap else draw(st.integers(1, 3)),
        overlap=overlap,
    )
    prefixes = draw(st.lists(st.lists(TOKENS, max_size=20), min_size=1, max_size=3)) + [[]]
    specs = []
    for i in range(draw(st.integers(1, 10))):
        prompt = draw(st.sampled_from(prefixes)) + draw(st.lists(TOKENS, max_size=12))
        specs.append(
            Spec(
                request_id=f"r{i}",
                prompt=prompt or [1],
                max_tokens=draw(st.integers(1, 20)),
                priority=draw(st.sampled_from([0, 0, 0, 1])),
                stop_ids=frozenset(draw(st.lists(TOKENS, max_size=2))),
                ignore_eos=draw(st.booleans()),
                arrival_tick=draw(st.integers(0, 15)),
                abort_tick=draw(st.none() | st.integers(0, 40)),
            )
        )
    # An EOS that never occurs (so lengths are exact), or one that may.
    eos = draw(st.sampled_from([[], [VOCAB + 1], [draw(TOKENS)]]))
    return config, specs, eos, draw(st.randoms(use_true_random=False))


def rejected(config: SchedulerConfig, spec: Spec) -> bool:
    """Whether add_request must raise PromptTooLongError for this request."""
    n, bs = len(spec.prompt), config.block_size
    if n + 1 > config.max_model_len or cdiv(n, bs) > config.num_kv_blocks:
        return True
    reserved = min(n + spec.max_tokens, config.max_model_len)
    return config.kv_policy == "reserve" and cdiv(reserved, bs) > config.num_kv_blocks


class Simulation:
    """Drives a scheduler with a fake worker and checks it after every call."""

    def __init__(self, config, specs, eos, rnd):
        self.config, self.eos, self.rnd = config, frozenset(eos), rnd
        self.specs = sorted(specs, key=lambda s: s.arrival_tick)
        self.sched = Scheduler(config, eos)
        self.worker = FakeWorker(config.num_kv_blocks, config.block_size)
        self.in_flight: deque = deque()  # (plan, result): executed in order, applied late
        self.accepted: dict[str, Spec] = {}
        self.order: dict[str, int] = {}  # admission order key per accepted request
        self.outputs: dict[str, list[int]] = {}
        self.reasons: dict[str, str] = {}
        self.first_scheduled: set[str] = set()

    def run(self) -> None:
        arrivals = deque(self.specs)
        for tick in range(5000):
            while arrivals and arrivals[0].arrival_tick <= tick:
                self.add(arrivals.popleft())
            for spec in self.specs:
                if spec.abort_tick == tick and spec.request_id in self.accepted:
                    self.record(self.sched.abort_request(spec.request_id))
            if not arrivals and not self.sched.has_unfinished() and not self.in_flight:
                break
            plan = self.sched.schedule()
            self.sched.check_invariants()
            if plan is not None:
                self.check_plan(plan)
                self.in_flight.append((plan, self.worker.execute(plan)))
            elif self.sched.has_unfinished():
                assert self.in_flight, "requests wait but nothing is in flight or scheduled"
            depth = 2 if self.config.overlap else self.config.pipeline_depth
            deliver = plan is None or len(self.in_flight) == depth
            if self.in_flight and (deliver or self.rnd.random() < 0.5):
                _, result = self.in_flight.popleft()
                for update in self.sched.update(result):
                    self.record(update)
                self.sched.check_invariants()
        else:
            raise AssertionError("the workload did not finish")
        while (plan := self.sched.schedule()) is not None:  # flush releases
            assert not plan.steps
            self.sched.update(self.worker.execute(plan))

    def add(self, spec: Spec) -> None:
        request = make_request(
            spec.request_id,
            spec.prompt,
            spec.max_tokens,
            arrival_time=float(len(self.order) + len(self.outputs) + spec.arrival_tick * 1000),
            priority=spec.priority,
            stop_token_ids=spec.stop_ids,
            ignore_eos=spec.ignore_eos,
        )
        try:
            self.sched.add_request(request)
        except PromptTooLongError:
            assert rejected(self.config, spec), f"{spec} rejected wrongly"
            return
        assert not rejected(self.config, spec), f"{spec} should be rejected"
        self.accepted[spec.request_id] = spec
        self.order[spec.request_id] = len(self.order)
        self.outputs[spec.request_id] = []

    def record(self, update) -> None:
        if update is None:
            return
        assert update.request_id not in self.reasons, "update after finish"
        self.outputs[update.request_id].extend(update.new_token_ids)
        if update.finished:
            self.reasons[update.request_id] = update.finish_reason
        else:
            assert update.finish_reason is None

    def check_plan(self, plan) -> None:
        cfg = self.config
        ids = [s.seq_id for s in plan.steps]
        assert sum(len(s.token_ids) for s in plan.steps) <= cfg.max_num_batched_tokens
        assert len(ids) <= cfg.max_num_seqs and self.sched.num_running <= cfg.max_num_seqs
        assert len(set(ids)) == len(ids)
        busy = {s.seq_id for p, _ in self.in_flight for s in p.steps}
        lookahead = {s.seq_id for s in plan.steps if s.input_is_last_sampled}
        assert not busy & (set(ids) - lookahead), "a sequence in two in-flight plans"
        assert cfg.overlap or not lookahead, "a lookahead step without overlap"
        for step in plan.steps:
            if step.input_is_last_sampled:  # one more decode of a sampling step in flight
                assert len(step.token_ids) == 1 and step.sample
                assert sum(step.seq_id == s.seq_id for p, _ in self.in_flight
                           for s in p.steps if s.sample) == 1  # fmt: skip
        for new in plan.new_seqs:
            if new.seq_id in self.first_scheduled:
                continue  # re-joining after a preemption: it may jump ahead
            spec = self.accepted[new.seq_id]
            for other, other_spec in self.accepted.items():
                earlier = self.order[other] < self.order[new.seq_id]
                if earlier and other_spec.priority == spec.priority:
                    assert other in self.first_scheduled or other in self.reasons, (
                        f"FCFS: {new.seq_id} admitted before earlier {other}"
                    )
            self.first_scheduled.add(new.seq_id)

    def check_final(self) -> None:
        sched = self.sched
        assert sched.block_manager.num_free_blocks == self.config.num_kv_blocks
        assert sched.kv_usage == 0 and sched.num_in_flight == 0
        sched.check_invariants()
        assert self.worker.seqs == {}, "workers still cache released sequences"
        max_len = min(self.config.max_model_len, self.config.num_kv_blocks * self.config.block_size)
        for rid, spec in self.accepted.items():
            stops = spec.stop_ids | (frozenset() if spec.ignore_eos else self.eos)
            expected, reason = reference_output(spec.prompt, spec.max_tokens, max_len, stops)
            if self.reasons[rid] == "abort":
                assert self.outputs[rid] == expected[: len(self.outputs[rid])]
            else:
                assert (self.outputs[rid], self.reasons[rid]) == (expected, reason), rid
                if not stops:
                    room = max(max_len - len(spec.prompt), 1)  # always at least one token
                    assert len(self.outputs[rid]) == min(spec.max_tokens, room)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_random_workloads(workload):
    sim = Simulation(*workload)
    sim.run()
    sim.check_final()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_no_aborts_everything_finishes(workload):
    config, specs, eos, rnd = workload
    for spec in specs:
        spec.abort_tick = None
    sim = Simulation(config, specs, eos, rnd)
    sim.run()
    sim.check_final()
    assert set(sim.reasons) == set(sim.accepted)
    assert all(reason in ("stop", "length") for reason in sim.reasons.values())
