"""Moving a lost pipeline's requests to another one: `Scheduler.take_unfinished` hands back
every waiting, running and in-flight request, ready to be recomputed elsewhere from its
prompt plus the tokens it already reported; and the load figures used to place requests."""

from __future__ import annotations

from scheduler_fakes import FakeWorker, Harness, make_request, reference_output

from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.request import RequestStatus
from orca_scheduler.core.scheduler import Scheduler


def config(**kwargs) -> SchedulerConfig:
    defaults = dict(num_kv_blocks=32, max_model_len=256, block_size=4, pipeline_depth=2)
    return SchedulerConfig(**(defaults | kwargs))


def test_unfinished_requests_move_to_another_scheduler_and_finish_identically():
    lost = Harness(config(max_num_batched_tokens=24, max_num_seqs=6))
    specs = {"a": (9, 20), "b": (14, 6), "c": (5, 30), "d": (30, 12), "e": (3, 2), "f": (7, 9)}
    lost.add(*(make_request(rid, *specs[rid], arrival_time=i) for i, rid in enumerate("abcde")))
    # Run a few steps, then leave two plans in flight (results never applied), as when the
    # pipeline breaks mid-step: the second holds a request that arrived after the first.
    for _ in range(6):
        lost.step()
    assert lost.sched.schedule() is not None
    lost.add(make_request("f", *specs["f"], arrival_time=9))
    assert lost.sched.schedule() is not None
    assert lost.sched.num_in_flight == 2
    lost.record([lost.sched.abort_request("c")])  # aborted while in flight: reported already
    reported = {rid: list(tokens) for rid, tokens in lost.outputs.items()}

    taken = lost.sched.take_unfinished()
    lost.sched.check_invariants()
    assert not lost.sched.has_unfinished() and lost.sched.num_in_flight == 0
    assert lost.sched.kv_usage == 0.0
    finished = set(lost.reasons)
    assert {r.request_id for r in taken} == set(specs) - finished
    for request in taken:
        assert request.status is RequestStatus.WAITING
        assert (request.num_computed_tokens, request.block_ids) == (0, [])
        assert request.output_token_ids == reported[request.request_id]

    survivor = Harness(config())
    survivor.worker = FakeWorker(32, 4)
    for request in taken:
        survivor.sched.add_request(request)
        survivor.outputs[request.request_id] = list(request.output_token_ids)
    survivor.run()
    for rid, (n, m) in specs.items():
        if rid in finished:
            continue
        prompt = make_request(rid, n).prompt_token_ids
        assert (survivor.outputs[rid], survivor.reasons[rid]) == reference_output(prompt, m, 256)


def test_take_unfinished_orders_running_first_then_the_waiting_queue():
    sched = Scheduler(config(max_num_seqs=2))
    sched.add_request(make_request("old", 4, 8, arrival_time=1.0))
    sched.add_request(make_request("new", 4, 8, arrival_time=2.0))
    sched.add_request(make_request("urgent", 4, 8, arrival_time=3.0, priority=-1))
    sched.add_request(make_request("late", 4, 8, arrival_time=4.0))
    assert sched.schedule() is not None  # admits "urgent" and "old" (max_num_seqs=2)
    assert [r.request_id for r in sched.take_unfinished()] == ["urgent", "old", "new", "late"]


def test_load_figures_count_unfinished_tokens_and_free_blocks():
    sched = Scheduler(config(num_kv_blocks=10, pipeline_depth=1))
    assert (sched.num_unfinished_tokens, sched.num_free_blocks) == (0, 10)
    sched.add_request(make_request("a", 6, 4))
    sched.add_request(make_request("b", 3, 4))
    assert sched.num_unfinished_tokens == 9
    plan = sched.schedule()
    assert sched.num_free_blocks == 10 - 2 - 1
    worker = FakeWorker(10, 4)
    sched.update(worker.execute(plan))
    assert sched.num_unfinished_tokens == 11  # one token sampled for each
