"""Turns the ready workers that discovery reports into connected pipelines, and back.

A pipeline is connected once all its pp·tp workers are ready (and answer), and dropped as
soon as one of them goes away, or its stream breaks. A pipeline that cannot be reached, or
broke while its workers still count as ready (a static list cannot tell), is retried with a
backoff, so a restarted worker is picked up again with no restart of the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from orca_proto.topology import Topology
from orca_proto.v1 import worker_pb2
from orca_scheduler.discovery.base import Discovery, ReadyWorkers
from orca_scheduler.grpc_executor import WorkerUnavailableError
from orca_scheduler.pipeline_executor import PipelineExecutor

log = logging.getLogger(__name__)

# Called with each newly connected pipeline, and with each one that is gone (and why).
PipelineUp = Callable[[int, PipelineExecutor, worker_pb2.WorkerInfo], None]
PipelineDown = Callable[[PipelineExecutor, str], None]


@dataclass
class _Connected:
    executor: PipelineExecutor
    watch: asyncio.Task


class PipelineManager:
    """Keeps one PipelineExecutor per complete pipeline of the discovered workers."""

    def __init__(
        self,
        discovery: Discovery,
        topology: Topology,
        on_up: PipelineUp,
        on_down: PipelineDown,
        max_message_bytes: int = 64 * 1024 * 1024,
        attempt_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._discovery = discovery
        self._topology = topology
        self._on_up = on_up
        self._on_down = on_down
        self._max_message_bytes = max_message_bytes
        self._attempt_timeout_s = attempt_timeout_s
        self._max_backoff_s = max_backoff_s
        self._wanted: dict[int, tuple[str, ...]] = {}  # pipeline -> member addresses
        self._connecting: dict[int, asyncio.Task] = {}
        self._connected: dict[int, _Connected] = {}
        self._closing: set[asyncio.Task] = set()
        self._changed = asyncio.Event()

    @property
    def num_connected(self) -> int:
        """Pipelines connected now."""
        return len(self._connected)

    async def run(self) -> None:
        """Follow discovery until cancelled."""
        async for ready in self._discovery.updates():
            self._reconcile(ready)

    async def wait_connected(self, count: int, timeout_s: float) -> int:
        """Wait until `count` pipelines are connected or `timeout_s` passed; returns how many
        are connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.num_connected < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.num_connected

    def report_lost(self, executor: PipelineExecutor, reason: str) -> None:
        """The loop gave the pipeline of `executor` up: close it and connect again."""
        for pipeline, connected in list(self._connected.items()):
            if connected.executor is executor:
                self._drop(pipeline, reason, retry=True)

    async def close(self) -> None:
        """Stop connecting and close every pipeline."""
        tasks = [*self._connecting.values(), *(c.watch for c in self._connected.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        executors = [c.executor for c in self._connected.values()]
        self._connecting.clear()
        self._connected.clear()
        await asyncio.gather(
            *(e.close() for e in executors), *self._closing, return_exceptions=True
        )

    def _reconcile(self, ready: ReadyWorkers) -> None:
        topology = self._topology
        wanted = {
            p: tuple(ready[o] for o in topology.members(p))
            for p in topology.complete_pipelines(ready)
        }
        self._wanted = wanted
        for pipeline in list(self._connected):
            if wanted.get(pipeline) != self._connected[pipeline].executor.addresses:
                self._drop(pipeline, "a worker of the pipeline is gone", retry=False)
        for pipeline in list(self._connecting):
            if pipeline not in wanted:
                self._connecting.pop(pipeline).cancel()
        for pipeline in wanted:
            if pipeline not in self._connected and pipeline not in self._connecting:
                self._start_connecting(pipeline, delay_s=0.0)

    def _start_connecting(self, pipeline: int, delay_s: float) -> None:
        task = asyncio.create_task(self._connect(pipeline, delay_s), name=f"connect-{pipeline}")
        self._connecting[pipeline] = task

    async def _connect(self, pipeline: int, delay_s: float) -> None:
        """Connect the pipeline as it is wanted now, retrying with a backoff."""
        backoff_s = max(delay_s, 0.2)
        await asyncio.sleep(delay_s)
        attempt = 0
        while True:
            addresses = self._wanted[pipeline]  # present: cancelled once not wanted
            executor = PipelineExecutor(
                pipeline, addresses, self._topology, self._max_message_bytes
            )
            attempt += 1
            try:
                info = await executor.connect(self._attempt_timeout_s)
                if self._wanted.get(pipeline) == addresses:
                    break
                await executor.close()  # a worker moved meanwhile: connect to the new one
                continue
            except (WorkerUnavailableError, ValueError) as exc:
                await executor.close()
                # Waiting for workers to come up is normal; a misplaced worker is not.
                misplaced = isinstance(exc, ValueError)
                if attempt == 1 or misplaced:
                    log.log(
                        logging.WARNING if misplaced else logging.INFO,
                        "pipeline_waiting pipeline=%d workers=%s error=%r",
                        pipeline,
                        ",".join(addresses),
                        str(exc),
                    )
            except BaseException:
                await executor.close()
                raise
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._max_backoff_s)
        del self._connecting[pipeline]
        watch = asyncio.create_task(self._watch(pipeline, executor), name=f"watch-{pipeline}")
        self._connected[pipeline] = _Connected(executor, watch)
        self._changed.set()
        self._on_up(pipeline, executor, info)

    async def _watch(self, pipeline: int, executor: PipelineExecutor) -> None:
        reason = await executor.wait_broken()
        connected = self._connected.get(pipeline)
        if connected is not None and connected.executor is executor:
            self._drop(pipeline, reason, retry=True, from_watch=True)

    def _drop(self, pipeline: int, reason: str, retry: bool, from_watch: bool = False) -> None:
        """Tell the loop the pipeline is gone, close it, and connect again if still wanted."""
        connected = self._connected.pop(pipeline)
        if not from_watch:
            connected.watch.cancel()
        self._changed.set()
        log.info("pipeline_down pipeline=%d reason=%r", pipeline, reason)
        self._on_down(connected.executor, reason)
        closing = asyncio.create_task(connected.executor.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        if retry and pipeline in self._wanted and pipeline not in self._connecting:
            self._start_connecting(pipeline, delay_s=1.0)
