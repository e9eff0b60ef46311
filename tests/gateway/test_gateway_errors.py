"""Every refusal: its status, its OpenAI-shaped body, and never a 500 on bad input."""

from __future__ import annotations

import time

import grpc
import httpx
import openai
import pytest
from gateway_harness import MODEL_NAME, gateway_config, running_gateway

from orca_proto.v1 import generate_pb2, generate_pb2_grpc


def _post(base_url: str, path: str, body=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, timeout=10, **kwargs)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def test_unknown_model_is_404(base_url, client, standin):
    error = _error(_post(base_url, "/completions", {"model": "gpt-4", "prompt": "x"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 30}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 99999]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"suffix": "tail"}, "suffix"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
    ],
)
def test_bad_completion_parameters_are_400_naming_the_param(base_url, standin, body, param):
    error = _error(
        _post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "x", **body}), 400
    )
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if param in ("echo", "suffix", "logit_bias"):
        assert "not supported" in error["message"] and error["code"] == "unsupported_parameter"
    assert standin.received == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
                ]
            },
            "messages[0].content",
        ),
    ],
)
def test_bad_chat_parameters_are_400(base_url, standin, body, param):
    request = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], **body}
    assert _error(_post(base_url, "/chat/completions", request), 400)["param"] == param


def test_openai_client_raises_bad_request(client, standin):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=-1)
    assert info.value.param == "temperature"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b'{"model": "demo-model"}', "prompt"),
        (b'{"prompt": "x", "max_tokens": "many"}', "max_tokens"),
        (b'{"prompt": {"a": 1}}', "prompt"),
        (b"[]", None),
    ],
)
def test_malformed_bodies_are_422_openai_shaped(base_url, standin, content, param):
    response = httpx.post(
        f"{base_url}/completions", content=content, headers={"content-type": "application/json"}
    )
    error = _error(response, 422)
    assert error["code"] == "invalid_body" and error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param and param in error["message"]


def test_chat_without_messages_is_422(base_url, standin):
    error = _error(_post(base_url, "/chat/completions", {"model": MODEL_NAME}), 422)
    assert error["param"] == "messages"


def test_prompt_longer_than_the_context_is_400(client, base_url, standin):
    standin.max_model_len = 32
    standin.publish_load()
    long_prompt = "word " * 40
    error = _error(
        _post(base_url, "/completions", {"model": MODEL_NAME, "prompt": long_prompt}), 400
    )
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    error = _error(
        _post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "word", "max_tokens": 40}),
        400,
    )
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": long_prompt}]
        )
    assert info.value.code == "context_length_exceeded"
    # Without an explicit max_tokens the default shrinks to what fits.
    ok = client.completions.create(model=MODEL_NAME, prompt="word " * 20)
    assert ok.usage.prompt_tokens > 16
    assert ok.usage.prompt_tokens + ok.usage.completion_tokens == 32


def test_overload_is_429_with_retry_after(base_url, client, standin):
    standin.num_waiting = 5000
    standin.publish_load()
    response = _post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "x"})
    error = _error(response, 429)
    assert response.headers["Retry-After"] == "1"
    assert error["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "x"}]
        )
    assert standin.received == []


def test_no_scheduler_is_503(base_url, redis_url):
    response = _post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "x"})
    error = _error(response, 503)
    assert error["code"] == "not_ready" and "no scheduler" in error["message"]


def test_stale_or_pipeline_less_scheduler_is_503(base_url, standin):
    standin.num_pipelines = 0
    standin.publish_load()
    error = _error(_post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "x"}), 503)
    assert "no serving pipeline" in error["message"]
    standin.num_pipelines = 1
    standin.publish_load_enabled = False
    time.sleep(0.05)  # let a publish in flight land first
    standin.publish_load(age_s=10)  # conftest: stale after 2 s
    error = _error(_post(base_url, "/completions", {"model": MODEL_NAME, "prompt": "x"}), 503)
    assert "stale" in error["message"]


def test_scheduler_error_before_output_is_400(base_url, client, standin):
    standin.error = "the prompt does not fit the KV cache"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="x")
    assert info.value.code == "generation_failed" and "KV cache" in info.value.message
    response = _post(base_url, "/chat/completions", {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "stream": True,
    })  # fmt: skip
    assert _error(response, 400)["code"] == "generation_failed"


def test_unknown_route_is_openai_shaped_404(base_url, standin):
    response = httpx.get(f"{base_url}/nothing-here")
    assert response.status_code == 404 and "error" in response.json()


def test_api_key(demo_model_dir, redis_server, standin):
    config = gateway_config(demo_model_dir, redis_server.url, api_key="s3cret")
    with running_gateway(config) as server:
        base = f"http://127.0.0.1:{server.http_port}/v1"
        body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2}
        error = _error(_post(base, "/completions", body), 401)
        assert error["code"] == "invalid_api_key"
        _error(_post(base, "/completions", body, headers={"Authorization": "Bearer wrong"}), 401)
        assert httpx.get(f"{base}/models").status_code == 401
        # Even a malformed body is refused for the key first.
        _error(_post(base, "/chat/completions", {"model": 3}), 401)
        with openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0) as good:
            assert good.completions.create(**body).usage.completion_tokens == 2
            assert [m.id for m in good.models.list()] == [MODEL_NAME]
        with (
            openai.OpenAI(base_url=base, api_key="bad", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.completions.create(**body)
        # Health, readiness and metrics stay open.
        root = f"http://127.0.0.1:{server.http_port}"
        assert httpx.get(f"{root}/health").status_code == 200
        assert httpx.get(f"{root}/ready").status_code == 200
        assert httpx.get(f"{root}/metrics").status_code == 200
        # gRPC takes the key as `authorization` metadata; Health needs none.
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = generate_pb2_grpc.GenerateStub(channel)
            request = generate_pb2.TokenizeRequest(model=MODEL_NAME, text="hi")
            with pytest.raises(grpc.RpcError) as info:
                stub.Tokenize(request)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Tokenize(request, metadata=[("authorization", "Bearer s3cret")]).token_ids
            assert stub.Health(generate_pb2.HealthRequest()).ready


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": None},
        {"prompt": [1, "a"]},
        {"prompt": "x", "n": 10_000},
        {"prompt": "x", "max_tokens": -5},
        {"prompt": "x", "stop": [None]},
        {"prompt": "x", "seed": 2**70},
        {"prompt": "x", "temperature": "hot"},
        {"prompt": "x", "stream_options": {"include_usage": "maybe"}},
        {"prompt": [[1, 2], [99999]]},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": "hello"},
    ],
)
def test_weird_bodies_are_4xx_never_500(base_url, standin, body):
    path = "/chat/completions" if "messages" in body else "/completions"
    response = _post(base_url, path, {"model": MODEL_NAME, **body})
    assert response.status_code in (400, 422), response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_undecodable_output_entries_are_skipped(client, standin):
    expected = client.completions.create(model=MODEL_NAME, prompt="robust", max_tokens=4)
    standin.garbage_first = True
    again = client.completions.create(model=MODEL_NAME, prompt="robust", max_tokens=4)
    assert again.choices[0].text == expected.choices[0].text
