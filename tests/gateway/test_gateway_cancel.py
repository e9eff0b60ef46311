"""A client that goes away cancels its request: a Control CANCEL lands in `orca:control`."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest
from gateway_harness import MODEL_NAME

from orca_proto.v1 import generate_pb2, generate_pb2_grpc, stream_pb2

CANCEL = stream_pb2.Control.CANCEL


@pytest.fixture
def slow_standin(standin):
    """The stand-in, writing one token every 50 ms."""
    standin.chunk_size = 1
    standin.delay_s = 0.05
    return standin


def _wait_for_request(standin, timeout_s: float = 5.0) -> stream_pb2.StreamRequest:
    deadline = time.monotonic() + timeout_s
    while not standin.received:
        assert time.monotonic() < deadline, "the request never reached the scheduler"
        time.sleep(0.01)
    return standin.received[0]


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_streaming_client_disconnect_cancels(base_url, slow_standin, path):
    body = {"model": MODEL_NAME, "max_tokens": 200, "stream": True, "n": 2}
    body |= (
        {"prompt": "a long story"}
        if path == "/completions"
        else {"messages": [{"role": "user", "content": "a long story"}]}
    )
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", base_url + path, json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        request_id = json.loads(first[len("data: ") :])["id"]
    for choice in (0, 1):
        assert slow_standin.wait_for_control(f"{request_id}-{choice}", CANCEL, timeout_s=1.0)


def test_non_streaming_client_disconnect_cancels(base_url, slow_standin):
    body = {"model": MODEL_NAME, "prompt": "a long story", "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base_url + "/completions", json=body, timeout=0.5)
    request = _wait_for_request(slow_standin)
    assert slow_standin.wait_for_control(request.request_id, CANCEL, timeout_s=1.0)


def test_finished_requests_are_not_cancelled(client, standin):
    response = client.completions.create(model=MODEL_NAME, prompt="short", max_tokens=3)
    time.sleep(0.2)
    assert not [c for c in standin.controls() if c.request_id.startswith(response.id)]


def test_grpc_cancel_cancels(gateway, slow_standin):
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = generate_pb2_grpc.GenerateStub(channel)
        call = stub.Generate(
            generate_pb2.GenerateRequest(
                model=MODEL_NAME,
                text="a long story",
                params=generate_pb2.GenerationParams(max_tokens=200),
            )
        )
        first = next(call)
        call.cancel()
    assert slow_standin.wait_for_control(f"{first.id}-0", CANCEL, timeout_s=1.0)
