"""Scheduler policy: budgets, chunked prefill, FCFS, preemption, KV policies, stops, aborts,
prefix caching and pipelining, each on a small hand-made case."""

from __future__ import annotations

import pytest
from scheduler_fakes import FakeWorker, Harness, make_request, next_token, reference_output

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    PromptTooLongError,
    WorkerStepError,
)
from orca_scheduler.core.request import RequestStatus
from orca_scheduler.core.scheduler import Scheduler


def config(**kwargs) -> SchedulerConfig:
    defaults = dict(num_kv_blocks=64, max_model_len=256, block_size=4)
    return SchedulerConfig(**(defaults | kwargs))


def step_sizes(plan) -> dict[str, int]:
    return {s.seq_id: len(s.token_ids) for s in plan.steps}


# ---- config and validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_kv_blocks": 0}, "num_kv_blocks"),
        ({"max_model_len": 1}, "max_model_len"),
        ({"block_size": -1}, "block_size"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
        ({"pipeline_depth": 0}, "pipeline_depth"),
        ({"kv_policy": "greedy"}, "kv_policy"),
        ({"batching": "token"}, "batching"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(**kwargs)


def test_add_request_validation():
    sched = Scheduler(config(num_kv_blocks=4, max_model_len=20), eos_token_ids=[0])
    with pytest.raises(PromptTooLongError, match="max_model_len"):
        sched.add_request(make_request("a", 20))
    with pytest.raises(PromptTooLongError, match="KV pool"):
        sched.add_request(make_request("a", 17))  # 5 blocks of 4 > 4 blocks
    sched.add_request(make_request("a", 16))  # fills the pool exactly: one token of output
    with pytest.raises(DuplicateRequestError):
        sched.add_request(make_request("a", 3))
    with pytest.raises(InvalidRequestError, match="empty"):
        sched.add_request(make_request("b", []))
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        sched.add_request(make_request("b", 3, max_tokens=0))
    reserve = Scheduler(config(num_kv_blocks=4, max_model_len=64, kv_policy="reserve"))
    with pytest.raises(PromptTooLongError, match="reserve"):
        reserve.add_request(make_request("a", 8, max_tokens=9))  # 17 slots > 16
    reserve.add_request(make_request("a", 8, max_tokens=8))
    assert sched.num_waiting == 1 and reserve.num_waiting == 1


def test_prompt_that_fills_the_pool_stops_on_length():
    h = Harness(config(num_kv_blocks=4, max_model_len=100))
    h.add(make_request("a", 16, max_tokens=5))
    h.run()
    assert len(h.outputs["a"]) == 1 and h.reasons["a"] == "length"


# ---- budgets and chunked prefill ---------------------------------------------------------


def test_chunked_prefill_splits_a_long_prompt():
    h = Harness(config(max_num_batched_tokens=32))
    h.add(make_request("long", 100, max_tokens=2))
    sizes = [step_sizes(h.step())["long"] for _ in range(5)]
    assert sizes == [32, 32, 32, 4, 1]
    assert [s.sample for p in h.plans for s in p.steps] == [False, False, False, True, True]
    assert [p.steps[0].start_position for p in h.plans] == [0, 32, 64, 96, 100]


def test_chunked_prefill_mixes_with_decodes():
    h = Harness(config(max_num_batched_tokens=33))
    h.add(make_request("short", 1, max_tokens=10), make_request("long", 100, max_tokens=2))
    plans = [h.step() for _ in range(4)]
    assert [step_sizes(p) for p in plans] == [
        {"short": 1, "long": 32},
        {"short": 1, "long": 32},
        {"short": 1, "long": 32},
        {"short": 1, "long": 4},
    ]
    # Running first, then the newcomer; the long prompt samples only after its last chunk.
    assert [[s.seq_id for s in p.steps] for p in plans] == [["short", "long"]] * 4
    assert [p.steps[1].sample for p in plans] == [False, False, False, True]
    assert len(h.outputs["short"]) == 4 and len(h.outputs["long"]) == 1


def test_request_level_batching_waits_for_the_whole_batch():
    """The paper's baseline: no request joins a running batch, even when one of its requests
    has finished and left room; the next batch forms once the last one is done."""
    for batching, joins_early in (("request", False), ("iteration", True)):
        h = Harness(config(max_num_seqs=2, batching=batching))
        h.add(
            make_request("short", 3, max_tokens=1),
            make_request("long", 3, max_tokens=6),
            make_request("next", 3, max_tokens=2),
        )
        while "long" not in h.reasons:
            plan = h.step()
            if "next" in step_sizes(plan):
                break
        assert ("long" not in h.reasons) is joins_early, batching
        h.run()
        assert set(h.reasons) == {"short", "long", "next"}
        assert h.sched.peak_running == 2
        assert (h.outputs["next"], h.reasons["next"]) == reference_output([1, 2, 3], 2, 256)


def test_max_num_seqs_limits_the_batch():
    h = Harness(config(max_num_seqs=2))
    h.add(*(make_request(f"r{i}", 3, max_tokens=3) for i in range(3)))
    assert list(step_sizes(h.step())) == ["r0", "r1"]
    assert h.sched.num_running == 2 and h.sched.num_waiting == 1
    h.run()
    assert all(len(out) == 3 for out in h.outputs.values())


def test_token_budget_is_never_exceeded():
    h = Harness(config(max_num_batched_tokens=10))
    h.add(*(make_request(f"r{i}", 7, max_tokens=4) for i in range(4)))
    h.run()
    assert all(sum(step_sizes(p).values()) <= 10 for p in h.plans)
    assert h.reasons == {f"r{i}": "length" for i in range(4)}


# ---- FCFS --------------------------------------------------------------------------------


def test_fcfs_head_blocks_later_requests():
    h = Harness(config(num_kv_blocks=6, max_model_len=100))
    h.add(make_request("first", [1] * 12, max_tokens=4, arrival_time=0.0))  # 3 blocks, then 4
    h.step()
    h.add(make_request("big", [2] * 16, max_tokens=2, arrival_time=1.0))  # 4 blocks: no room
    h.add(make_request("small", [3] * 2, max_tokens=2, arrival_time=2.0))  # fits, must wait
    plan = h.step()
    assert list(step_sizes(plan)) == ["first"]
    h.run()
    first_seen = [ns.seq_id for p in h.plans for ns in p.new_seqs]
    assert first_seen == ["first", "big", "small"]


def test_priority_then_arrival_order():
    h = Harness(config(max_num_seqs=1))
    h.add(
        make_request("late", 2, max_tokens=1, arrival_time=3.0),
        make_request("early", 2, max_tokens=1, arrival_time=1.0),
        make_request("urgent", 2, max_tokens=1, arrival_time=5.0, priority=-1),
    )
    h.run()
    assert [ns.seq_id for p in h.plans for ns in p.new_seqs] == ["urgent", "early", "late"]


# ---- preemption --------------------------------------------------------------------------


def test_preemption_recomputes_the_newest_request():
    # 3 requests of 4 prompt tokens, 4 blocks of 4: each needs a second block after its
    # first token, so the pool runs out and the newest is preempted first.
    h = Harness(config(num_kv_blocks=4, max_model_len=64, enable_prefix_caching=False))
    h.add(*(make_request(f"r{i}", [i + 1] * 4, max_tokens=6) for i in range(3)))
    h.step()  # all three prefill: 3 blocks used
    plan = h.step()  # r0 takes the last block; r1 preempts r2
    assert list(plan.released_seq_ids) == ["r2"]
    assert list(step_sizes(plan)) == ["r0", "r1"]
    assert h.sched.get_request("r2").status is RequestStatus.PREEMPTED
    assert h.sched.num_preemptions == 1
    h.run()
    # r2 re-joined with its output so far and recomputed prompt + outputs in one step.
    rejoin = next(p for p in h.plans[2:] for ns in p.new_seqs if ns.seq_id == "r2")
    new_seq = next(ns for ns in rejoin.new_seqs if ns.seq_id == "r2")
    assert list(new_seq.output_token_ids) == h.outputs["r2"][: len(new_seq.output_token_ids)]
    assert len(new_seq.output_token_ids) == 1
    assert step_sizes(rejoin)["r2"] == 5
    for i in range(3):
        assert (h.outputs[f"r{i}"], h.reasons[f"r{i}"]) == reference_output([i + 1] * 4, 6, 64)


def test_a_request_that_is_the_newest_preempts_itself():
    h = Harness(config(num_kv_blocks=2, max_model_len=64, enable_prefix_caching=False))
    h.add(make_request("a", 4, max_tokens=3), make_request("b", 4, max_tokens=3))
    h.step()
    plan = h.step()  # a takes the last free block; b has nothing newer to preempt
    assert list(step_sizes(plan)) == ["a"] and list(plan.released_seq_ids) == ["b"]
    h.run()
    assert h.reasons == {"a": "length", "b": "length"}


def test_reserve_admits_fewer_requests_than_paged():
    def max_concurrency(policy):
        h = Harness(config(num_kv_blocks=8, max_model_len=64, kv_policy=policy))
        h.add(*(make_request(f"r{i}", [i + 1] * 4, max_tokens=12) for i in range(6)))
        most = 0
        while h.sched.has_unfinished():
            h.step()
            most = max(most, h.sched.num_running)
        assert all(len(out) == 12 for out in h.outputs.values())
        return most, h.sched.num_preemptions

    reserve, reserve_preemptions = max_concurrency("reserve")
    paged, _ = max_concurrency("paged")
    assert reserve == 2  # 16 slots = 4 blocks each
    assert paged > reserve
    assert reserve_preemptions == 0


# ---- stops -------------------------------------------------------------------------------


def test_eos_stops_and_is_reported():
    prompt = [3, 4, 5]
    expected, _ = reference_output(prompt, 10, 100)
    eos = expected[2]
    h = Harness(config(), eos_token_ids=[eos])
    h.add(make_request("a", prompt, max_tokens=10))
    h.add(make_request("b", prompt, max_tokens=10, ignore_eos=True))
    h.add(make_request("c", prompt, max_tokens=10, stop_token_ids=frozenset({expected[1]})))
    h.run()
    assert h.outputs["a"] == expected[:3] and h.reasons["a"] == "stop"  # EOS included
    assert h.outputs["b"] == expected and h.reasons["b"] == "length"
    assert h.outputs["c"] == expected[:2] and h.reasons["c"] == "stop"


def test_max_model_len_stops_on_length():
    h = Harness(config(max_model_len=10))
    h.add(make_request("a", 6, max_tokens=100))
    h.run()
    assert len(h.outputs["a"]) == 4 and h.reasons["a"] == "length"
    assert h.sched.block_manager.num_free_blocks == 64


def test_logprobs_are_kept_when_asked():
    sched = Scheduler(config())
    request = make_request("a", 3, max_tokens=2)
    request.sampling.logprobs = True
    sched.add_request(request)
    worker = FakeWorker(64, 4)
    updates = sched.update(worker.execute(sched.schedule()))
    assert updates[0].new_logprobs[0].logprob == -0.5
    assert len(request.output_logprobs) == 1


# ---- aborts ------------------------------------------------------------------------------


def test_abort_waiting_request():
    h = Harness(config(max_num_seqs=1))
    h.add(make_request("a", 3), make_request("b", 3))
    h.step()
    update = h.sched.abort_request("b")
    assert update.finished and update.finish_reason == "abort"
    assert h.sched.abort_request("b") is None and h.sched.abort_request("nope") is None
    h.run()
    assert "b" not in {ns.seq_id for p in h.plans for ns in p.new_seqs}
    assert all("b" not in p.released_seq_ids for p in h.plans)  # workers never saw it


def test_abort_running_request_releases_it():
    h = Harness(config())
    h.add(make_request("a", 3, max_tokens=5))
    h.step()
    h.sched.abort_request("a")
    assert not h.sched.has_unfinished() and h.sched.kv_usage == 0
    plan = h.step()  # a release-only plan
    assert list(plan.released_seq_ids) == ["a"] and not plan.steps
    assert h.worker.seqs == {}


def test_abort_in_flight_request_frees_blocks_when_its_result_comes():
    sched = Scheduler(config())
    worker = FakeWorker(64, 4)
    sched.add_request(make_request("a", 3, max_tokens=5))
    plan = sched.schedule()
    update = sched.abort_request("a")
    assert update.finish_reason == "abort" and not sched.has_unfinished()
    assert sched.kv_usage > 0  # the worker may still be writing its blocks
    assert sched.update(worker.execute(plan)) == []  # its token is dropped
    assert sched.kv_usage == 0
    sched.check_invariants()
    assert list(sched.schedule().released_seq_ids) == ["a"]


def test_abort_preempted_request():
    h = Harness(config(num_kv_blocks=2, max_model_len=64, enable_prefix_caching=False))
    h.add(make_request("a", 4, max_tokens=3), make_request("b", 4, max_tokens=3))
    h.step()
    h.step()  # b preempted
    assert h.sched.get_request("b").status is RequestStatus.PREEMPTED
    assert h.sched.abort_request("b").finished
    h.run()
    assert h.reasons == {"a": "length"}
    assert h.worker.seqs == {}


# ---- prefix caching ----------------------------------------------------------------------


def test_prefix_hit_skips_cached_tokens():
    h = Harness(config())
    shared = list(range(1, 11))  # 10 tokens: 2 full blocks of 4
    h.add(make_request("a", shared + [20, 21], max_tokens=2))
    h.run()
    h.add(make_request("b", shared + [30], max_tokens=2))
    plan = h.step()
    assert plan.steps[0].start_position == 8
    assert list(plan.steps[0].token_ids) == [9, 10, 30]
    assert list(plan.new_seqs[0].prompt_token_ids) == shared + [30]  # prompt sent in full
    h.run()
    assert h.outputs["b"] == reference_output(shared + [30], 2, 256)[0]


def test_full_prefix_hit_recomputes_the_last_token():
    h = Harness(config())
    h.add(make_request("a", 8, max_tokens=1))
    h.run()
    h.add(make_request("b", 8, max_tokens=1))
    plan = h.step()
    assert plan.steps[0].start_position == 4 and len(plan.steps[0].token_ids) == 4
    assert h.outputs["b"] == h.outputs["a"]


def test_concurrent_requests_share_a_computed_prefix():
    h = Harness(config(max_num_batched_tokens=8))
    h.add(make_request("a", 16, max_tokens=4))
    h.step()  # first 8 tokens of a computed and cached
    h.add(make_request("b", 16, max_tokens=4))
    plan = h.step()
    start = {s.seq_id: s.start_position for s in plan.steps}
    assert start == {"a": 8}  # budget used by a; b waits
    h.step()
    b_step = next(s for p in h.plans for s in p.steps if s.seq_id == "b")
    assert b_step.start_position == 12  # 3 of b's 4 blocks came from a
    h.run()
    assert h.outputs["a"] == h.outputs["b"]


# ---- pipelining and results --------------------------------------------------------------


def test_pipeline_depth_two_keeps_a_sequence_in_one_plan():
    sched = Scheduler(config(pipeline_depth=2))
    worker = FakeWorker(64, 4)
    for i in range(3):
        sched.add_request(make_request(f"r{i}", 3, max_tokens=4, arrival_time=float(i)))
    p1 = sched.schedule()
    p2 = sched.schedule()
    # The three are spread over the two free slots, FCFS.
    assert [s.seq_id for s in p1.steps] == ["r0", "r1"]
    assert [s.seq_id for s in p2.steps] == ["r2"]
    sched.add_request(make_request("late", 3, max_tokens=4, arrival_time=9.0))
    assert sched.schedule() is None  # depth 2 reached
    sched.update(worker.execute(p1))
    p3 = sched.schedule()
    # r2 is still in flight: never in two plans at once.
    assert [s.seq_id for s in p3.steps] == ["r0", "r1", "late"]
    assert sched.num_in_flight == 2


def test_results_must_match_the_plan():
    sched = Scheduler(config(pipeline_depth=2))
    worker = FakeWorker(64, 4)
    sched.add_request(make_request("a", 3))
    plan = sched.schedule()
    with pytest.raises(ValueError, match="expected 1"):
        sched.update(worker_pb2.StepResult(step_id=2))
    with pytest.raises(WorkerStepError, match="boom"):
        sched.update(worker_pb2.StepResult(step_id=1, error="boom"))
    with pytest.raises(WorkerStepError, match="sampled"):
        sched.update(worker_pb2.StepResult(step_id=1))
    assert sched.num_in_flight == 1  # nothing changed
    (update,) = sched.update(worker.execute(plan))
    assert update.new_token_ids == [next_token([1, 2, 3])]
    with pytest.raises(ValueError, match="no plan"):
        sched.update(worker_pb2.StepResult(step_id=2))


def test_resumed_request_recomputes_its_outputs():
    prompt = [7, 8, 9]
    expected, _ = reference_output(prompt, 6, 256)
    h = Harness(config())
    h.add(make_request("a", prompt, max_tokens=6, output_token_ids=expected[:2]))
    plan = h.step()
    assert list(plan.new_seqs[0].output_token_ids) == expected[:2]
    assert len(plan.steps[0].token_ids) == 5
    h.run()
    assert h.outputs["a"] == expected


def test_pipeline_depth_spreads_requests_over_the_plans_in_flight():
    """pp=2: requests that arrive together fill two plans, so both stages get a batch."""
    scheduler = Scheduler(
        SchedulerConfig(num_kv_blocks=64, max_model_len=256, block_size=4, pipeline_depth=2),
        eos_token_ids=[],
    )
    for i in range(6):
        scheduler.add_request(make_request(f"r{i}", 5, max_tokens=4))
    first, second = scheduler.schedule(), scheduler.schedule()
    assert len(first.steps) == 3 and len(second.steps) == 3
    assert {s.seq_id for s in first.steps}.isdisjoint(s.seq_id for s in second.steps)
    assert scheduler.schedule() is None


# ---- overlapped scheduling -------------------------------------------------------------


def lookahead_ids(plan) -> list[str]:
    return [s.seq_id for s in plan.steps if s.input_is_last_sampled]


def test_overlap_schedules_decodes_ahead_and_keeps_every_token():
    h = Harness(config(overlap=True, max_num_batched_tokens=16))
    prompts = {"a": 5, "b": 30, "c": 2}  # b's prompt takes two chunks
    h.add(*(make_request(rid, n, max_tokens=6) for rid, n in prompts.items()))
    h.run()
    for rid, n in prompts.items():
        assert (h.outputs[rid], h.reasons[rid]) == reference_output(list(range(1, n + 1)), 6, 256)
    assert any(lookahead_ids(p) for p in h.plans), "no decode was scheduled ahead"
    # Never past max_tokens: a request's last token is never looked ahead of.
    steps = [s for p in h.plans for s in p.steps if s.seq_id == "a" and s.sample]
    assert len(steps) == 6
    assert h.sched.num_in_flight == 0 and h.sched.kv_usage == 0


def test_overlap_drops_the_token_after_an_unforeseen_stop():
    prompt = [1, 2, 3]
    stop = reference_output(prompt, 8, 256)[0][2]  # the third token stops the request
    h = Harness(config(overlap=True))
    h.add(make_request("s", prompt, max_tokens=8, stop_token_ids=frozenset({stop})))
    h.run()
    assert h.outputs["s"] == reference_output(prompt, 8, 256, frozenset({stop}))[0]
    assert h.reasons["s"] == "stop" and len(h.outputs["s"]) == 3
    sampled = sum(1 for p in h.plans for s in p.steps if s.seq_id == "s" and s.sample)
    assert sampled == 4  # one step ran ahead of the stop; its token was dropped
    assert h.sched.kv_usage == 0 and h.worker.seqs == {}


def test_overlap_abort_with_two_plans_in_flight():
    h = Harness(config(overlap=True))
    h.add(make_request("x", 4, max_tokens=20), make_request("y", 4, max_tokens=5))
    for _ in range(3):
        h.step()
    assert h.sched.num_in_flight == 1 and h.pending  # one run, one scheduled ahead
    h.sched.abort_request("x")
    h.run()
    assert h.reasons["y"] == "length" and len(h.outputs["y"]) == 5
    assert h.sched.kv_usage == 0 and h.worker.seqs == {}


def test_overlap_needs_a_single_stage():
    with pytest.raises(ValueError, match="overlap"):
        config(overlap=True, pipeline_depth=2)
