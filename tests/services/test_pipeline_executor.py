"""PipelineExecutor against stand-in gRPC workers of one pipeline of 2 stages x 2 ranks:
every worker gets every plan in the same order, the result is the last stage rank 0's once
all have answered, two plans are in flight at once, errors and a dead worker surface."""

from __future__ import annotations

import asyncio

import pytest
from standin_worker import next_token, start_pipelines

from orca_proto.topology import Topology
from orca_proto.v1 import worker_pb2 as pb
from orca_scheduler.pipeline_executor import PipelineBrokenError, PipelineExecutor

TOPOLOGY = Topology(pp=2, tp=2)


@pytest.fixture
def workers():
    """Pipeline 1 (ordinals 4..7) of 2 stages x 2 ranks; stage 0 has the smaller KV pool."""
    started = start_pipelines(2, pp=2, tp=2, step_delay_s=0.15)[4:]
    started[0].num_kv_blocks = started[1].num_kv_blocks = 40
    try:
        yield started
    finally:
        for worker in started:
            worker.die()


def prefill(step_id: int, seq_id: str, prompt: list[int]) -> pb.StepPlan:
    return pb.StepPlan(
        step_id=step_id,
        new_seqs=[pb.NewSequence(seq_id=seq_id, prompt_token_ids=prompt, block_ids=[0])],
        steps=[pb.SequenceStep(seq_id=seq_id, token_ids=prompt, sample=True)],
    )


def test_plans_reach_every_worker_in_order_with_two_in_flight(workers):
    async def scenario():
        executor = PipelineExecutor(1, [w.address for w in workers], TOPOLOGY)
        info = await executor.connect(timeout_s=5)
        assert (info.stage, info.tp_rank, info.pipeline, info.pp_size, info.tp_size) == (
            1,
            0,
            1,
            2,
            2,
        )
        assert info.num_kv_blocks == 40  # the smallest pool of all stages
        try:
            first = asyncio.ensure_future(executor.submit(prefill(1, "a", [5, 6, 7])))
            second = asyncio.ensure_future(executor.submit(prefill(2, "b", [8, 9])))
            results = await asyncio.gather(first, second)
            assert [r.step_id for r in results] == [1, 2]
            assert [[(t.seq_id, t.token_id) for t in r.tokens] for r in results] == [
                [("a", next_token([5, 6, 7]))],
                [("b", next_token([8, 9]))],
            ]
            # A stage error: the result carries it, named by stage and rank.
            workers[1].fail_steps[3] = "out of memory"
            token = results[0].tokens[0].token_id
            decode = pb.StepPlan(
                step_id=3,
                steps=[
                    pb.SequenceStep(seq_id="a", start_position=3, token_ids=[token], sample=True)
                ],
            )
            failed = await executor.submit(decode)
            assert failed.error == "stage 0 rank 1: out of memory"
        finally:
            await executor.close()

    asyncio.run(scenario())
    for worker in workers:
        assert [r.plan.step_id for r in worker.received] == [1, 2, 3]
        assert not worker.violations
        first, second = worker.received[:2]
        # Plan 2 reached the worker while plan 1 was still running: two in flight.
        assert second.received_at < first.answered_at


def test_a_dead_worker_breaks_the_pipeline(workers):
    async def scenario():
        executor = PipelineExecutor(1, [w.address for w in workers], TOPOLOGY)
        await executor.connect(timeout_s=5)
        try:
            assert (await executor.submit(prefill(1, "a", [5, 6]))).tokens
            in_flight = asyncio.ensure_future(executor.submit(prefill(2, "b", [7])))
            await asyncio.sleep(0.05)
            workers[2].die()  # stage 1 rank 0, mid-step
            with pytest.raises(PipelineBrokenError):
                await in_flight
            assert "pipeline 1" in await asyncio.wait_for(executor.wait_broken(), 5)
            with pytest.raises(PipelineBrokenError):
                await executor.submit(prefill(3, "c", [8]))
        finally:
            await executor.close()

    asyncio.run(scenario())


def test_connect_refuses_a_worker_at_the_wrong_place(workers):
    async def scenario():
        swapped = [workers[2].address, workers[1].address, workers[0].address, workers[3].address]
        executor = PipelineExecutor(1, swapped, TOPOLOGY)
        try:
            with pytest.raises(ValueError, match="expected stage 0 rank 0"):
                await executor.connect(timeout_s=5)
        finally:
            await executor.close()

    asyncio.run(scenario())
