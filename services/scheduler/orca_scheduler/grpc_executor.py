"""One worker's long-lived Execute stream, as the pipeline executor drives it.

`send(plan)` queues the plan for the stream's writer task and returns at once with a future
of its result, so the order of `send` calls is the order of plans on the wire; one reader
task hands results to those futures in order (the worker answers in step order). A stream
that ends or fails breaks the WorkerStream: every waiting and later future fails with
WorkerUnavailableError (the worker lost its state, or we cannot know that it kept it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

import grpc

from orca_proto.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


class WorkerUnavailableError(RuntimeError):
    """A worker could not be reached, or its Execute stream broke."""


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options: big messages, and keepalive pings to notice a dead link."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class WorkerStream:
    """The channel to the worker at `address`: its Info, and one Execute stream."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 64 * 1024 * 1024,
        on_broken: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self._on_broken = on_broken
        self._channel = grpc.aio.insecure_channel(
            address, options=channel_options(max_message_bytes)
        )
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._call = None
        self._outbox: asyncio.Queue[worker_pb2.StepPlan] = asyncio.Queue()
        self._pending: deque[tuple[int, asyncio.Future]] = deque()
        self._tasks: list[asyncio.Task] = []
        self.broken: str | None = None

    async def fetch_info(self, timeout_s: float) -> worker_pb2.WorkerInfo:
        """Ask the worker for its Info once (WorkerUnavailableError if it does not answer)."""
        try:
            return await self._stub.Info(worker_pb2.InfoRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise WorkerUnavailableError(
                f"worker {self.address}: {exc.code().name} {exc.details()}"
            ) from exc

    def open(self) -> None:
        """Open the Execute stream (the worker drops what an earlier stream left) and start
        the writer and reader tasks."""
        self._call = self._stub.Execute()
        self._tasks = [
            asyncio.create_task(self._write_plans(), name=f"plans-{self.address}"),
            asyncio.create_task(self._read_results(), name=f"results-{self.address}"),
        ]

    def send(self, plan: worker_pb2.StepPlan) -> asyncio.Future:
        """Queue `plan` after every plan sent before; returns the future of its result."""
        future = asyncio.get_running_loop().create_future()
        if self.broken is not None or self._call is None:
            future.set_exception(
                WorkerUnavailableError(self.broken or f"no stream to worker {self.address}")
            )
            return future
        self._pending.append((plan.step_id, future))
        self._outbox.put_nowait(plan)
        return future

    def fail(self, reason: str) -> None:
        """Mark the stream broken (idempotent): every waiting and later result fails."""
        if self.broken is None:
            self.broken = reason
            if self._on_broken is not None:
                self._on_broken(reason)
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(WorkerUnavailableError(reason))

    async def close(self) -> None:
        """End the stream (as the worker sees it: the scheduler is gone) and the channel."""
        if self._call is not None and self.broken is None:
            self.broken = f"stream to {self.address} is closed"
            with contextlib.suppress(Exception):  # the stream may have ended already
                await self._call.done_writing()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()
        self.fail(f"stream to {self.address} is closed")

    async def _write_plans(self) -> None:
        while True:
            plan = await self._outbox.get()
            try:
                await self._call.write(plan)
            except Exception as exc:  # AioRpcError, or InvalidStateError once the RPC ended
                self._break(f"cannot send step {plan.step_id} to {self.address}: {exc}")
                return

    async def _read_results(self) -> None:
        try:
            while True:
                result = await self._call.read()
                if result is grpc.aio.EOF:
                    self._break(f"worker {self.address} ended the Execute stream")
                    return
                if not self._pending:
                    self._break(f"worker {self.address} sent step {result.step_id} unasked")
                    return
                step_id, future = self._pending[0]
                if result.step_id != step_id:
                    self._break(
                        f"worker {self.address} answered step {result.step_id}, expected {step_id}"
                    )
                    return
                self._pending.popleft()
                if not future.done():
                    future.set_result(result)
        except grpc.aio.AioRpcError as exc:
            self._break(
                f"Execute stream to {self.address} failed: {exc.code().name} {exc.details()}"
            )

    def _break(self, reason: str) -> None:
        if self.broken is None:
            log.error("worker_stream_broken address=%s reason=%r", self.address, reason)
        self.fail(reason)
