"""The iteration loop over several pipelines, in process (no gRPC, no Redis): fake
pipeline executors with pp = 2 plans in flight run the stand-in model; one breaks with
plans in flight and its requests finish on the other with every token once; with no
pipeline left requests wait (and can be cancelled) until a new one comes."""

from __future__ import annotations

import asyncio

from standin_worker import VOCAB, StandinWorker, reference_output

from orca_proto import redis_streams as rs
from orca_proto.v1 import stream_pb2, worker_pb2
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.dead_letters import DeadLetters
from orca_scheduler.inbox import Inbox, IncomingRequest
from orca_scheduler.loop import IterationLoop
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.pipeline_executor import PipelineBrokenError
from orca_scheduler.publisher import Publisher


class FakePipeline:
    """An Executor whose steps take `step_s` and run on a stand-in (pp plans overlap)."""

    def __init__(self, depth: int = 2, step_s: float = 0.002) -> None:
        self.depth = depth
        self.step_s = step_s
        self.model = StandinWorker(0)
        self.max_in_flight = 0
        self._in_flight = 0
        self._broken = asyncio.Event()

    def info(self) -> worker_pb2.WorkerInfo:
        return self.model.Info(None, None)

    def scheduler(self) -> Scheduler:
        info = self.info()
        config = SchedulerConfig(
            num_kv_blocks=info.num_kv_blocks,
            max_model_len=info.max_model_len,
            block_size=info.block_size,
            pipeline_depth=self.depth,
        )
        return Scheduler(config)

    def break_now(self) -> None:
        self._broken.set()

    async def submit(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        if self._broken.is_set():
            raise PipelineBrokenError("broken")
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            broken = asyncio.ensure_future(self._broken.wait())
            done, _ = await asyncio.wait([broken], timeout=self.step_s)
            broken.cancel()
            if done:
                raise PipelineBrokenError("broken mid-step")
            return self.model._run(plan)
        finally:
            self._in_flight -= 1


class RecordingWriter:
    """A RedisWriter stand-in: applies commands to a recorder at once."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[stream_pb2.TokenChunk]] = {}

    def submit(self, commands, on_written=None) -> None:
        for command in commands:
            command(self)
        if on_written is not None:
            on_written()

    def xadd(self, key, fields) -> None:
        if key.startswith("orca:out:"):
            chunk = rs.decode_chunk(fields)
            self.chunks.setdefault(chunk.request_id, []).append(chunk)

    def expire(self, *args) -> None:
        pass

    def xack(self, *args) -> None:
        pass

    def tokens(self, request_id: str) -> list[int]:
        """The published tokens; each index exactly once, no gap."""
        by_index: dict[int, int] = {}
        for chunk in self.chunks.get(request_id, []):
            for offset, token in enumerate(chunk.token_ids):
                index = chunk.first_token_index + offset
                assert index not in by_index, f"{request_id}: index {index} twice"
                by_index[index] = token
        assert sorted(by_index) == list(range(len(by_index))), f"{request_id}: a gap"
        return [by_index[i] for i in range(len(by_index))]

    def final(self, request_id: str) -> stream_pb2.TokenChunk | None:
        chunks = self.chunks.get(request_id, [])
        return chunks[-1] if chunks and chunks[-1].finished else None


def make_loop():
    writer, metrics, inbox = RecordingWriter(), SchedulerMetrics(), Inbox()
    loop = IterationLoop(inbox, Publisher(writer), DeadLetters(writer, metrics), metrics)
    return loop, inbox, writer, metrics


def request(request_id: str, prompt: list[int], max_tokens: int) -> IncomingRequest:
    sr = stream_pb2.StreamRequest(
        request_id=request_id, prompt_token_ids=prompt, max_tokens=max_tokens, ignore_eos=True
    )
    return IncomingRequest(f"entry-{request_id}", sr)


async def until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


def prompt(i: int) -> list[int]:
    return [(i * 7 + k * 3) % (VOCAB - 1) + 1 for k in range(3 + i % 5)]


def test_a_broken_pipeline_with_plans_in_flight_moves_its_requests():
    async def scenario():
        loop, inbox, writer, metrics = make_loop()
        pipelines = [FakePipeline(), FakePipeline()]
        for i, p in enumerate(pipelines):
            loop.add_pipeline(i, p, p.scheduler())
        task = asyncio.create_task(loop.run())
        for i in range(8):  # staggered: the two plan slots of each pipeline both fill
            inbox.put_request(request(f"r{i}", prompt(i), 60))
            await asyncio.sleep(0.003)
        await until(lambda: all(len(writer.tokens(f"r{i}")) >= 5 for i in range(8)))
        assert set(loop._placement.values()) == {0, 1}  # both pipelines serve
        assert pipelines[1].max_in_flight == 2
        on_1 = [r for r, p in loop._placement.items() if p == 1]
        pipelines[1].break_now()
        await until(lambda: all(writer.final(f"r{i}") for i in range(8)))
        for i in range(8):
            assert writer.tokens(f"r{i}") == reference_output(prompt(i), 60), f"r{i}"
            assert writer.final(f"r{i}").finish_reason == "length"
        assert list(loop.pipelines) == [0]
        requeued = metrics.registry.get_sample_value("orca_requests_requeued_total")
        assert requeued == len(on_1) > 0
        loop.drain()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_requests_wait_for_a_pipeline_and_can_be_cancelled_meanwhile():
    async def scenario():
        loop, inbox, writer, _ = make_loop()
        first = FakePipeline(depth=1)
        loop.add_pipeline(0, first, first.scheduler())
        task = asyncio.create_task(loop.run())
        inbox.put_request(request("a", prompt(1), 40))
        await until(lambda: len(writer.tokens("a")) >= 3)
        first.break_now()
        await until(lambda: not loop.pipelines)
        inbox.put_request(request("b", prompt(2), 10))
        inbox.put_request(request("c", prompt(3), 10))
        await asyncio.sleep(0.05)
        assert loop.num_waiting == 3 and writer.final("a") is None
        inbox.put_control(stream_pb2.Control(request_id="c", kind=stream_pb2.Control.CANCEL))
        await until(lambda: writer.final("c") is not None)
        assert writer.final("c").finish_reason == "abort"
        second = FakePipeline()
        loop.add_pipeline(3, second, second.scheduler())
        await until(lambda: writer.final("a") and writer.final("b"))
        assert writer.tokens("a") == reference_output(prompt(1), 40)
        assert writer.tokens("b") == reference_output(prompt(2), 10)
        loop.drain()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
