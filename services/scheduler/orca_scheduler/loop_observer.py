"""What the iteration loop reports: Prometheus metrics, one line per finished request, and
a stats line every STATS_INTERVAL_S while busy (never one per token or per step)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.publisher import FinishedRequest

log = logging.getLogger("orca_scheduler.loop")

STATS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class StepTimes:
    """perf_counter() marks of one iteration."""

    started: float  # before schedule()
    built: float  # plan built (and sent next)
    received: float  # result received
    done: float  # updated and published


class LoopObserver:
    """Turns iterations and finished requests into metrics and log lines."""

    def __init__(self, scheduler: Scheduler, metrics: SchedulerMetrics) -> None:
        self._scheduler = scheduler
        self._metrics = metrics
        self.total_iterations = 0
        self._reset_window()

    def update_gauges(self) -> None:
        """Running / waiting / KV usage gauges from the scheduler's state now."""
        m, s = self._metrics, self._scheduler
        m.num_requests_running.set(s.num_running)
        m.num_requests_waiting.set(s.num_waiting)
        m.kv_cache_usage_perc.set(s.kv_usage)

    def step(
        self,
        plan: worker_pb2.StepPlan,
        result: worker_pb2.StepResult,
        times: StepTimes,
        num_preempted: int,
    ) -> None:
        """Record one iteration; the control-plane overhead is the round trip minus the
        worker's own prepare + forward + sample time."""
        m, t = self._metrics, result.timings
        worker_s = (t.prepare_ms + t.forward_ms + t.sample_ms) / 1000.0
        m.iterations.inc()
        m.iteration_seconds.observe(times.done - times.started)
        m.plan_build_seconds.observe(times.built - times.started)
        m.control_plane_overhead_seconds.observe(max(times.received - times.built - worker_s, 0))
        m.batch_size.observe(len(plan.steps))
        if num_preempted:
            m.preemptions.inc(num_preempted)
        self.update_gauges()
        self.total_iterations += 1
        self._iterations += 1
        self._input_tokens += sum(len(step.token_ids) for step in plan.steps)
        self._sampled_tokens += len(result.tokens)
        if time.monotonic() - self._since >= STATS_INTERVAL_S:
            self._log_stats()

    def finished(self, f: FinishedRequest) -> None:
        """Count a finished request and log its one line."""
        self._metrics.requests_finished.labels(reason=f.finish_reason).inc()
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

    def _log_stats(self) -> None:
        s = self._scheduler
        log.info(
            "loop_stats iterations=%d input_tokens=%d sampled_tokens=%d running=%d waiting=%d "
            "kv_usage=%.3f preemptions=%d",
            self._iterations,
            self._input_tokens,
            self._sampled_tokens,
            s.num_running,
            s.num_waiting,
            s.kv_usage,
            s.num_preemptions,
        )
        self._reset_window()

    def _reset_window(self) -> None:
        self._iterations = self._input_tokens = self._sampled_tokens = 0
        self._since = time.monotonic()
