"""One connected pipeline as the iteration loop drives it: its executor, its own core
Scheduler (its own KV pool) and the plans in flight on it, oldest first.

`launch()` schedules and submits plans while the scheduler allows (at most
`pipeline_depth` = pp in flight, a request in at most one); each submit runs as a task whose
completion wakes the loop, and results are taken back strictly in step order (`pop_done`)
and folded in: update the scheduler, publish the tokens. A step the workers refuse fails
only the requests in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.errors import WorkerStepError
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.executor import Executor
from orca_scheduler.loop_observer import PipelineObserver, StepTimes
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.publisher import FinishedRequest, Publisher

log = logging.getLogger("orca_scheduler.loop")


@dataclass
class InFlightPlan:
    """A plan sent to the pipeline, and the task that waits for its result."""

    plan: worker_pb2.StepPlan
    task: asyncio.Task
    times: StepTimes
    num_preempted: int  # requests the scheduling of this plan preempted


class ServingPipeline:
    """A pipeline's executor, scheduler and in-flight plans."""

    def __init__(
        self,
        pipeline: int,
        executor: Executor,
        scheduler: Scheduler,
        publisher: Publisher,
        metrics: SchedulerMetrics,
        wake: Callable[[], None],
    ) -> None:
        self.pipeline = pipeline
        self.executor = executor
        self.scheduler = scheduler
        self.publisher = publisher
        self.vocab_size = executor.info().vocab_size
        self.observer = PipelineObserver(pipeline, scheduler, metrics)
        self.in_flight: deque[InFlightPlan] = deque()
        self._wake = wake

    def launch(self) -> list[worker_pb2.StepPlan]:
        """Schedule and submit plans until the scheduler has none (or the depth is full)."""
        sent = []
        while True:
            started = time.perf_counter()
            preemptions = self.scheduler.num_preemptions
            plan = self.scheduler.schedule()
            if plan is None:
                return sent
            times = StepTimes(started, time.perf_counter())
            task = asyncio.ensure_future(self.executor.submit(plan))  # tasks start in order
            task.add_done_callback(lambda t, times=times: self._on_done(t, times))
            preempted = self.scheduler.num_preemptions - preemptions
            self.in_flight.append(InFlightPlan(plan, task, times, preempted))
            self.observer.submitted(plan, len(self.in_flight))
            self._note_cached_tokens(plan)
            sent.append(plan)

    def pop_done(self) -> InFlightPlan | None:
        """The oldest in-flight plan if its result (or failure) is in, else None."""
        if self.in_flight and self.in_flight[0].task.done():
            return self.in_flight.popleft()
        return None

    def fold(self, entry: InFlightPlan, result: worker_pb2.StepResult) -> list[FinishedRequest]:
        """Apply the result of the oldest plan and publish its tokens; returns the requests
        that finished."""
        if result.error:
            finished = self._fail_plan(entry.plan, result.error)
        else:
            try:
                finished = self.publisher.publish(self.scheduler.update(result))
            except WorkerStepError as exc:
                finished = self._fail_plan(entry.plan, str(exc))
        entry.times.done = time.perf_counter()
        self.observer.step(entry.plan, result, entry.times, entry.num_preempted)
        busy_s = getattr(self.executor, "worker_busy_s", None)  # executors of gRPC workers
        if busy_s is not None:
            self.observer.worker_busy(
                self.executor.worker_positions(), busy_s, self.executor.worker_waited_s
            )
        return finished

    def _fail_plan(self, plan: worker_pb2.StepPlan, error: str) -> list[FinishedRequest]:
        """The workers could not run `plan`: end every request in it with an error.

        The core keeps the plan in flight until it sees a result; aborting its requests
        first makes the result below (tokens for every sampled step) change nothing but
        free their blocks."""
        log.error(
            "step_failed pipeline=%d step_id=%d seqs=%d error=%r",
            self.pipeline,
            plan.step_id,
            len(plan.steps),
            error,
        )
        ids = [step.seq_id for step in plan.steps]
        for request_id in ids:
            self.scheduler.abort_request(request_id)
        self.scheduler.update(
            worker_pb2.StepResult(
                step_id=plan.step_id,
                tokens=[worker_pb2.SampledToken(seq_id=s.seq_id) for s in plan.steps if s.sample],
            )
        )
        finished = [self.publisher.finish(request_id, "error", error) for request_id in ids]
        return [f for f in finished if f is not None]

    def _note_cached_tokens(self, plan: worker_pb2.StepPlan) -> None:
        """A sequence's first step starts after its prefix-cache hit: that is its cached count."""
        if not plan.new_seqs:
            return
        starts = {step.seq_id: step.start_position for step in plan.steps}
        for new in plan.new_seqs:
            self.publisher.note_cached_tokens(new.seq_id, starts.get(new.seq_id, 0))

    @property
    def is_stalled(self) -> bool:
        """Requests wait or run but no plan is in flight (nothing could be scheduled)."""
        return not self.in_flight and self.scheduler.has_unfinished()

    @property
    def is_idle(self) -> bool:
        """No request and no plan in flight."""
        return not self.in_flight and not self.scheduler.has_unfinished()

    def close(self) -> None:
        """Stop waiting for the plans in flight and drop the pipeline's gauges."""
        for entry in self.in_flight:
            entry.task.cancel()
        self.in_flight.clear()
        self.observer.forget()

    def _on_done(self, task: asyncio.Task, times: StepTimes) -> None:
        times.received = time.perf_counter()
        if not task.cancelled():
            task.exception()  # retrieved here; the loop reads it again in step order
        self._wake()
