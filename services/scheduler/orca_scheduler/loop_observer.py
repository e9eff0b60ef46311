"""What the iteration loop reports: Prometheus metrics, one line per finished request, and
per pipeline a stats line every STATS_INTERVAL_S while busy (never one per token or step:
the per-step `iteration` line is DEBUG, but for a pipeline's first plans at each new depth
of plans in flight)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from opentelemetry import trace

from orca_proto.tracing import context_from_traceparent, tracer
from orca_proto.v1 import worker_pb2
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.publisher import FinishedRequest

log = logging.getLogger("orca_scheduler.loop")

STATS_INTERVAL_S = 10.0


@dataclass
class StepTimes:
    """perf_counter() marks of one iteration."""

    started: float  # before schedule()
    built: float  # plan built (and sent next)
    received: float = 0.0  # result received
    done: float = 0.0  # updated and published


class PipelineObserver:
    """Turns one pipeline's iterations into metrics and log lines."""

    def __init__(self, pipeline: int, scheduler: Scheduler, metrics: SchedulerMetrics) -> None:
        self.pipeline = pipeline
        self._scheduler = scheduler
        self._metrics = metrics
        # This pipeline's children of the labelled metrics (a label lookup takes a lock).
        label = str(pipeline)
        self._running = metrics.pipeline_requests_running.labels(label)
        self._waiting = metrics.pipeline_requests_waiting.labels(label)
        self._kv_usage = metrics.pipeline_kv_cache_usage_perc.labels(label)
        self._in_flight = metrics.plans_in_flight.labels(label)
        self._in_flight_on_submit = metrics.plans_in_flight_on_submit.labels(label)
        self._iterations_total = metrics.pipeline_iterations.labels(label)
        self._busy_seen: dict[tuple[int, int], float] = {}
        self._waited_seen: dict[tuple[int, int], float] = {}
        self.total_iterations = 0
        self._highest_in_flight = 0  # most plans in flight at once since it connected
        self._reset_window()

    def update_gauges(self, num_in_flight: int) -> None:
        """The pipeline's running / waiting / KV usage / in-flight gauges, from its state now."""
        s = self._scheduler
        self._running.set(s.num_running)
        self._waiting.set(s.num_waiting)
        self._kv_usage.set(s.kv_usage)
        self._in_flight.set(num_in_flight)

    def submitted(self, plan: worker_pb2.StepPlan, num_in_flight: int) -> None:
        """A plan was sent; `num_in_flight` counts it. Its `iteration` line is logged at INFO
        the first time the pipeline has that many plans in flight (so the log shows that
        pipelining works, pp lines at most), at DEBUG otherwise."""
        self._in_flight_on_submit.observe(num_in_flight)
        self._in_flight.set(num_in_flight)
        self._max_in_flight = max(self._max_in_flight, num_in_flight)
        level = logging.DEBUG
        if num_in_flight > self._highest_in_flight:
            self._highest_in_flight = num_in_flight
            level = logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "iteration pipeline=%d step_id=%d in_flight=%d seqs=%d tokens=%d",
                self.pipeline,
                plan.step_id,
                num_in_flight,
                len(plan.steps),
                sum(len(step.token_ids) for step in plan.steps),
            )

    def step(
        self,
        plan: worker_pb2.StepPlan,
        result: worker_pb2.StepResult,
        times: StepTimes,
        num_preempted: int,
    ) -> None:
        """Record one folded iteration (the loop refreshes the gauges once per turn); the
        control-plane overhead is the round trip minus the worker's own prepare + forward +
        sample time (with pp plans in flight it also holds the wait behind the plans ahead)."""
        m, t = self._metrics, result.timings
        worker_s = (t.prepare_ms + t.forward_ms + t.sample_ms) / 1000.0
        self._trace_iteration(plan, result, times, num_preempted)
        m.iterations.inc()
        self._iterations_total.inc()
        m.iteration_seconds.observe(times.done - times.started)
        m.plan_build_seconds.observe(times.built - times.started)
        m.control_plane_overhead_seconds.observe(max(times.received - times.built - worker_s, 0))
        m.batch_size.observe(len(plan.steps))
        if num_preempted:
            m.preemptions.inc(num_preempted)
        self.total_iterations += 1
        self._iterations += 1
        self._input_tokens += sum(len(step.token_ids) for step in plan.steps)
        self._sampled_tokens += len(result.tokens)
        if time.monotonic() - self._since >= STATS_INTERVAL_S:
            self._log_stats()

    def worker_busy(
        self, positions: list[tuple[int, int]], busy_s: list[float], waited_s: list[float]
    ) -> None:
        """Bring the per-worker busy and waited counters up to the executor's running totals
        (given as each worker's (stage, tp_rank) and seconds, in the same order)."""
        m = self._metrics
        for counter, seen, totals in (
            (m.worker_busy_seconds, self._busy_seen, busy_s),
            (m.worker_waited_seconds, self._waited_seen, waited_s),
        ):
            for position, total in zip(positions, totals, strict=True):
                delta = total - seen.get(position, 0.0)
                if delta > 0:
                    stage, rank = position
                    counter.labels(str(self.pipeline), str(stage), str(rank)).inc(delta)
                    seen[position] = total

    def _trace_iteration(
        self,
        plan: worker_pb2.StepPlan,
        result: worker_pb2.StepResult,
        times: StepTimes,
        num_preempted: int,
    ) -> None:
        """One span per iteration, from the plan's scheduling to its result folded in."""
        now_ns, now = time.time_ns(), time.perf_counter()

        def wall_ns(mark: float) -> int:
            return now_ns - int((now - mark) * 1e9)

        span = tracer().start_span("orca.iteration", start_time=wall_ns(times.started))
        if span.is_recording():
            t = result.timings
            span.set_attributes(
                {
                    "orca.pipeline": self.pipeline,
                    "orca.step_id": plan.step_id,
                    "orca.num_seqs": len(plan.steps),
                    "orca.num_tokens": sum(len(s.token_ids) for s in plan.steps),
                    "orca.num_new_seqs": len(plan.new_seqs),
                    "orca.num_preempted": num_preempted,
                    "orca.plan_build_ms": (times.built - times.started) * 1e3,
                    "orca.worker_prepare_ms": t.prepare_ms,
                    "orca.worker_forward_ms": t.forward_ms,
                    "orca.worker_sample_ms": t.sample_ms,
                }
            )
            if result.error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, result.error[:200]))
        span.end(end_time=wall_ns(times.done))

    def forget(self) -> None:
        """The pipeline is gone: drop its gauges."""
        self._metrics.forget_pipeline(self.pipeline)

    def _log_stats(self) -> None:
        s = self._scheduler
        log.info(
            "loop_stats pipeline=%d iterations=%d input_tokens=%d sampled_tokens=%d running=%d "
            "waiting=%d kv_usage=%.3f preemptions=%d max_in_flight=%d",
            self.pipeline,
            self._iterations,
            self._input_tokens,
            self._sampled_tokens,
            s.num_running,
            s.num_waiting,
            s.kv_usage,
            s.num_preemptions,
            self._max_in_flight,
        )
        self._reset_window()

    def _reset_window(self) -> None:
        self._iterations = self._input_tokens = self._sampled_tokens = 0
        self._max_in_flight = 0
        self._since = time.monotonic()


def report_finished(metrics: SchedulerMetrics, f: FinishedRequest) -> None:
    """Count a finished request, log its one line, and record its span (a child of the
    gateway's, through the request's traceparent)."""
    metrics.requests_finished.labels(reason=f.finish_reason).inc()
    end_ns = time.time_ns()
    span = tracer().start_span(
        "orca.scheduler.request",
        context=context_from_traceparent(f.traceparent),
        start_time=end_ns - int(f.e2e_s * 1e9),
    )
    if span.is_recording():
        span.set_attributes(
            {
                "orca.request_id": f.request_id,
                "orca.finish_reason": f.finish_reason,
                "orca.prompt_tokens": f.prompt_tokens,
                "orca.completion_tokens": f.completion_tokens,
                "orca.cached_tokens": f.cached_tokens,
            }
        )
        if f.error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f.error[:200]))
    span.end(end_time=end_ns)
    line = (
        "request_finished request_id=%s reason=%s prompt_tokens=%d completion_tokens=%d "
        "cached_tokens=%d e2e_s=%.3f"
    )
    args = (
        f.request_id,
        f.finish_reason,
        f.prompt_tokens,
        f.completion_tokens,
        f.cached_tokens,
        f.e2e_s,
    )
    if f.error:
        log.warning(line + " error=%r", *args, f.error)
    else:
        log.info(line, *args)
