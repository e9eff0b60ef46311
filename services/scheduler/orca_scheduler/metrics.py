"""The scheduler's Prometheus metrics (vLLM's names where vLLM has the metric).

Each SchedulerMetrics owns its registry, so several schedulers (tests) can live in one
process; `serve` exposes it on its own HTTP port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_OVERHEAD_BUCKETS_S = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_IN_FLIGHT_BUCKETS = (1, 2, 3, 4, 6, 8, 16)


class SchedulerMetrics:
    """Gauges, counters and histograms of one scheduler."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.num_requests_running = Gauge(
            "orca_num_requests_running", "Requests in the running batch (holding KV).", registry=r
        )
        self.num_requests_waiting = Gauge(
            "orca_num_requests_waiting", "Requests waiting for admission.", registry=r
        )
        self.kv_cache_usage_perc = Gauge(
            "orca_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", registry=r
        )
        self.iterations = Counter(
            "orca_iterations", "Model iterations (StepPlans) completed.", registry=r
        )
        self.iteration_seconds = Histogram(
            "orca_iteration_seconds",
            "One iteration: schedule, worker round trip, update, publish.",
            buckets=_STEP_BUCKETS_S,
            registry=r,
        )
        self.plan_build_seconds = Histogram(
            "orca_plan_build_seconds",
            "Time to schedule and build one StepPlan.",
            buckets=_OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.control_plane_overhead_seconds = Histogram(
            "orca_control_plane_overhead_seconds",
            "Plan sent to result received, minus the worker's prepare+forward+sample time.",
            buckets=_OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "orca_batch_size", "Sequences per iteration.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.requests_finished = Counter(
            "orca_requests_finished",
            "Requests finished, by finish reason (stop, length, abort, error).",
            ["reason"],
            registry=r,
        )
        self.preemptions = Counter(
            "orca_preemptions", "Requests preempted (KV freed, to be recomputed).", registry=r
        )
        self.dead_letters = Counter(
            "orca_dead_letters", "Request entries moved to orca:requests:dead.", registry=r
        )
        # Pipelines: how many serve, and each one's state (label `pipeline`).
        self.num_pipelines = Gauge(
            "orca_num_pipelines", "Pipelines connected and serving.", registry=r
        )
        self.pipeline_failures = Counter(
            "orca_pipeline_failures",
            "Pipelines lost (a worker gone or its stream broken).",
            registry=r,
        )
        self.requests_requeued = Counter(
            "orca_requests_requeued",
            "Requests moved off a lost pipeline, to be recomputed on another.",
            registry=r,
        )
        p = ["pipeline"]
        self.pipeline_requests_running = Gauge(
            "orca_pipeline_num_requests_running",
            "Requests running on the pipeline.",
            p,
            registry=r,
        )
        self.pipeline_requests_waiting = Gauge(
            "orca_pipeline_num_requests_waiting",
            "Requests waiting on the pipeline.",
            p,
            registry=r,
        )
        self.pipeline_kv_cache_usage_perc = Gauge(
            "orca_pipeline_kv_cache_usage_perc",
            "Fraction of the pipeline's KV blocks in use.",
            p,
            registry=r,
        )
        self.pipeline_iterations = Counter(
            "orca_pipeline_iterations",
            "Iterations (StepPlans) completed on the pipeline.",
            p,
            registry=r,
        )
        self.plans_in_flight = Gauge(
            "orca_plans_in_flight",
            "StepPlans sent to the pipeline and not answered yet.",
            p,
            registry=r,
        )
        self.plans_in_flight_on_submit = Histogram(
            "orca_plans_in_flight_on_submit",
            "Plans in flight on the pipeline right after each submit (pp keeps every stage busy).",
            p,
            buckets=_IN_FLIGHT_BUCKETS,
            registry=r,
        )
        self.worker_busy_seconds = Counter(
            "orca_worker_busy_seconds",
            "Seconds each worker spent on steps (its prepare + forward + sample timings); "
            "over wall time, how full each pipeline stage is kept.",
            ["pipeline", "stage", "tp_rank"],
            registry=r,
        )
        self.worker_waited_seconds = Counter(
            "orca_worker_waited_seconds",
            "Seconds each worker sat idle between finishing a step and starting the next, "
            "gaps of over a second left out: how long the control plane kept it waiting.",
            ["pipeline", "stage", "tp_rank"],
            registry=r,
        )

    def forget_pipeline(self, pipeline: int) -> None:
        """Drop a lost pipeline's gauges (its counters stay: they only ever grow)."""
        for gauge in (
            self.pipeline_requests_running,
            self.pipeline_requests_waiting,
            self.pipeline_kv_cache_usage_perc,
            self.plans_in_flight,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(str(pipeline))

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Expose the metrics at http://host:port/metrics; returns a function that stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop
