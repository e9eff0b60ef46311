"""The scheduler service: wires Redis, the pipelines of workers and the iteration loop.

`start()` connects to Redis, starts following the workers (discovery -> pipelines), waits
for the expected pipelines (up to the connect timeout), creates the consumer group and
resumes unfinished requests; `run()` serves until `drain()` (stop reading new requests,
finish the running ones) or `stop_now()`, and returns the exit code. Pipelines come and go
while it serves: a lost one has its requests recomputed on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orca_proto.redis_streams import LoadReport
from orca_proto.topology import Topology
from orca_proto.v1 import worker_pb2
from orca_scheduler.config import SchedulerServiceConfig
from orca_scheduler.control import ControlReader
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.dead_letters import DeadLetters
from orca_scheduler.discovery.base import Discovery, StaticDiscovery
from orca_scheduler.grpc_executor import WorkerUnavailableError
from orca_scheduler.inbox import Inbox
from orca_scheduler.load_reporter import LoadReporter
from orca_scheduler.loop import IterationLoop
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.pipeline_executor import PipelineExecutor
from orca_scheduler.pipeline_manager import PipelineManager
from orca_scheduler.publisher import Publisher
from orca_scheduler.recovery import Recovery
from orca_scheduler.redis_writer import RedisWriter
from orca_scheduler.request_intake import RequestIntake, ensure_group

log = logging.getLogger(__name__)

# On stop: how long to wait for queued Redis writes before giving up on them.
FLUSH_TIMEOUT_S = 5.0


class SchedulerService:
    """One scheduler process: its connections, its tasks, and their shutdown."""

    def __init__(self, config: SchedulerServiceConfig, discovery: Discovery | None = None) -> None:
        self.config = config
        self.metrics = SchedulerMetrics()
        # The timeout outlasts the blocking reads (<= 1 s): a hung Redis errors, then retries.
        self.redis = aioredis.Redis.from_url(
            config.redis_url, socket_timeout=10.0, socket_connect_timeout=5.0
        )
        self.topology = Topology(pp=config.pp, tp=config.tp)
        self.discovery = discovery or StaticDiscovery(config.workers)
        self.inbox = Inbox()
        self.writer = RedisWriter(self.redis)
        self.publisher = Publisher(self.writer)
        self.dead_letters = DeadLetters(self.writer, self.metrics)
        self.intake = RequestIntake(
            self.redis, config.consumer_name, self.inbox, self.dead_letters, self.writer
        )
        self.control = ControlReader(self.redis, self.inbox)
        self.recovery = Recovery(
            self.redis,
            self.intake,
            self.inbox,
            self.writer,
            self.publisher.active_entry_ids,
            config.claim_idle_s,
        )
        self.pipelines = PipelineManager(
            self.discovery,
            self.topology,
            self._pipeline_up,
            self._pipeline_down,
            config.max_message_bytes,
        )
        self.loop = IterationLoop(
            self.inbox,
            self.publisher,
            self.dead_letters,
            self.metrics,
            on_pipeline_lost=self._pipeline_lost,
        )
        self.load_reporter = LoadReporter(
            self.redis, self._load_snapshot, config.load_report_interval_s
        )
        self.model_name = config.served_model_name
        self._max_model_len = 0
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None
        self._drain_task: asyncio.Task | None = None
        self._stop_metrics = None

    async def start(self) -> int:
        """Connect to Redis and the workers, resume, start every task; returns the number of
        pipelines connected. WorkerUnavailableError when a static list of workers gives no
        pipeline within the connect timeout (with Kubernetes, it serves and waits)."""
        cfg = self.config
        await self._wait_for_redis(cfg.connect_timeout_s)
        self._tasks["pipelines"] = asyncio.create_task(self.pipelines.run(), name="pipelines")
        connected = await self.pipelines.wait_connected(
            cfg.expected_pipelines, cfg.connect_timeout_s
        )
        if connected == 0 and cfg.discovery == "static":
            raise WorkerUnavailableError(
                f"no pipeline of {','.join(cfg.workers)} answered within {cfg.connect_timeout_s}s"
            )
        if connected < cfg.expected_pipelines:
            log.warning(
                "pipelines_missing connected=%d expected=%d (serving; more join when ready)",
                connected,
                cfg.expected_pipelines,
            )
        if cfg.metrics_port:
            self._stop_metrics = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        await ensure_group(self.redis)
        await self.control.start_from_now()
        own = await self.recovery.resume_own_pending()
        claimed = await self.recovery.claim_stale()
        log.info(
            "scheduler_started consumer=%s model=%s pipelines=%d pp=%d tp=%d resumed_own=%d "
            "claimed=%d",
            cfg.consumer_name,
            self.model_name,
            connected,
            cfg.pp,
            cfg.tp,
            own,
            claimed,
        )
        for name, coro in (
            ("redis-writer", self.writer.run()),
            ("intake", self.intake.run()),
            ("control", self.control.run()),
            ("load-reporter", self.load_reporter.run()),
            ("recovery", self.recovery.run()),
        ):
            self._tasks[name] = asyncio.create_task(coro, name=name)
        self._loop_task = asyncio.create_task(self.loop.run(), name="iteration-loop")
        await self.load_reporter.report()  # gateways see the pipelines from the ready line on
        return connected

    def _pipeline_up(
        self, pipeline: int, executor: PipelineExecutor, info: worker_pb2.WorkerInfo
    ) -> None:
        """A pipeline connected: serve on it with a scheduler sized from its KV pool."""
        cfg = self.config
        scheduler = Scheduler(
            SchedulerConfig(
                num_kv_blocks=info.num_kv_blocks,
                max_model_len=info.max_model_len,
                max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
                block_size=info.block_size,
                kv_policy=cfg.kv_policy,
                enable_prefix_caching=cfg.enable_prefix_caching,
                pipeline_depth=executor.depth,
                overlap=cfg.overlap,
            ),
            eos_token_ids=list(info.eos_token_ids),
        )
        if not self.model_name:
            self.model_name = info.model
        self._max_model_len = self._max_model_len or scheduler.max_len
        self.loop.add_pipeline(pipeline, executor, scheduler)

    def _pipeline_down(self, executor: PipelineExecutor, reason: str) -> None:
        self.loop.remove_pipeline(executor, reason)

    def _pipeline_lost(self, executor, reason: str) -> None:
        self.pipelines.report_lost(executor, reason)

    def drain(self) -> None:
        """Stop taking new requests; `run()` returns once the taken ones have finished."""
        log.info("drain_requested consumer=%s", self.config.consumer_name)
        self.intake.stop()
        self.recovery.claiming = False
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain_after_intake(), name="drain")

    async def _drain_after_intake(self) -> None:
        # Entries the intake reads until it stops are ours: serve them too.
        intake = self._tasks.get("intake")
        if intake is not None:
            await asyncio.wait([intake])
        self.loop.drain()

    def stop_now(self) -> None:
        """Stop at once: unfinished requests stay pending in Redis for another scheduler."""
        log.info("stop_requested consumer=%s", self.config.consumer_name)
        self.intake.stop()
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def run(self) -> int:
        """Serve until drained or stopped; returns the process exit code."""
        assert self._loop_task is not None, "start() first"
        watched = {self._loop_task, *self._tasks.values()}
        code = None
        while code is None:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                watched.discard(task)
                code = self._exit_code(task) if code is None else code
        await self.close()
        return code

    def _exit_code(self, task: asyncio.Task) -> int | None:
        """The exit code a finished task calls for; None when serving goes on."""
        name = task.get_name()
        if task is self._loop_task:
            if task.cancelled() or task.exception() is None:
                return 0  # stopped, or drained
            log.error("loop_crashed", exc_info=task.exception())
            return 1
        if name == "intake" and not task.cancelled() and task.exception() is None:
            return None  # it stops reading when asked to (drain)
        if name == "pipelines" and not task.cancelled() and task.exception() is None:
            return None  # discovery reported everything it will (a static list)
        error = None if task.cancelled() else task.exception()
        log.error("task_crashed task=%s", name, exc_info=error)
        return 1

    async def close(self) -> None:
        """Flush queued writes, publish a last load report, close every connection."""
        self.intake.stop()
        intake = self._tasks.get("intake")
        if intake is not None:  # let its blocking read return: entries it got are not lost
            await asyncio.wait([intake], timeout=2.0)
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await asyncio.wait_for(self.writer.flush(), FLUSH_TIMEOUT_S)
        tasks = [*self._tasks.values(), self._loop_task, self._drain_task]
        tasks = [t for t in tasks if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report = self._load_snapshot()
        report.num_pipelines = 0
        with contextlib.suppress(RedisError, OSError):
            await self.load_reporter.report(report)
        await self.pipelines.close()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None

    def _load_snapshot(self) -> LoadReport:
        loop = self.loop
        self._max_model_len = loop.max_model_len or self._max_model_len
        serving = self._loop_task is not None and not self._loop_task.done()
        return LoadReport(
            model=self.model_name,
            max_model_len=self._max_model_len,
            num_waiting=loop.num_waiting + len(self.inbox),
            num_running=loop.num_running,
            kv_usage=loop.kv_usage,
            # Connected ones (the loop serves each from its next turn on).
            num_pipelines=self.pipelines.num_connected if serving else 0,
            pp=self.topology.pp,
            tp=self.topology.tp,
        )

    async def _wait_for_redis(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.redis.ping()
                return
            except (RedisError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"Redis at {self.config.redis_url} did not answer within {timeout_s}s: {exc}"
                    ) from exc
                await asyncio.sleep(0.2)
