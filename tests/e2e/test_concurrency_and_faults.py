"""The stack under concurrent load and misbehaving clients: no request lost, duplicated or
interleaved; cancel frees blocks; bad input gets its status and the stack keeps serving."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import redis

from orca import SamplingParams
from orca_proto.redis_streams import DEAD_LETTER_STREAM, REQUESTS_STREAM

MODEL = "demo-model"
NUM_CLIENTS = 64


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not in /metrics")


def test_64_concurrent_streaming_clients_get_exact_tokens(stack, offline_llm):
    prompts = [
        f"Request number {i} asks about batching" + " and more" * (i % 7)
        for i in range(NUM_CLIENTS)
    ]
    lengths = [4 + (i * 5) % 20 for i in range(NUM_CLIENTS)]
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    expected = [out.text for out in offline_llm.generate(prompts, params)]
    client = openai.AsyncOpenAI(
        base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120
    )

    async def one(prompt: str, max_tokens: int) -> tuple[str, int]:
        stream = await client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage

    async def run_all():
        return await asyncio.gather(*(one(p, n) for p, n in zip(prompts, lengths, strict=True)))

    results = asyncio.run(run_all())
    for i, ((text, usage), want) in enumerate(zip(results, expected, strict=True)):
        assert usage == lengths[i], f"client {i}"
        assert text == want, f"client {i}"


def test_cancel_on_disconnect_frees_blocks(stack):
    with httpx.stream(
        "POST",
        stack.base_url + "/completions",
        json={
            "model": MODEL,
            "prompt": "Tell a long story",
            "max_tokens": 400,
            "stream": True,
            "ignore_eos": True,
        },
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # The client is gone: within a few iterations the request must be cancelled everywhere.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (
            _metric(stack.base_url, "orca_num_requests_running") == 0
            and _metric(stack.base_url, "orca_kv_cache_usage_perc") == 0
        ):
            break
        time.sleep(0.2)
    assert _metric(stack.base_url, "orca_num_requests_running") == 0
    assert _metric(stack.base_url, "orca_kv_cache_usage_perc") == 0


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL, "prompt": "x", "top_p": 2}, 400, "top_p"),
        ({"model": "no-such-model", "prompt": "x"}, 404, None),
        ({"model": MODEL, "prompt": "word " * 5000}, 400, None),
        ({"model": MODEL, "prompt": {"not": "a prompt"}}, 422, None),
        ({"model": MODEL}, 422, None),
    ],
)
def test_bad_input_gets_status_and_openai_body(stack, body, status, param):
    response = httpx.post(stack.base_url + "/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param


def test_malformed_body_bytes_get_422(stack):
    response = httpx.post(
        stack.base_url + "/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "error" in response.json()


def test_malformed_stream_entry_goes_to_dead_letter_and_stack_keeps_serving(stack):
    client = redis.Redis.from_url(stack.redis_url)
    before = client.xlen(DEAD_LETTER_STREAM) if client.exists(DEAD_LETTER_STREAM) else 0
    client.xadd(REQUESTS_STREAM, {b"data": b"\xff\x00 not a protobuf"})
    client.xadd(REQUESTS_STREAM, {b"other": b"no data field"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and client.xlen(DEAD_LETTER_STREAM) < before + 2:
        time.sleep(0.1)
    assert client.xlen(DEAD_LETTER_STREAM) == before + 2
    reply = openai.OpenAI(
        base_url=stack.base_url, api_key="unused", max_retries=0
    ).completions.create(model=MODEL, prompt="still serving?", max_tokens=3)
    assert reply.usage.completion_tokens >= 1
