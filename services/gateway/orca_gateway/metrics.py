"""Prometheus metrics of one gateway, with vLLM's names under the `orca_` prefix.

Counters and histograms are updated as requests run; the scheduler's gauges are copied from
`orca:load` at scrape time. Each gateway owns its registry (tests run several in a process).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from orca_proto.redis_streams import LoadReport

_LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
_TOKEN_LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    """The gateway's metric objects and its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "orca_time_to_first_token_seconds",
            "Seconds from accepting a request to its first token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "orca_inter_token_latency_seconds",
            "Seconds between consecutive output tokens of a choice.",
            buckets=_TOKEN_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.e2e_request_latency = Histogram(
            "orca_e2e_request_latency_seconds",
            "Seconds from accepting a request to its last token.",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.requests = Counter(
            "orca_requests",
            "Requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "orca_prompt_tokens", "Prompt tokens of accepted requests.", registry=r
        )
        self.generation_tokens = Counter(
            "orca_generation_tokens", "Tokens generated for clients.", registry=r
        )
        self.num_requests_running = Gauge(
            "orca_num_requests_running", "Requests in a batch (from orca:load).", registry=r
        )
        self.num_requests_waiting = Gauge(
            "orca_num_requests_waiting", "Requests waiting (from orca:load).", registry=r
        )
        self.kv_cache_usage_perc = Gauge(
            "orca_kv_cache_usage_perc", "Fraction of KV blocks in use, 0..1.", registry=r
        )
        self.num_pipelines = Gauge(
            "orca_num_pipelines", "Pipelines serving (from orca:load).", registry=r
        )
        self.pipeline_parallel_size = Gauge(
            "orca_pipeline_parallel_size", "Stages per pipeline (from orca:load).", registry=r
        )
        self.tensor_parallel_size = Gauge(
            "orca_tensor_parallel_size",
            "Tensor-parallel ranks per stage (from orca:load).",
            registry=r,
        )

    def set_load(self, report: LoadReport | None) -> None:
        """Copy the scheduler's gauges from a load report (zeros when there is none)."""
        report = report or LoadReport()
        self.num_requests_running.set(report.num_running)
        self.num_requests_waiting.set(report.num_waiting)
        self.kv_cache_usage_perc.set(report.kv_usage)
        self.num_pipelines.set(report.num_pipelines)
        self.pipeline_parallel_size.set(report.pp)
        self.tensor_parallel_size.set(report.tp)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestCounterMiddleware:
    """ASGI middleware: counts every response of the given paths by endpoint and status."""

    def __init__(self, app, metrics: GatewayMetrics, paths: frozenset[str]) -> None:
        self.app = app
        self._metrics = metrics
        self._paths = paths

    async def __call__(self, scope, receive, send) -> None:
        """Pass the request through, noting the response status of counted paths."""
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_noting_status(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            code = str(status[0]) if status else "499"
            self._metrics.requests.labels(scope["path"], code).inc()
