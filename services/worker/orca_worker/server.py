"""The worker's gRPC service (`orca.v1.Worker`) around one ModelRunner.

In a pipeline (tp or pp > 1) every worker runs this same service: the scheduler sends each
plan to all of them, and each answers it (only the last stage's TP rank 0 with tokens).

`Execute` is one long-lived stream per scheduler: plans in, results out, strictly in step
order. The model runs on one dedicated thread, so the event loop keeps answering `Info`,
`Drain` and keepalives during a step; plans that arrive while one runs are queued for that
thread, which starts each the moment the previous one is done. A new `Execute` stream means a new (or restarted)
scheduler: the worker drops every sequence it cached for the old one, and the old stream,
if still open, is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from orca_proto.v1 import worker_pb2, worker_pb2_grpc
from orca_worker.runner import ModelRunner

log = logging.getLogger(__name__)

DRAINING_ERROR = "draining: this worker accepts no new sequences"
# Markers on a stream's queues: the stream ended; a newer stream took over.
_END = object()
_SUPERSEDED = object()


class _PlanStream:
    """One Execute stream's hand-over between the event loop and the step thread: plans
    in a thread-safe queue, results (and the end marker) back on an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.plans: queue.SimpleQueue = queue.SimpleQueue()
        self.results: asyncio.Queue = asyncio.Queue()
        self.stopped: object | None = None  # _END or _SUPERSEDED once stopped
        self._loop = loop

    def stop(self, marker: object) -> None:
        """Run no more of this stream's plans; the step loop posts `marker` and returns."""
        if self.stopped is None:
            self.stopped = marker
        self.plans.put(marker)

    def post(self, item: object) -> None:
        """From the step thread: hand a result (or a marker) to the event loop."""
        # A closed loop means the server is gone: nobody would read the item.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.results.put_nowait, item)


class WorkerService(worker_pb2_grpc.WorkerServicer):
    """Serves one ModelRunner: Info, the Execute stream and Drain."""

    def __init__(self, runner: ModelRunner, on_broken: Callable[[str], None] | None = None) -> None:
        self._runner = runner
        self._info = runner.info()
        # Told once when the runner's pipeline broke (the worker should exit and be restarted).
        self._on_broken = on_broken
        # One thread: steps never overlap, and the runner needs no lock.
        self._step_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="orca-step", initializer=runner.enter_step_thread
        )
        self._stream_generation = 0
        self._current: _PlanStream | None = None  # the open Execute stream's queues
        self.draining = False
        self.num_open_streams = 0
        self.last_plan_at = time.monotonic()

    async def Info(self, request, context) -> worker_pb2.WorkerInfo:
        """Describe the worker: model, dtype, KV pool shape, limits, EOS ids."""
        return self._info

    async def Drain(self, request, context) -> worker_pb2.DrainReply:
        """Refuse plans that start new sequences from now on; running ones finish."""
        self.start_draining()
        return worker_pb2.DrainReply(num_active_seqs=self._runner.num_active_seqs)

    async def Execute(
        self, request_iterator: AsyncIterator[worker_pb2.StepPlan], context
    ) -> AsyncIterator[worker_pb2.StepResult]:
        """Run each plan of the stream in order and answer it with its StepResult.

        Plans are read as they arrive and queued for the step thread, which runs them back
        to back: the next plan starts the moment the previous one is done, not after its
        result has gone out and the event loop has handed the next one over."""
        self._stream_generation += 1
        generation = self._stream_generation
        if self._current is not None:  # a newer scheduler took over: end the old stream
            self._current.stop(_SUPERSEDED)
        stream = self._current = _PlanStream(asyncio.get_running_loop())
        self.num_open_streams += 1
        reader: asyncio.Task | None = None
        try:
            dropped = await self._on_step_thread(self._drop_all_sequences)
            log.info("stream_opened generation=%d dropped_seqs=%d", generation, dropped)
            reader = asyncio.create_task(self._read_plans(request_iterator, stream, generation))
            asyncio.get_running_loop().run_in_executor(self._step_thread, self._run_plans, stream)
            while (item := await stream.results.get()) is not _END:
                if item is _SUPERSEDED:
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "superseded by a newer Execute stream (another scheduler connected)",
                    )
                yield item
                self.last_plan_at = time.monotonic()
                if self._runner.broken is not None and self._on_broken is not None:
                    self._on_broken(self._runner.broken)
                    self._on_broken = None
        finally:
            stream.stop(_END)  # queued plans are dropped: nobody reads their results
            if reader is not None:
                reader.cancel()
            if self._current is stream:
                self._current = None
            self.num_open_streams -= 1
            log.info("stream_closed generation=%d", generation)

    async def _read_plans(
        self, request_iterator: AsyncIterator[worker_pb2.StepPlan], stream, generation: int
    ) -> None:
        """Queue the stream's plans for the step thread; its end (or a newer stream) ends
        the step loop once the queued plans are done."""
        async for plan in request_iterator:
            if generation != self._stream_generation:
                stream.stop(_SUPERSEDED)
                return
            self.last_plan_at = time.monotonic()
            stream.plans.put(plan)
        stream.plans.put(_END)

    def _run_plans(self, stream: _PlanStream) -> None:
        """The step thread's loop for one stream: run each queued plan, post its result."""
        while True:
            plan = stream.plans.get()
            if stream.stopped is not None or plan is _END:
                stream.post(stream.stopped or _END)
                return
            # A refused plan still goes through the runner: in a pipeline the first stage's
            # refusal must reach the other workers (later stages' refusals are ignored there).
            refusal = DRAINING_ERROR if self.draining and plan.new_seqs else None
            try:
                result = self._runner.execute(plan, refusal)
            except Exception as exc:  # the runner reports errors itself; this is a last guard
                log.exception("step_crashed step_id=%d", plan.step_id)
                result = worker_pb2.StepResult(
                    step_id=plan.step_id, error=f"step failed: {type(exc).__name__}: {exc}"
                )
            stream.post(result)

    def start_draining(self) -> None:
        """Stop accepting plans with new sequences (idempotent)."""
        if not self.draining:
            log.info("draining active_seqs=%d", self._runner.num_active_seqs)
        self.draining = True

    @property
    def num_active_seqs(self) -> int:
        """Sequences the runner still caches."""
        return self._runner.num_active_seqs

    def close(self) -> None:
        """Release the step thread (after the server stopped)."""
        self._step_thread.shutdown(wait=True)

    async def _on_step_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._step_thread, fn, *args)

    def _drop_all_sequences(self) -> int:
        count = len(self._runner.seqs)
        self._runner.seqs.clear()
        return count


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC server options: big messages, and keepalive pings from schedulers allowed."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Schedulers ping every ~30 s to detect a dead link; don't punish idle pings.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def build_server(
    service: WorkerService, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server exposing `service` on host:port (not started); returns it and the
    bound port (useful when `port` is 0)."""
    server = grpc.aio.server(options=server_options(max_message_bytes))
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return server, bound


async def wait_until_drained(service: WorkerService, timeout_s: float, idle_s: float = 0.5) -> bool:
    """After `start_draining`: wait until no scheduler is streaming plans (no stream open,
    or none received for `idle_s`), at most `timeout_s`. True if it drained in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        idle = time.monotonic() - service.last_plan_at >= idle_s
        if service.num_open_streams == 0 or idle:
            return True
        await asyncio.sleep(0.05)
    return False
