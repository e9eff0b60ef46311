"""Iteration-level scheduling (Orca, OSDI'22): a new batch every model iteration.

There is no prefill/decode split: each request has "tokens to compute" (prompt chunks, the
recompute of a preempted request, or the last sampled token) and every step hands out a
token budget, running requests first, then waiting ones in FCFS order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.block_manager import BlockManager, cdiv
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    PromptTooLongError,
    WorkerStepError,
)
from orca_scheduler.core.outputs import SequenceUpdate
from orca_scheduler.core.plan_builder import PlanBuilder, ScheduledStep
from orca_scheduler.core.request import FinishReason, Request, RequestStatus
from orca_scheduler.core.waiting_queue import WaitingQueue


@dataclass(frozen=True, slots=True)
class _InFlightPlan:
    step_id: int
    batch: list[ScheduledStep]


class Scheduler:
    """Owns every request's state and the KV pool; turns them into `StepPlan`s.

    Drive it with `schedule()` (a plan, or None when nothing can run) and `update(result)`
    for each result, in step order. Up to `config.pipeline_depth` plans may be in flight;
    a request is in at most one of them.
    """

    def __init__(self, config: SchedulerConfig, eos_token_ids: Iterable[int] = ()) -> None:
        self.config = config
        self.eos_token_ids = frozenset(eos_token_ids)
        # A sequence never outgrows the pool: it would have to preempt itself forever.
        self.max_len = min(config.max_model_len, config.num_kv_blocks * config.block_size)
        self.block_manager = BlockManager(
            config.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self.num_preemptions = 0
        self.peak_running = 0  # most requests running at once so far (the largest batch)
        # Unfinished requests, plus aborted ones whose plan is still in flight.
        self._requests: dict[str, Request] = {}
        self._waiting = WaitingQueue()
        self._running: list[Request] = []  # admission order: oldest first
        self._in_flight: deque[_InFlightPlan] = deque()
        # Per request: in how many in-flight plans it is, and whether its newest in-flight
        # step samples (overlapped scheduling may then schedule it once more).
        self._in_flight_count: Counter[str] = Counter()
        self._in_flight_samples: dict[str, bool] = {}
        # Overlapped scheduling keeps two plans in flight on one stage.
        self._depth = 2 if config.overlap else config.pipeline_depth
        self._plans = PlanBuilder()

    # ---- requests in and out -------------------------------------------------------------

    def validate_request(self, request: Request) -> None:
        """Raise the error `add_request` would raise for `request`, changing nothing."""
        if request.request_id in self._requests:
            raise DuplicateRequestError(f"request id {request.request_id!r} is already in use")
        if not request.prompt_token_ids:
            raise InvalidRequestError(f"{request.request_id}: the prompt is empty")
        if request.max_tokens < 1:
            raise InvalidRequestError(f"{request.request_id}: max_tokens must be >= 1")
        if request.num_output_tokens >= request.max_tokens:
            raise InvalidRequestError(f"{request.request_id}: already has max_tokens outputs")
        cfg, n = self.config, request.num_tokens
        if n + 1 > cfg.max_model_len:
            raise PromptTooLongError(
                f"{request.request_id}: {n} prompt tokens leave no room for output "
                f"(max_model_len={cfg.max_model_len}, the model's context)"
            )
        if cdiv(n, cfg.block_size) > cfg.num_kv_blocks:
            raise PromptTooLongError(
                f"{request.request_id}: {n} prompt tokens need more than the KV pool's "
                f"{cfg.num_kv_blocks} blocks of {cfg.block_size}"
            )
        if cfg.kv_policy == "reserve" and cdiv(self._reserved_len(request), cfg.block_size) > (
            cfg.num_kv_blocks
        ):
            raise PromptTooLongError(
                f"{request.request_id}: prompt + max_tokens ({self._reserved_len(request)} "
                f"tokens) cannot fit the KV pool's {cfg.num_kv_blocks} blocks (reserve policy)"
            )

    def add_request(self, request: Request) -> None:
        """Queue a request (PromptTooLongError, DuplicateRequestError, InvalidRequestError)."""
        self.validate_request(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.block_ids = []
        request.finish_reason = None
        self._requests[request.request_id] = request
        self._waiting.push(request)

    def abort_request(self, request_id: str) -> SequenceUpdate | None:
        """Cancel a request in any state; returns its final update, or None if it is unknown
        or already done. Its blocks are freed at once, or when the result of the plan it is
        in flight in comes back (the workers may still be writing them)."""
        request = self._requests.get(request_id)
        if request is None or request.status.is_finished:
            return None
        if self._is_in_flight(request):
            self._running.remove(request)
            request.status, request.finish_reason = RequestStatus.ABORTED, FinishReason.ABORT
        else:
            self._finish(request, FinishReason.ABORT)
        return SequenceUpdate(request_id, [], [], True, FinishReason.ABORT)

    def get_request(self, request_id: str) -> Request | None:
        """The request with this id, while the scheduler still tracks it."""
        return self._requests.get(request_id)

    def has_unfinished(self) -> bool:
        """Whether any request waits or runs."""
        return bool(self._waiting) or bool(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests waiting for admission (preempted ones included)."""
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        """Admitted requests (they hold KV blocks)."""
        return len(self._running)

    @property
    def num_unfinished_tokens(self) -> int:
        """Prompt plus output tokens of every waiting and running request: the load that
        placing requests across pipelines balances."""
        return sum(r.num_tokens for r in self._running) + sum(r.num_tokens for r in self._waiting)

    @property
    def num_free_blocks(self) -> int:
        """KV blocks no request owns (evictable cached ones included)."""
        return self.block_manager.num_free_blocks

    def take_unfinished(self) -> list[Request]:
        """Remove every unfinished request (waiting, running or in flight) for recompute on
        another pipeline, when this one is lost: each comes back as a fresh waiting request
        that keeps its prompt and the output tokens already reported (so it resumes after
        them), running ones first in admission order, then the waiting queue's order.

        Plans in flight are forgotten (their results will never be applied) and the pool is
        emptied. The workers' KV is gone with the pipeline, cached prefixes included: drop
        this scheduler afterwards rather than feed it to a new set of workers.
        """
        taken = [r for r in self._running if r.status is RequestStatus.RUNNING]
        taken += list(self._waiting)
        for request in list(self._requests.values()):
            self.block_manager.free(request)
        for request in taken:
            request.status = RequestStatus.WAITING
            request.num_computed_tokens = 0
        self._requests.clear()
        self._waiting = WaitingQueue()
        self._running.clear()
        self._in_flight.clear()
        self._in_flight_count.clear()
        self._in_flight_samples.clear()
        return taken

    @property
    def num_in_flight(self) -> int:
        """Plans sent whose results have not come back."""
        return len(self._in_flight)

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV pool in use."""
        return self.block_manager.usage

    # ---- the policy -----------------------------------------------------------------------

    def schedule(self) -> worker_pb2.StepPlan | None:
        """The next step's plan, or None when nothing can run (or too many are in flight).

        A plan may have no steps when it only carries `released_seq_ids`: a released sequence
        cannot join again until workers have dropped it.
        """
        if len(self._in_flight) >= self._depth:
            return None
        budget = self.config.max_num_batched_tokens
        seq_cap = self._plan_seq_cap()
        batch: list[ScheduledStep] = []
        preemptions_before = self.num_preemptions
        short_of_blocks = False

        for request in list(self._running):
            if budget == 0 or len(batch) >= seq_cap:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            if self._is_in_flight(request):  # busy in another plan, unless it may look ahead
                if self._may_look_ahead(request):
                    if self.block_manager.allocate(request, request.num_tokens + 1):
                        batch.append(ScheduledStep(request, 1, sample=True, lookahead=True))
                        budget -= 1
                    else:
                        short_of_blocks = True
                continue
            n = min(request.num_tokens_to_compute, budget)
            if self._allocate_or_preempt(request, n):
                batch.append(self._step(request, n))
                budget -= n
            else:
                short_of_blocks = True

        # Admit nothing in a step that ran short of blocks: running requests have the better
        # claim to them (and a preempted one must be released before it joins again).
        short_of_blocks |= self.num_preemptions > preemptions_before
        # Request-level batching admits only into an empty batch.
        batch_closed = self.config.batching == "request" and bool(self._running)
        while (
            not short_of_blocks
            and not batch_closed
            and budget > 0
            and len(batch) < seq_cap
            and self._waiting
            and len(self._running) < self.config.max_num_seqs
        ):
            n = self._admit(self._waiting.peek(), budget)
            if n == 0:
                break  # FCFS: never skip the head of the queue
            request = self._waiting.pop()
            batch.append(self._step(request, n))
            budget -= n

        if not batch and not self._plans.has_pending_releases:
            return None
        self.peak_running = max(self.peak_running, len(self._running))
        plan = self._plans.build(batch)
        self._in_flight.append(_InFlightPlan(plan.step_id, batch))
        for scheduled in batch:
            self._in_flight_count[scheduled.request.request_id] += 1
            self._in_flight_samples[scheduled.request.request_id] = scheduled.sample
        return plan

    def _may_look_ahead(self, request: Request) -> bool:
        """Overlapped scheduling: whether a request in flight may be scheduled once more, its
        input the token its in-flight step samples. Not when that token may end it by
        length (known ahead); a stop token ends it unforeseen, and the extra step's token
        is dropped."""
        rid = request.request_id
        return (
            self.config.overlap
            and self._in_flight_count[rid] == 1
            and self._in_flight_samples.get(rid, False)
            and request.num_output_tokens + 1 < request.max_tokens
            and request.num_tokens + 1 < self.max_len
        )

    def _plan_seq_cap(self) -> int:
        """Most sequences this plan may take. With pp plans in flight (the paper's scheme) the
        schedulable requests are spread over the free slots, so that every stage gets a batch
        instead of one plan taking everything and the other slots staying empty."""
        depth = self.config.pipeline_depth
        if depth == 1:
            return self.config.max_num_seqs
        free_slots = depth - len(self._in_flight)
        schedulable = len(self._waiting) + sum(
            1 for r in self._running if not self._is_in_flight(r)
        )
        return max(1, min(cdiv(self.config.max_num_seqs, depth), cdiv(schedulable, free_slots)))

    def _allocate_or_preempt(self, request: Request, num_tokens: int) -> bool:
        """Give a running request blocks for `num_tokens` more tokens, preempting the newest
        running requests if the pool is short. False if it must sit this step out."""
        while not self.block_manager.allocate(request, request.num_computed_tokens + num_tokens):
            newer = self._running[self._running.index(request) + 1 :]
            victims = [r for r in newer if not self._is_in_flight(r)]
            if victims:
                self._preempt(victims[-1])
            elif newer:
                return False  # newer ones are in flight: preempt them once they are back
            else:
                self._preempt(request)  # it is the newest: it yields to older requests
                return False
        return True

    def _admit(self, request: Request, budget: int) -> int:
        """Move the head waiting request into the batch if blocks allow; returns the number of
        tokens it computes this step, or 0 if it cannot join now."""
        if self._plans.is_pending_release(request.request_id):
            return 0  # workers must drop its old state first (next plan)
        cached = self.block_manager.find_cached_prefix(request.all_token_ids)
        num_cached = len(cached) * self.config.block_size
        n = min(request.num_tokens - num_cached, budget)
        if self.config.kv_policy == "reserve":
            slots = self._reserved_len(request)
        else:
            slots = num_cached + n
        if not self.block_manager.allocate(request, slots, cached):
            return 0
        request.num_computed_tokens = num_cached  # cached tokens are not sent
        request.status = RequestStatus.RUNNING
        self._running.append(request)
        return n

    def _preempt(self, request: Request) -> None:
        """Preempt by recompute: drop the request's KV; it re-joins later from its tokens."""
        self._running.remove(request)
        self.block_manager.free(request)
        self._plans.release(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        self._waiting.push(request)
        self.num_preemptions += 1

    def _reserved_len(self, request: Request) -> int:
        """Slots the `reserve` policy holds for a request: its whole possible length."""
        return min(request.num_prompt_tokens + request.max_tokens, self.config.max_model_len)

    def _step(self, request: Request, num_tokens: int) -> ScheduledStep:
        sample = request.num_computed_tokens + num_tokens == request.num_tokens
        return ScheduledStep(request, num_tokens, sample)

    def _is_in_flight(self, request: Request) -> bool:
        return self._in_flight_count[request.request_id] > 0

    # ---- results --------------------------------------------------------------------------

    def update(self, result: worker_pb2.StepResult) -> list[SequenceUpdate]:
        """Apply the result of the oldest in-flight plan: advance every request in it, append
        sampled tokens, stop finished requests. One update per request that got a token."""
        plan = self._check_result(result)
        self._in_flight.popleft()
        tokens = iter(result.tokens)
        updates = []
        for scheduled in plan.batch:
            request = scheduled.request
            rid = request.request_id
            self._in_flight_count[rid] -= 1
            if self._in_flight_count[rid] == 0:
                del self._in_flight_count[rid]
                self._in_flight_samples.pop(rid, None)
            token = next(tokens) if scheduled.sample else None
            if request.status.is_finished:
                # Aborted, or stopped by the plan before this one (a lookahead step's token
                # is dropped): already reported; freed once no plan in flight holds it.
                if not self._is_in_flight(request):
                    self._release(request)
                continue
            request.num_computed_tokens += scheduled.num_tokens
            self.block_manager.register_full_blocks(request)
            if token is not None:
                updates.append(self._append_token(request, token))
        return updates

    def _check_result(self, result: worker_pb2.StepResult) -> _InFlightPlan:
        """The in-flight plan `result` answers; raises before any state changes."""
        if not self._in_flight:
            raise ValueError(f"result for step {result.step_id} but no plan is in flight")
        plan = self._in_flight[0]
        if result.step_id != plan.step_id:
            raise ValueError(
                f"result for step {result.step_id}, expected {plan.step_id} (results come in order)"
            )
        if result.error:
            raise WorkerStepError(f"step {plan.step_id} failed on the worker: {result.error}")
        expected = [s.request.request_id for s in plan.batch if s.sample]
        got = [t.seq_id for t in result.tokens]
        if got != expected:
            raise WorkerStepError(f"step {plan.step_id}: sampled {got}, expected {expected}")
        return plan

    def _append_token(self, request: Request, token: worker_pb2.SampledToken) -> SequenceUpdate:
        request.output_token_ids.append(token.token_id)
        logprobs = [token] if request.sampling.logprobs else []
        request.output_logprobs.extend(logprobs)
        reason = self._stop_reason(request, token.token_id)
        if reason is not None:
            self._finish(request, reason)
        return SequenceUpdate(
            request.request_id, [token.token_id], logprobs, reason is not None, reason
        )

    def _stop_reason(self, request: Request, token_id: int) -> FinishReason | None:
        """Why the request stops after sampling `token_id` (a stop token wins over length)."""
        if token_id in request.stop_token_ids or (
            not request.ignore_eos and token_id in self.eos_token_ids
        ):
            return FinishReason.STOP
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= self.max_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, request: Request, reason: FinishReason) -> None:
        """End a request: it leaves the queues and frees its blocks, at once, or (a lookahead
        step of it still in flight) when that plan's result is back."""
        if request.status is RequestStatus.RUNNING:
            self._running.remove(request)
        else:
            self._waiting.remove(request)
        request.status = (
            RequestStatus.ABORTED if reason is FinishReason.ABORT else RequestStatus.FINISHED
        )
        request.finish_reason = reason
        if not self._is_in_flight(request):
            self._release(request)

    def _release(self, request: Request) -> None:
        """Forget a finished request: free its blocks, tell workers to drop it."""
        self.block_manager.free(request)
        self._plans.release(request.request_id)
        del self._requests[request.request_id]

    # ---- for tests ------------------------------------------------------------------------

    def owners(self) -> Iterator[Request]:
        """Every request that may hold KV blocks."""
        return iter(self._requests.values())

    def check_invariants(self) -> None:
        """Raise AssertionError if the block pool or the queues are inconsistent."""
        self.block_manager.check_invariants(self.owners())
        if len(self._running) > self.config.max_num_seqs:
            raise AssertionError(f"{len(self._running)} running > max_num_seqs")
        for request in self._waiting:
            if request.block_ids or request.num_computed_tokens:
                raise AssertionError(f"waiting {request.request_id} holds KV")
        for request in self._running:
            if request.status is not RequestStatus.RUNNING:
                raise AssertionError(f"{request.request_id} is running as {request.status}")
