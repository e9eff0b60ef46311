"""OpenTelemetry: the exporter choice, traceparent in and out, and the scheduler's spans
(one per iteration, one per finished request under the gateway's traceparent)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from orca_proto.tracing import configure_tracing, context_from_traceparent, traceparent_of
from orca_proto.v1 import worker_pb2
from orca_scheduler.core.config import SchedulerConfig
from orca_scheduler.core.scheduler import Scheduler
from orca_scheduler.loop_observer import PipelineObserver, StepTimes, report_finished
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.publisher import FinishedRequest

GATEWAY_SPAN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_exporter_choice():
    assert configure_tracing("orca-test", {}) == "none"
    assert configure_tracing("orca-test", {"OTEL_TRACES_EXPORTER": "none"}) == "none"
    with pytest.raises(ValueError, match="not supported"):
        configure_tracing("orca-test", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="opentelemetry-exporter-otlp"):
        configure_tracing("orca-test", {"OTEL_TRACES_EXPORTER": "otlp"})


def test_console_exporter_prints_spans_with_the_service_name():
    code = (
        "from orca_proto.tracing import configure_tracing, tracer\n"
        "configure_tracing('orca-x', {'OTEL_TRACES_EXPORTER': 'console'})\n"
        "tracer().start_span('orca.demo').end()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    span = json.loads(out)
    assert span["name"] == "orca.demo"
    assert span["resource"]["attributes"]["service.name"] == "orca-x"


def test_traceparent_round_trip():
    provider = TracerProvider()
    parent = provider.get_tracer("t").start_span("parent")
    header = traceparent_of(parent)
    ctx = context_from_traceparent(header)
    assert ctx is not None
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == parent.get_span_context().trace_id
    assert remote.span_id == parent.get_span_context().span_id
    assert context_from_traceparent("") is None
    assert context_from_traceparent("not-a-traceparent") is None
    assert traceparent_of(trace.INVALID_SPAN) == ""


def test_scheduler_spans(trace_exporter):
    trace_exporter.clear()
    metrics = SchedulerMetrics()
    scheduler = Scheduler(SchedulerConfig(num_kv_blocks=8, max_model_len=64))
    observer = PipelineObserver(3, scheduler, metrics)
    plan = worker_pb2.StepPlan(step_id=7)
    plan.steps.add(seq_id="r", start_position=0, token_ids=[1, 2, 3], sample=True)
    result = worker_pb2.StepResult(step_id=7)
    result.timings.forward_ms = 4.0
    times = StepTimes(started=100.0, built=100.001, received=100.006, done=100.007)
    observer.step(plan, result, times, num_preempted=0)
    report_finished(
        metrics,
        FinishedRequest("r", "length", 3, 5, 0, e2e_s=0.25, traceparent=GATEWAY_SPAN),
    )
    by_name = {s.name: s for s in trace_exporter.get_finished_spans()}
    iteration = by_name["orca.iteration"]
    assert iteration.attributes["orca.pipeline"] == 3
    assert iteration.attributes["orca.step_id"] == 7
    assert iteration.attributes["orca.num_tokens"] == 3
    assert iteration.attributes["orca.worker_forward_ms"] == 4.0
    assert iteration.end_time - iteration.start_time == pytest.approx(7e6, rel=1e-3)
    request = by_name["orca.scheduler.request"]
    assert f"{request.context.trace_id:032x}" == GATEWAY_SPAN.split("-")[1]
    assert f"{request.parent.span_id:016x}" == GATEWAY_SPAN.split("-")[2]
    assert request.attributes["orca.completion_tokens"] == 5
    assert request.end_time - request.start_time == pytest.approx(0.25e9, rel=1e-3)
