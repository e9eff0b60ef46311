"""One trace across the processes: with OTEL_TRACES_EXPORTER=console, a request's gateway
span is a child of the caller's traceparent, the scheduler's request span a child of the
gateway's, and the scheduler records a span per iteration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from stack_testing import e2e_serve_config

from orca.launcher import LocalStack

CALLER = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"


def console_spans(log: Path) -> list[dict]:
    """The spans the console exporter printed into a service's log (one indented JSON
    object each, from a line "{" to a line "}")."""
    spans, block = [], None
    for line in log.read_text().splitlines():
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(block)))
                block = None
    return spans


def test_one_trace_from_gateway_to_scheduler(demo_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    config = e2e_serve_config(demo_model_dir, tmp_path / "logs", 180)
    with LocalStack(config) as stack:
        body = {"model": demo_model_dir.name, "prompt": "hello there", "max_tokens": 3}
        response = httpx.post(
            stack.base_url + "/completions", json=body, headers={"traceparent": CALLER}, timeout=60
        )
        assert response.status_code == 200, response.text
    # The services flushed their spans on the way out.
    gateway = [
        s for s in console_spans(stack.log_dir / "gateway.log") if s["name"] == "orca.request"
    ]
    scheduler = console_spans(stack.log_dir / "scheduler.log")
    [request_span] = gateway
    trace_id = "0x" + CALLER.split("-")[1]
    assert request_span["context"]["trace_id"] == trace_id
    assert request_span["parent_id"] == "0x" + CALLER.split("-")[2]
    [scheduled] = [s for s in scheduler if s["name"] == "orca.scheduler.request"]
    assert scheduled["context"]["trace_id"] == trace_id
    assert scheduled["parent_id"] == request_span["context"]["span_id"]
    assert scheduled["attributes"]["orca.completion_tokens"] == 3
    iterations = [s for s in scheduler if s["name"] == "orca.iteration"]
    assert len(iterations) >= 3  # the prefill and each decode
    assert all(s["resource"]["attributes"]["service.name"] == "orca-scheduler" for s in scheduler)
