"""Pure checks: parameter validation, request conversion, error mapping, flags."""

from __future__ import annotations

import grpc
import pytest

from orca_gateway import errors
from orca_gateway.chat import template_messages
from orca_gateway.completions import completion_prompts
from orca_gateway.main import config_from_args
from orca_gateway.params import GenerationParams, params_from_request
from orca_gateway.schemas import ChatCompletionRequest, CompletionRequest
from orca_gateway.service import _max_tokens

VOCAB = 2048


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("n", 17),
        ("max_tokens", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 1.5),
        ("seed", -1),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("repetition_penalty", 0.0),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop_token_ids", [VOCAB]),
        ("logprobs", 21),
    ],
)
def test_bad_values_raise_invalid_parameter_naming_the_param(field, value):
    body = CompletionRequest(prompt="x", **{field: value})
    with pytest.raises(errors.InvalidParameter) as info:
        params_from_request(
            body, max_tokens=body.max_tokens, logprobs=body.logprobs, vocab_size=VOCAB
        )
    assert info.value.param == field
    assert field in info.value.message
    assert info.value.status == 400


def test_defaults_and_seed_per_choice():
    body = CompletionRequest(prompt="x", seed=7, n=3, top_k=-1, stop="END")
    params = params_from_request(body, max_tokens=None, logprobs=2, vocab_size=VOCAB)
    assert params.top_k == 0 and params.stop == ["END"] and params.temperature == 1.0
    sampling = [params.sampling(i) for i in range(3)]
    assert [s.seed for s in sampling] == [7, 8, 9]
    assert sampling[0].logprobs and sampling[0].top_logprobs == 2
    unseeded = GenerationParams().sampling(1)
    assert not unseeded.HasField("seed") and not unseeded.logprobs


def test_logit_bias_is_unsupported():
    body = CompletionRequest(prompt="x", logit_bias={"5": 1.0})
    with pytest.raises(errors.UnsupportedParameter) as info:
        params_from_request(body, max_tokens=None, logprobs=None, vocab_size=VOCAB)
    assert info.value.param == "logit_bias" and "not supported" in info.value.message


def test_prompt_forms(tokenizer):
    hello = tokenizer.encode("hello")
    assert completion_prompts("hello", tokenizer) == [hello]
    assert completion_prompts(["hello", "hello"], tokenizer) == [hello, hello]
    assert completion_prompts([5, 6, 7], tokenizer) == [[5, 6, 7]]
    assert completion_prompts([[5], [6, 7]], tokenizer) == [[5], [6, 7]]
    for bad in ([], [[5], []], [5, VOCAB], [[-1]]):
        with pytest.raises(errors.InvalidParameter) as info:
            completion_prompts(CompletionRequest(prompt=bad).prompt, tokenizer)
        assert info.value.param == "prompt"


def test_chat_messages_are_flattened_and_images_refused():
    body = ChatCompletionRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    assert template_messages(body.messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
    ]
    image = ChatCompletionRequest(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    )
    with pytest.raises(errors.UnsupportedParameter) as info:
        template_messages(image.messages)
    assert info.value.param == "messages[0].content"
    with pytest.raises(errors.InvalidParameter):
        template_messages([])


def test_max_tokens_against_the_context():
    assert _max_tokens(10, None, 16, 100, "prompt") == 16
    assert _max_tokens(90, None, 16, 100, "prompt") == 10  # the default is clamped
    assert _max_tokens(90, None, None, 100, "messages") == 10  # chat: the rest
    assert _max_tokens(90, 10, 16, 100, "prompt") == 10
    with pytest.raises(errors.ContextLengthExceeded) as info:
        _max_tokens(90, 11, 16, 100, "prompt")
    assert info.value.param == "max_tokens" and info.value.code == "context_length_exceeded"
    with pytest.raises(errors.ContextLengthExceeded) as info:
        _max_tokens(100, None, 16, 100, "messages")
    assert info.value.param == "messages"


@pytest.mark.parametrize(
    ("error", "status", "code", "grpc_code"),
    [
        (errors.InvalidParameter("bad", param="x"), 400, "invalid_parameter", "INVALID_ARGUMENT"),
        (
            errors.UnsupportedParameter("no", param="echo"),
            400,
            "unsupported_parameter",
            "INVALID_ARGUMENT",
        ),
        (errors.MalformedRequest("json"), 422, "invalid_body", "INVALID_ARGUMENT"),
        (errors.Unauthorized("key"), 401, "invalid_api_key", "UNAUTHENTICATED"),
        (errors.ModelNotFound("gpt-4", "demo"), 404, "model_not_found", "NOT_FOUND"),
        (errors.ContextLengthExceeded("long"), 400, "context_length_exceeded", "INVALID_ARGUMENT"),
        (
            errors.Overloaded("busy", retry_after_s=3),
            429,
            "rate_limit_exceeded",
            "RESOURCE_EXHAUSTED",
        ),
        (errors.NotReady("down"), 503, "not_ready", "UNAVAILABLE"),
        (errors.GenerationFailed("oops"), 400, "generation_failed", "INVALID_ARGUMENT"),
    ],
)
def test_error_mapping(error, status, code, grpc_code):
    assert error.status == status
    assert error.grpc_code == getattr(grpc.StatusCode, grpc_code)
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == code and body["message"] == error.message


def test_overloaded_has_retry_after():
    assert errors.Overloaded("busy", retry_after_s=3).headers() == {"Retry-After": "3"}
    assert errors.ModelNotFound("a", "b").param == "model"


def test_flags_default_from_env_and_override_it():
    env = {
        "ORCA_MODEL": "/m/llama",
        "ORCA_PORT": "9001",
        "ORCA_API_KEY": "k",
        "ORCA_GRPC_PORT": "9",
    }
    config = config_from_args([], env)
    assert (config.model, config.port, config.api_key, config.grpc_port) == (
        "/m/llama",
        9001,
        "k",
        9,
    )
    assert config.model_name == "llama" and config.host == "127.0.0.1"
    config = config_from_args(["--port", "7", "--served-model-name", "x"], env)
    assert config.port == 7 and config.model_name == "x"
    with pytest.raises(SystemExit):
        config_from_args([], {})
