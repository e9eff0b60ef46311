"""The iteration loop: StepPlans on every pipeline, up to pp in flight on each (Orca's
iteration-level scheduling with pipelined batches).

Each turn: apply pipeline changes (a pipeline up or lost), take what the readers put in the
inbox (new and resumed requests, cancels), fold every result that came back (per pipeline,
in step order: update -> publish), then schedule and submit new plans on every pipeline
while its scheduler allows. With nothing to do it sleeps on the inbox, which a returning
result also wakes.

Each pipeline has its own core Scheduler (its own KV pool); a request joins the least loaded
pipeline at admission (`placement`) and stays there. A step the workers refuse fails only
the requests in it. A pipeline that breaks (a worker gone) is dropped: its unfinished
requests (waiting, running and in flight) move to the other pipelines and are recomputed
from their prompt plus the tokens already published, so that publishing resumes at the
right index; with no pipeline left they wait until one comes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from orca_proto.redis_streams import encode
from orca_proto.v1 import stream_pb2
from orca_scheduler.core.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    PromptTooLongError,
)
from orca_scheduler.core.request import FinishReason, Request
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.dead_letters import DeadLetters
from orca_scheduler.executor import Executor
from orca_scheduler.inbox import Inbox, IncomingRequest
from orca_scheduler.loop_observer import report_finished
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.placement import PipelineLoad, Placement
from orca_scheduler.publisher import FinishedRequest, Publisher
from orca_scheduler.serving_pipeline import ServingPipeline
from orca_scheduler.stream_request import check_vocabulary, to_core_request

log = logging.getLogger(__name__)

# A cancel may overtake its request (different streams): remember it this long.
EARLY_CANCEL_TTL_S = 60.0
_UNRUNNABLE = (PromptTooLongError, InvalidRequestError, DuplicateRequestError, ValueError)


@dataclass(frozen=True)
class _PipelineUp:
    pipeline: int
    executor: Executor
    scheduler: Scheduler


@dataclass(frozen=True)
class _PipelineDown:
    executor: Executor
    reason: str


class IterationLoop:
    """Drives one Scheduler per pipeline against its Executor, publishing tokens as they come.

    `on_pipeline_lost(executor, reason)` is told when the loop itself gives a pipeline up
    (a submit failed), so that whoever connected it can close it and try again.
    """

    def __init__(
        self,
        inbox: Inbox,
        publisher: Publisher,
        dead_letters: DeadLetters,
        metrics: SchedulerMetrics,
        on_pipeline_lost: Callable[[Executor, str], None] | None = None,
    ) -> None:
        self.inbox = inbox
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.pipelines: dict[int, ServingPipeline] = {}
        self.draining = False
        self.total_iterations = 0
        self._on_pipeline_lost = on_pipeline_lost
        self._events: list[_PipelineUp | _PipelineDown] = []
        self._placement: dict[str, int] = {}  # request id -> its pipeline
        self._homeless: dict[str, Request] = {}  # no pipeline to run on yet, in arrival order
        self._early_cancels: dict[str, float] = {}
        self._stall_logged = False

    # ---- pipelines in and out (called from other tasks; applied at the next turn) ----------

    def add_pipeline(self, pipeline: int, executor: Executor, scheduler: Scheduler) -> None:
        """Start serving on a connected pipeline with a fresh scheduler of its own."""
        self._events.append(_PipelineUp(pipeline, executor, scheduler))
        self.inbox.wake()

    def remove_pipeline(self, executor: Executor, reason: str) -> None:
        """Stop serving on the pipeline of `executor` (no-op if it is not served) and move its
        unfinished requests to the other pipelines."""
        self._events.append(_PipelineDown(executor, reason))
        self.inbox.wake()

    def drain(self) -> None:
        """Finish the requests already taken, then return from `run()`."""
        self.draining = True
        self.inbox.wake()

    # ---- what the load report shows -----------------------------------------------------

    @property
    def num_waiting(self) -> int:
        """Requests waiting on a pipeline or for one."""
        return sum(p.scheduler.num_waiting for p in self.pipelines.values()) + len(self._homeless)

    @property
    def num_running(self) -> int:
        """Requests running on some pipeline."""
        return sum(p.scheduler.num_running for p in self.pipelines.values())

    @property
    def kv_usage(self) -> float:
        """Fraction of all pipelines' KV blocks in use."""
        total = sum(p.scheduler.block_manager.num_blocks for p in self.pipelines.values())
        free = sum(p.scheduler.num_free_blocks for p in self.pipelines.values())
        return 1.0 - free / total if total else 0.0

    @property
    def max_model_len(self) -> int | None:
        """The longest sequence every pipeline can hold (None with no pipeline)."""
        return min((p.scheduler.max_len for p in self.pipelines.values()), default=None)

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Iterate until drained (returns) or cancelled."""
        while True:
            self._apply_pipeline_events()
            self._apply_inbox()
            self._fold_results()
            self._launch_plans()
            self._update_gauges()
            if self.draining and self._is_done():
                log.info("loop_drained iterations=%d", self.total_iterations)
                return
            stalled = any(p.is_stalled for p in self.pipelines.values())
            if stalled and not self._stall_logged:
                # Nothing can run although requests wait (cannot happen with nothing in
                # flight; guard against a spin all the same).
                log.warning("no_plan waiting=%d", self.num_waiting)
            self._stall_logged = stalled
            await self.inbox.wait(timeout_s=0.05 if stalled else None)

    def _is_done(self) -> bool:
        return (
            not len(self.inbox)
            and not self._homeless
            and all(p.is_idle for p in self.pipelines.values())
        )

    def _launch_plans(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.launch()

    def _fold_results(self) -> None:
        for pipeline in list(self.pipelines.values()):
            while (entry := pipeline.pop_done()) is not None:
                try:
                    result = entry.task.result()
                except Exception as exc:  # PipelineBrokenError, or any failure to run it
                    self._lose(pipeline, f"step {entry.plan.step_id} failed: {exc}", notify=True)
                    break
                self._finished(pipeline.fold(entry, result))
                self.total_iterations += 1

    def _update_gauges(self) -> None:
        m = self.metrics
        m.num_requests_running.set(self.num_running)
        m.num_requests_waiting.set(self.num_waiting)
        m.kv_cache_usage_perc.set(self.kv_usage)
        m.num_pipelines.set(len(self.pipelines))
        for pipeline in self.pipelines.values():
            pipeline.observer.update_gauges(len(pipeline.in_flight))

    # ---- pipelines up and down --------------------------------------------------------------

    def _apply_pipeline_events(self) -> None:
        events, self._events = self._events, []
        for event in events:
            if isinstance(event, _PipelineUp):
                self._add(event)
                continue
            for pipeline in list(self.pipelines.values()):
                if pipeline.executor is event.executor:
                    self._lose(pipeline, event.reason, notify=False)

    def _add(self, event: _PipelineUp) -> None:
        old = self.pipelines.get(event.pipeline)
        if old is not None:
            self._lose(old, "replaced by a new connection", notify=False)
        self.pipelines[event.pipeline] = ServingPipeline(
            event.pipeline,
            event.executor,
            event.scheduler,
            self.publisher,
            self.metrics,
            self.inbox.wake,
        )
        log.info(
            "pipeline_up pipeline=%d pipelines=%d homeless=%d",
            event.pipeline,
            len(self.pipelines),
            len(self._homeless),
        )
        homeless, self._homeless = list(self._homeless.values()), {}
        self._place(homeless)

    def _lose(self, pipeline: ServingPipeline, reason: str, notify: bool) -> None:
        """Drop a pipeline and move its unfinished requests to the others (recompute)."""
        del self.pipelines[pipeline.pipeline]
        pipeline.close()
        requests = pipeline.scheduler.take_unfinished()
        for request in requests:
            self._placement.pop(request.request_id, None)
        log.error(
            "pipeline_lost pipeline=%d reason=%r requeued=%d pipelines_left=%d",
            pipeline.pipeline,
            reason,
            len(requests),
            len(self.pipelines),
        )
        self.metrics.pipeline_failures.inc()
        self.metrics.requests_requeued.inc(len(requests))
        self._place(requests)
        if notify and self._on_pipeline_lost is not None:
            self._on_pipeline_lost(pipeline.executor, reason)

    def _place(self, requests: list[Request]) -> None:
        """Add each request to the least loaded pipeline (or keep it until one comes)."""
        if not requests:
            return
        placement = Placement(
            PipelineLoad(p.pipeline, p.scheduler.num_unfinished_tokens, p.scheduler.num_free_blocks)
            for p in self.pipelines.values()
        )
        for request in requests:
            chosen = placement.choose(request.num_tokens)
            if chosen is None:
                self._homeless[request.request_id] = request
                continue
            pipeline = self.pipelines[chosen]
            try:
                check_vocabulary(request, pipeline.vocab_size)
                pipeline.scheduler.add_request(request)
            except _UNRUNNABLE as exc:
                self._end_untaken(request.request_id, "error", str(exc))
                continue
            self._placement[request.request_id] = chosen

    # ---- requests and controls in ----------------------------------------------------------

    def _apply_inbox(self) -> None:
        for control in self.inbox.take_controls():
            self._apply_control(control)
        admitted = [self._admit(incoming) for incoming in self.inbox.take_requests()]
        self._place([request for request in admitted if request is not None])

    def _apply_control(self, control: stream_pb2.Control) -> None:
        request_id = control.request_id
        if control.kind not in (stream_pb2.Control.CANCEL, stream_pb2.Control.STOP):
            log.warning("control_ignored request_id=%s kind=%d", request_id, control.kind)
            return
        pipeline = self.pipelines.get(self._placement.get(request_id, -1))
        update = pipeline.scheduler.abort_request(request_id) if pipeline else None
        if update is not None:
            if control.kind == stream_pb2.Control.STOP:  # a stop string ended it at the gateway
                update = dataclasses.replace(update, finish_reason=FinishReason.STOP)
            self._finished(self.publisher.publish([update]))
        elif self._homeless.pop(request_id, None) is not None:
            self._end_untaken(request_id, "abort")
        elif not self.publisher.is_active(request_id):
            self._remember_early_cancel(request_id)

    def _admit(self, incoming: IncomingRequest) -> Request | None:
        """Track a new (or resumed) request; returns it for placement, or None when it is a
        repeat or already ended."""
        sr = incoming.request
        request_id = sr.request_id
        if self.publisher.is_active(request_id):
            if self.publisher.entry_id_of(request_id) != incoming.entry_id:
                reason = "duplicate request_id"
                self.dead_letters.send(incoming.entry_id, encode(sr), reason)
            return None  # else: the same entry seen twice (claimed while we serve it)
        published = len(incoming.output_token_ids)
        self.publisher.track(
            request_id,
            incoming.entry_id,
            len(sr.prompt_token_ids),
            published,
            traceparent=sr.traceparent,
        )
        if self._early_cancels.pop(request_id, None) is not None:
            self._end_untaken(request_id, "abort")
            return None
        if published >= sr.max_tokens > 0:  # resumed with every token already sent
            self._end_untaken(request_id, "length")
            return None
        try:
            return to_core_request(incoming)
        except _UNRUNNABLE as exc:
            self._end_untaken(request_id, "error", str(exc))
            return None

    def _end_untaken(self, request_id: str, reason: str, error: str = "") -> None:
        finished = self.publisher.finish(request_id, reason, error)
        self._finished([finished] if finished is not None else [])

    def _finished(self, finished: list[FinishedRequest]) -> None:
        for f in finished:
            self._placement.pop(f.request_id, None)
            report_finished(self.metrics, f)

    def _remember_early_cancel(self, request_id: str) -> None:
        now = time.monotonic()
        for stale in [r for r, t in self._early_cancels.items() if now - t > EARLY_CANCEL_TTL_S]:
            del self._early_cancels[stale]
        self._early_cancels[request_id] = now
