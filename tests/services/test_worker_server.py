"""The worker's gRPC service: Info, one long-lived Execute stream, Drain, and the
`orca-worker` process (ready line, SIGTERM)."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from orca import SamplingParams
from orca_proto.v1 import worker_pb2 as pb
from orca_proto.v1 import worker_pb2_grpc
from orca_worker.runner import ModelRunner, RunnerConfig
from orca_worker.server import WorkerService, build_server

PROMPT = [11, 27, 300, 45, 9, 101, 77]


@pytest.fixture(scope="module")
def runner(tiny_llama):
    """One ModelRunner on the tiny Llama (32 blocks of 16)."""
    return ModelRunner(RunnerConfig(model_dir=str(tiny_llama), num_kv_blocks=32))


def run_with_server(runner, scenario):
    """Serve `runner` on a free port, run `scenario(stub, service)` against it, stop."""

    async def main():
        service = WorkerService(runner)
        server, port = build_server(service, "127.0.0.1", 0, 64 * 1024 * 1024)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(worker_pb2_grpc.WorkerStub(channel), service)
        finally:
            await server.stop(grace=None)
            service.close()

    asyncio.run(main())


def new_seq_plan(step_id: int, seq_id: str, prompt: list[int], block: int) -> pb.StepPlan:
    """A plan that adds `seq_id` with one block and prefills its whole prompt."""
    return pb.StepPlan(
        step_id=step_id,
        new_seqs=[pb.NewSequence(seq_id=seq_id, prompt_token_ids=prompt, block_ids=[block])],
        steps=[pb.SequenceStep(seq_id=seq_id, token_ids=prompt, sample=True)],
    )


def decode_plan(step_id: int, seq_id: str, position: int, token: int) -> pb.StepPlan:
    """A plan that feeds `seq_id` its last sampled token."""
    step = pb.SequenceStep(seq_id=seq_id, start_position=position, token_ids=[token], sample=True)
    return pb.StepPlan(step_id=step_id, steps=[step])


def greedy(reference_llm, n: int) -> list[int]:
    [out] = reference_llm.generate(
        prompt_token_ids=[PROMPT],
        sampling_params=SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
    )
    return out.token_ids


def test_info_and_a_bad_plan_that_does_not_break_the_stream(runner, reference_llm):
    want = greedy(reference_llm, 2)  # (the offline engine runs its own event loop)

    async def scenario(stub, service):
        info = await stub.Info(pb.InfoRequest())
        assert info == runner.info()
        call = stub.Execute()
        await call.write(new_seq_plan(1, "a", PROMPT, block=3))
        first = await call.read()
        assert first.step_id == 1 and not first.error
        assert first.timings.forward_ms > 0
        await call.write(decode_plan(2, "ghost", 0, 5))
        bad = await call.read()
        assert bad.step_id == 2 and "unknown sequence" in bad.error
        token = first.tokens[0].token_id
        await call.write(decode_plan(3, "a", len(PROMPT), token))
        second = await call.read()
        assert not second.error
        assert [token, second.tokens[0].token_id] == want
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF

    run_with_server(runner, scenario)


def test_drain_refuses_new_sequences_and_lets_running_ones_finish(runner):
    async def scenario(stub, service):
        call = stub.Execute()
        await call.write(new_seq_plan(1, "a", PROMPT, block=0))
        token = (await call.read()).tokens[0].token_id
        reply = await stub.Drain(pb.DrainRequest())
        assert reply.num_active_seqs == 1
        await call.write(new_seq_plan(2, "b", PROMPT, block=1))
        refused = await call.read()
        assert refused.step_id == 2 and refused.error.startswith("draining")
        await call.write(decode_plan(3, "a", len(PROMPT), token))
        assert not (await call.read()).error
        await call.done_writing()

    run_with_server(runner, scenario)


def test_a_new_stream_starts_clean_and_ends_the_old_one(runner):
    async def scenario(stub, service):
        old = stub.Execute()
        await old.write(new_seq_plan(1, "a", PROMPT, block=0))
        assert not (await old.read()).error
        new = stub.Execute()  # a restarted scheduler: sequence "a" may join again
        await new.write(new_seq_plan(1, "a", PROMPT, block=5))
        assert not (await new.read()).error
        with pytest.raises(grpc.aio.AioRpcError) as err:  # ended at once, not at its next plan
            await old.read()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await new.write(decode_plan(2, "a", len(PROMPT), 5))  # the new stream goes on
        assert not (await new.read()).error

    run_with_server(runner, scenario)


def test_plans_sent_ahead_are_queued_and_answered_in_order(runner):
    """A scheduler with two plans in flight writes the second before reading the first
    result: the worker queues it and runs it right after the first."""

    async def scenario(stub, service):
        call = stub.Execute()
        for step_id, (seq_id, block) in enumerate((("a", 0), ("b", 4), ("c", 8)), start=1):
            await call.write(new_seq_plan(step_id, seq_id, PROMPT, block=block))
        results = [await call.read() for _ in range(3)]
        assert [r.step_id for r in results] == [1, 2, 3]
        assert all(not r.error and len(r.tokens) == 1 for r in results)
        # Sequences differ only by id: the same prompt gives the same greedy token.
        assert len({r.tokens[0].token_id for r in results}) == 1
        await call.done_writing()

    run_with_server(runner, scenario)


def test_orca_worker_process_prints_its_address_and_stops_on_sigterm(harness, tiny_llama):
    worker, address = harness.start_worker(tiny_llama)
    with grpc.insecure_channel(address) as channel:
        info = worker_pb2_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=10)
    assert (info.num_kv_blocks, info.block_size, info.vocab_size) == (64, 16, 384)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
