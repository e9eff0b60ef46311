"""The gRPC implementation of the Executor protocol: one long-lived Execute stream per worker.

`submit` writes a plan on the stream and waits for its result; one reader task hands
results to waiting submitters in order, so several plans may be in flight (pipeline depth).
A stream that ends or fails breaks the executor: every waiting and later `submit` raises
WorkerUnavailableError (the worker lost its state, or we cannot know it kept it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

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


class GrpcExecutor:
    """Runs StepPlans on the worker at `address` over one Execute stream."""

    def __init__(self, address: str, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.address = address
        self._max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._call = None
        self._info: worker_pb2.WorkerInfo | None = None
        self._pending: deque[tuple[int, asyncio.Future]] = deque()
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task | None = None
        self._broken: str | None = None
        self._broken_event = asyncio.Event()

    async def connect(self, timeout_s: float) -> worker_pb2.WorkerInfo:
        """Fetch the worker's Info (retrying until `timeout_s`), then open the Execute stream."""
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            self._channel = grpc.aio.insecure_channel(
                self.address, options=channel_options(self._max_message_bytes)
            )
            stub = worker_pb2_grpc.WorkerStub(self._channel)
            try:
                remaining = max(deadline - time.monotonic(), 0.0)
                self._info = await stub.Info(
                    worker_pb2.InfoRequest(), timeout=min(max(remaining, 0.5), 5.0)
                )
                break
            except grpc.aio.AioRpcError as exc:
                await self._channel.close()
                if time.monotonic() >= deadline:
                    raise WorkerUnavailableError(
                        f"worker {self.address} did not answer within {timeout_s}s: "
                        f"{exc.code().name} {exc.details()}"
                    ) from exc
                if attempt == 1:
                    log.info("worker_waiting address=%s", self.address)
                await asyncio.sleep(0.2)
        self._call = stub.Execute()
        self._reader = asyncio.create_task(self._read_results(), name=f"results-{self.address}")
        log.info(
            "worker_connected address=%s model=%s kv_blocks=%d block_size=%d",
            self.address,
            self._info.model,
            self._info.num_kv_blocks,
            self._info.block_size,
        )
        return self._info

    def info(self) -> worker_pb2.WorkerInfo:
        """The worker's Info, as fetched at connect."""
        if self._info is None:
            raise WorkerUnavailableError(f"not connected to worker {self.address}")
        return self._info

    async def submit(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Send one plan and wait for its result (results arrive in submission order)."""
        if self._call is None:
            raise WorkerUnavailableError(f"not connected to worker {self.address}")
        if self._broken is not None:
            raise WorkerUnavailableError(self._broken)
        future = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            self._pending.append((plan.step_id, future))
            try:
                await self._call.write(plan)
            except Exception as exc:  # AioRpcError, or InvalidStateError once the RPC ended
                self._break(f"cannot send step {plan.step_id} to {self.address}: {exc}")
        return await future

    async def wait_broken(self) -> str:
        """Return (why) once the stream has broken; a closed executor never returns."""
        await self._broken_event.wait()
        return self._broken or "broken"

    async def close(self) -> None:
        """Close the stream and the channel."""
        if self._call is not None and self._broken is None:
            self._broken = f"executor for {self.address} is closed"
            with contextlib.suppress(Exception):  # the stream may have ended already
                await self._call.done_writing()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
        self._fail_pending(WorkerUnavailableError(f"executor for {self.address} is closed"))

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
                step_id, future = self._pending.popleft()
                if result.step_id != step_id:
                    reason = (
                        f"worker {self.address} answered step {result.step_id}, expected {step_id}"
                    )
                    if not future.done():
                        future.set_exception(WorkerUnavailableError(reason))
                    self._break(reason)
                    return
                if not future.done():
                    future.set_result(result)
        except grpc.aio.AioRpcError as exc:
            self._break(
                f"Execute stream to {self.address} failed: {exc.code().name} {exc.details()}"
            )

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
            self._broken_event.set()
            log.error("worker_stream_broken address=%s reason=%r", self.address, reason)
        self._fail_pending(WorkerUnavailableError(reason))

    def _fail_pending(self, error: Exception) -> None:
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
