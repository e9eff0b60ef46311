"""The gateway's request span: a child of the caller's traceparent, and the parent (through
the StreamRequest's traceparent) of what the scheduler records for the request."""

from __future__ import annotations

import httpx
from gateway_harness import MODEL_NAME

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_request_span_links_the_caller_and_the_scheduler(base_url, standin, trace_exporter):
    trace_exporter.clear()
    body = {"model": MODEL_NAME, "prompt": "hello there", "max_tokens": 4}
    response = httpx.post(
        base_url + "/completions", json=body, headers={"traceparent": CALLER}, timeout=30
    )
    assert response.status_code == 200, response.text
    [sent] = standin.received
    version, trace_id, span_id, flags = sent.traceparent.split("-")
    assert trace_id == CALLER.split("-")[1]  # the same trace as the caller's
    assert span_id != CALLER.split("-")[2]  # a new span: the gateway's
    [span] = [s for s in trace_exporter.get_finished_spans() if s.name == "orca.request"]
    assert f"{span.context.span_id:016x}" == span_id
    assert f"{span.parent.span_id:016x}" == CALLER.split("-")[2]
    assert span.attributes["orca.completion_tokens"] == 4
    assert span.attributes["orca.finish_reasons"] == "length"


def test_request_without_traceparent_starts_a_trace(base_url, standin, trace_exporter):
    trace_exporter.clear()
    body = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
    assert httpx.post(base_url + "/completions", json=body, timeout=30).status_code == 200
    [sent] = standin.received
    [span] = [s for s in trace_exporter.get_finished_spans() if s.name == "orca.request"]
    _, trace_id, span_id, _ = sent.traceparent.split("-")
    # The request's own span heads what the scheduler records (under the web framework's
    # span of the call, where the framework records one).
    assert (trace_id, span_id) == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert trace_id != CALLER.split("-")[1]
