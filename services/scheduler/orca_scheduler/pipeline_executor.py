"""The Executor of one pipeline: pp stages × tp ranks of workers, each on its own stream.

Every worker of the pipeline gets every plan, in the same order (`send` is synchronous, so
plan k is queued on every stream before plan k+1 is); a plan's result is the last stage's
rank 0 StepResult (the only one with tokens), once every worker has answered that step,
with any worker's error as its error. Up to pp plans may be in flight: `submit` may be
called again before the previous one returns. A worker's stream that breaks breaks the
pipeline (its stages cannot go on without it): every waiting and later `submit` raises
PipelineBrokenError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from orca_proto.topology import Topology
from orca_proto.v1 import worker_pb2
from orca_scheduler.grpc_executor import WorkerStream, WorkerUnavailableError

log = logging.getLogger(__name__)


class PipelineBrokenError(WorkerUnavailableError):
    """A worker of the pipeline could not be reached or its stream broke: the pipeline has
    lost its KV state and serves no more plans."""


class PipelineExecutor:
    """Runs StepPlans on the workers of pipeline `pipeline` (addresses in ordinal order)."""

    def __init__(
        self,
        pipeline: int,
        addresses: Sequence[str],
        topology: Topology,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if len(addresses) != topology.pipeline_size:
            raise ValueError(
                f"pipeline {pipeline}: {len(addresses)} workers, expected {topology.pipeline_size}"
            )
        self.pipeline = pipeline
        self.topology = topology
        self.addresses = tuple(addresses)
        self.depth = topology.pp  # plans in flight that keep every stage busy
        self._positions = [topology.position(o) for o in topology.members(pipeline)]
        self._workers = [WorkerStream(a, max_message_bytes, self._break) for a in addresses]
        self._last = topology.last_stage_rank0_index
        self._info: worker_pb2.WorkerInfo | None = None
        # Per worker (ordinal order), seconds of step work it reported: its stage's busy time.
        self.worker_busy_s = [0.0] * len(self._workers)
        self.worker_waited_s = [0.0] * len(self._workers)  # idle before each plan, summed
        self.broken: str | None = None
        self._broken_event = asyncio.Event()

    async def connect(self, timeout_s: float) -> worker_pb2.WorkerInfo:
        """Fetch every worker's Info (one try each), check they form this pipeline, then open
        every Execute stream. WorkerUnavailableError (or ValueError for a worker that is not
        what the topology says) when the pipeline cannot serve."""
        infos = await asyncio.gather(
            *(w.fetch_info(timeout_s) for w in self._workers), return_exceptions=True
        )
        for outcome in infos:
            if isinstance(outcome, BaseException):
                raise outcome
        self._info = self._combine(infos)
        for worker in self._workers:
            worker.open()
        log.info(
            "pipeline_connected pipeline=%d workers=%s model=%s kv_blocks=%d block_size=%d pp=%d "
            "tp=%d",
            self.pipeline,
            ",".join(self.addresses),
            self._info.model,
            self._info.num_kv_blocks,
            self._info.block_size,
            self.topology.pp,
            self.topology.tp,
        )
        return self._info

    def worker_positions(self) -> list[tuple[int, int]]:
        """(stage, tp_rank) of each worker, in the order of `worker_busy_s`."""
        return [(pos.stage, pos.tp_rank) for pos in self._positions]

    def info(self) -> worker_pb2.WorkerInfo:
        """The last stage rank 0's Info, with the smallest KV pool of all stages."""
        if self._info is None:
            raise PipelineBrokenError(f"pipeline {self.pipeline} is not connected")
        return self._info

    async def submit(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        """Send `plan` to every worker and return the pipeline's result for it."""
        if self.broken is not None:
            raise PipelineBrokenError(self.broken)
        futures = [worker.send(plan) for worker in self._workers]  # no await: same order
        results = await asyncio.gather(*futures, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise PipelineBrokenError(self.broken or str(outcome)) from outcome
        for i, r in enumerate(results):
            t = r.timings
            self.worker_busy_s[i] += (t.prepare_ms + t.forward_ms + t.sample_ms) / 1000.0
            self.worker_waited_s[i] += t.waited_ms / 1000.0
        errors = [
            (pos, r.error) for pos, r in zip(self._positions, results, strict=True) if r.error
        ]
        result = results[self._last]
        if errors and len(self._workers) > 1:
            result = worker_pb2.StepResult()
            result.CopyFrom(results[self._last])
            result.error = "; ".join(
                f"stage {pos.stage} rank {pos.tp_rank}: {error}" for pos, error in errors
            )
        return result

    async def wait_broken(self) -> str:
        """Return (why) once the pipeline has broken; a closed pipeline never returns."""
        await self._broken_event.wait()
        return self.broken or "broken"

    async def close(self) -> None:
        """End every worker's stream and channel; waiting submits raise PipelineBrokenError."""
        if self.broken is None:
            self.broken = f"pipeline {self.pipeline} is closed"
        await asyncio.gather(*(w.close() for w in self._workers), return_exceptions=True)

    def _break(self, reason: str) -> None:
        """A worker's stream broke: fail every other worker's waiting results too."""
        if self.broken is None:
            self.broken = f"pipeline {self.pipeline}: {reason}"
            self._broken_event.set()
            log.error("pipeline_broken pipeline=%d reason=%r", self.pipeline, reason)
        for worker in self._workers:
            worker.fail(self.broken)

    def _combine(self, infos: Sequence[worker_pb2.WorkerInfo]) -> worker_pb2.WorkerInfo:
        """One Info for the pipeline; ValueError if a worker is not where the topology puts it
        (checked where the worker reports its topology) or serves another model."""
        t = self.topology
        for address, pos, info in zip(self.addresses, self._positions, infos, strict=True):
            if info.pp_size and (info.pp_size, info.tp_size) != (t.pp, t.tp):
                raise ValueError(
                    f"worker {address} runs pp={info.pp_size} tp={info.tp_size}, "
                    f"the scheduler expects pp={t.pp} tp={t.tp}"
                )
            if info.pp_size and (info.stage, info.tp_rank) != (pos.stage, pos.tp_rank):
                raise ValueError(
                    f"worker {address} is stage {info.stage} rank {info.tp_rank}, expected "
                    f"stage {pos.stage} rank {pos.tp_rank} of pipeline {self.pipeline}"
                )
            if info.pp_size and info.pipeline != self.pipeline:
                log.warning(
                    "worker_pipeline_mismatch address=%s reported=%d expected=%d",
                    address,
                    info.pipeline,
                    self.pipeline,
                )
            if (info.model, info.block_size) != (infos[0].model, infos[0].block_size):
                raise ValueError(
                    f"worker {address} serves {info.model} with blocks of {info.block_size}, "
                    f"not {infos[0].model} with blocks of {infos[0].block_size}"
                )
        combined = worker_pb2.WorkerInfo()
        combined.CopyFrom(infos[self._last])
        combined.num_kv_blocks = min(info.num_kv_blocks for info in infos)
        return combined
