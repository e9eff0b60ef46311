"""The public orca.v1.Generate gRPC API, with the generated Python client."""

from __future__ import annotations

import grpc
import pytest
from gateway_harness import MODEL_NAME

from orca_proto.v1 import generate_pb2, generate_pb2_grpc, stream_pb2

PROMPT = "Iteration-level scheduling batches every step anew"


@pytest.fixture
def stub(gateway):
    """A client stub on the session gateway's gRPC port."""
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield generate_pb2_grpc.GenerateStub(channel)


def _generate(stub, **kwargs) -> list[generate_pb2.GenerateResponse]:
    params = kwargs.pop("params", generate_pb2.GenerationParams(max_tokens=6))
    request = generate_pb2.GenerateRequest(model=MODEL_NAME, params=params, **kwargs)
    return list(stub.Generate(request, timeout=10))


def test_generate_streams_the_same_text_as_http(stub, client, standin, tokenizer):
    responses = _generate(stub, text=PROMPT)
    expected = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6)
    assert "".join(r.text for r in responses) == expected.choices[0].text
    assert len({r.id for r in responses}) == 1 and responses[0].id.startswith("cmpl-")
    last = responses[-1]
    assert last.finish_reason == "length" and all(not r.finish_reason for r in responses[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        len(tokenizer.encode(PROMPT)),
        6,
    )
    assert [t for r in responses for t in r.token_ids] == tokenizer.encode(PROMPT)[1:7]


def test_generate_with_token_ids_stop_strings_and_logprobs(stub, standin, tokenizer):
    ids = tokenizer.encode("alpha beta gamma delta")
    params = generate_pb2.GenerationParams(
        max_tokens=40, stop=["gamma"], logprobs=True, top_logprobs=2, seed=5, temperature=0.0
    )
    responses = _generate(stub, token_ids=generate_pb2.TokenIds(ids=ids), params=params)
    assert "".join(r.text for r in responses) == "alpha beta "
    assert responses[-1].finish_reason == "stop"
    entries = [e for r in responses for e in r.logprobs]
    assert entries and all(len(e.top_logprobs) == 2 and e.token for e in entries)
    request = standin.received[0]
    assert request.sampling.seed == 5 and request.sampling.temperature == 0.0
    assert standin.wait_for_control(request.request_id, stream_pb2.Control.STOP)


def test_generate_max_tokens_zero_means_the_rest_of_the_context(stub, standin):
    standin.max_model_len = 40
    standin.publish_load()
    _generate(stub, text="short", params=generate_pb2.GenerationParams())
    request = standin.received[0]
    assert request.max_tokens == 40 - len(request.prompt_token_ids)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"text": "x", "model": "gpt-4"}, grpc.StatusCode.NOT_FOUND),
        (
            {"text": "x", "params": generate_pb2.GenerationParams(temperature=-1)},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"params": generate_pb2.GenerationParams()}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"text": "x", "params": generate_pb2.GenerationParams(max_tokens=5000)},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_generate_error_codes(stub, standin, kwargs, code):
    request = generate_pb2.GenerateRequest(**{"model": MODEL_NAME, **kwargs})
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, timeout=10))
    assert info.value.code() == code and info.value.details()


def test_generate_overloaded_and_unavailable(stub, standin):
    standin.num_waiting = 10_000
    standin.publish_load()
    with pytest.raises(grpc.RpcError) as info:
        _generate(stub, text="x")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    standin.num_pipelines = 0
    standin.publish_load()
    with pytest.raises(grpc.RpcError) as info:
        _generate(stub, text="x")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_generate_scheduler_error(stub, standin):
    standin.error = "no room"
    with pytest.raises(grpc.RpcError) as info:
        _generate(stub, text="x")
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no room" in info.value.details()
    )


def test_tokenize_models_health(stub, standin, tokenizer):
    reply = stub.Tokenize(generate_pb2.TokenizeRequest(model=MODEL_NAME, text="héllo"))
    assert list(reply.token_ids) == tokenizer.encode("héllo")
    with pytest.raises(grpc.RpcError) as info:
        stub.Tokenize(generate_pb2.TokenizeRequest(model="other", text="x"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    [card] = stub.Models(generate_pb2.ModelsRequest()).models
    assert (card.id, card.max_model_len) == (MODEL_NAME, standin.max_model_len)
    health = stub.Health(generate_pb2.HealthRequest())
    assert health.ready and not health.reason
    standin.num_pipelines = 0
    standin.publish_load()
    health = stub.Health(generate_pb2.HealthRequest())
    assert not health.ready and "pipeline" in health.reason
