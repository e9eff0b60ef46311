"""The iteration loop: one StepPlan per model iteration (Orca's iteration-level scheduling).

Each turn takes what the readers put in the inbox (new and resumed requests, cancels), then
schedule -> submit -> update -> publish. With nothing to run it sleeps on the inbox. A step
the worker refuses fails only the requests in it; a broken worker stream ends the loop
(WorkerUnavailableError): the unfinished requests stay pending in Redis for a restart.
"""

from __future__ import annotations

import logging
import time

from orca_proto.redis_streams import encode
from orca_proto.v1 import stream_pb2, worker_pb2
from orca_scheduler.core.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    PromptTooLongError,
    WorkerStepError,
)
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.dead_letters import DeadLetters
from orca_scheduler.executor import Executor
from orca_scheduler.inbox import Inbox, IncomingRequest
from orca_scheduler.loop_observer import LoopObserver, StepTimes
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.publisher import FinishedRequest, Publisher
from orca_scheduler.stream_request import to_core_request

log = logging.getLogger(__name__)

# A cancel may overtake its request (different streams): remember it this long.
EARLY_CANCEL_TTL_S = 60.0


class IterationLoop:
    """Drives one Scheduler against one Executor, publishing tokens as they come."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        inbox: Inbox,
        publisher: Publisher,
        dead_letters: DeadLetters,
        metrics: SchedulerMetrics,
    ) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.inbox = inbox
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.vocab_size = executor.info().vocab_size
        self.draining = False
        self._early_cancels: dict[str, float] = {}
        self._observer = LoopObserver(scheduler, metrics)

    def drain(self) -> None:
        """Finish the requests already taken, then return from `run()`."""
        self.draining = True
        self.inbox.wake()

    async def run(self) -> None:
        """Iterate until drained (returns) or the worker is lost (raises)."""
        while True:
            self._apply_inbox()
            if not self.scheduler.has_unfinished():
                self._observer.update_gauges()
                if self.draining and not len(self.inbox):
                    log.info("loop_drained iterations=%d", self._observer.total_iterations)
                    return
                await self.inbox.wait()
                continue
            if not await self._step():
                # Nothing can run although requests wait (cannot happen with one plan in
                # flight; guard against a spin all the same).
                log.warning("no_plan waiting=%d", self.scheduler.num_waiting)
                await self.inbox.wait(timeout_s=0.05)

    # ---- one iteration ---------------------------------------------------------------------

    async def _step(self) -> bool:
        started = time.perf_counter()
        preemptions = self.scheduler.num_preemptions
        plan = self.scheduler.schedule()
        built = time.perf_counter()
        if plan is None:
            return False
        self._note_cached_tokens(plan)
        result = await self.executor.submit(plan)
        received = time.perf_counter()
        if result.error:
            finished = self._fail_plan(plan, result.error)
        else:
            try:
                finished = self.publisher.publish(self.scheduler.update(result))
            except WorkerStepError as exc:
                finished = self._fail_plan(plan, str(exc))
        times = StepTimes(started, built, received, time.perf_counter())
        self._observer.step(plan, result, times, self.scheduler.num_preemptions - preemptions)
        for request in finished:
            self._observer.finished(request)
        return True

    def _fail_plan(self, plan: worker_pb2.StepPlan, error: str) -> list[FinishedRequest]:
        """The worker could not run `plan`: end every request in it with an error.

        The core keeps the plan in flight until it sees a result; aborting its requests
        first makes the result below (tokens for every sampled step) change nothing but
        free their blocks."""
        log.error("step_failed step_id=%d seqs=%d error=%r", plan.step_id, len(plan.steps), error)
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

    # ---- requests and controls in ----------------------------------------------------------

    def _apply_inbox(self) -> None:
        for control in self.inbox.take_controls():
            self._apply_control(control)
        for incoming in self.inbox.take_requests():
            self._admit(incoming)

    def _apply_control(self, control: stream_pb2.Control) -> None:
        request_id = control.request_id
        if control.kind not in (stream_pb2.Control.CANCEL, stream_pb2.Control.STOP):
            log.warning("control_ignored request_id=%s kind=%d", request_id, control.kind)
            return
        update = self.scheduler.abort_request(request_id)
        if update is not None:
            for finished in self.publisher.publish([update]):
                self._observer.finished(finished)
        elif not self.publisher.is_active(request_id):
            self._remember_early_cancel(request_id)

    def _admit(self, incoming: IncomingRequest) -> None:
        sr = incoming.request
        request_id = sr.request_id
        if self.publisher.is_active(request_id):
            if self.publisher.entry_id_of(request_id) != incoming.entry_id:
                reason = "duplicate request_id"
                self.dead_letters.send(incoming.entry_id, encode(sr), reason)
            return  # else: the same entry seen twice (claimed while we serve it)
        published = len(incoming.output_token_ids)
        self.publisher.track(request_id, incoming.entry_id, len(sr.prompt_token_ids), published)
        if self._early_cancels.pop(request_id, None) is not None:
            self._end_untaken(request_id, "abort")
            return
        if published >= sr.max_tokens > 0:  # resumed with every token already sent
            self._end_untaken(request_id, "length")
            return
        try:
            self.scheduler.add_request(to_core_request(incoming, self.vocab_size))
        except (PromptTooLongError, InvalidRequestError, DuplicateRequestError, ValueError) as exc:
            self._end_untaken(request_id, "error", str(exc))

    def _end_untaken(self, request_id: str, reason: str, error: str = "") -> None:
        finished = self.publisher.finish(request_id, reason, error)
        if finished is not None:
            self._observer.finished(finished)

    def _remember_early_cancel(self, request_id: str) -> None:
        now = time.monotonic()
        for stale in [r for r, t in self._early_cancels.items() if now - t > EARLY_CANCEL_TTL_S]:
            del self._early_cancels[stale]
        self._early_cancels[request_id] = now
