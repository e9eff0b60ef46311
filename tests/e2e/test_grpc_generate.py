"""The public gRPC Generate API with the generated Python client."""

from __future__ import annotations

import grpc
import pytest

from orca import SamplingParams
from orca_proto.v1 import generate_pb2, generate_pb2_grpc

MODEL = "demo-model"


@pytest.fixture(scope="module")
def stub(stack):
    channel = grpc.insecure_channel(stack.grpc_target)
    yield generate_pb2_grpc.GenerateStub(channel)
    channel.close()


def test_generate_streams_the_offline_engine_text(stub, offline_llm):
    prompt = "The scheduler builds a plan"
    request = generate_pb2.GenerateRequest(
        model=MODEL,
        text=prompt,
        params=generate_pb2.GenerationParams(max_tokens=10, temperature=0.0, ignore_eos=True),
    )
    responses = list(stub.Generate(request, timeout=60))
    text = "".join(r.text for r in responses)
    want = offline_llm.generate(
        [prompt], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    )[0]
    assert text == want.text
    assert sum(len(r.token_ids) for r in responses) == 10
    assert responses[-1].finish_reason == "length"
    assert responses[-1].usage.completion_tokens == 10


def test_tokenize_models_health(stub):
    ids = stub.Tokenize(
        generate_pb2.TokenizeRequest(model=MODEL, text="hello world"), timeout=10
    ).token_ids
    assert len(ids) >= 2
    models = stub.Models(generate_pb2.ModelsRequest(), timeout=10).models
    assert [m.id for m in models] == [MODEL]
    assert stub.Health(generate_pb2.HealthRequest(), timeout=10).ready


def test_unknown_model_is_not_found(stub):
    request = generate_pb2.GenerateRequest(
        model="nope", text="x", params=generate_pb2.GenerationParams(max_tokens=2)
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_parameter_is_invalid_argument(stub):
    params = generate_pb2.GenerationParams(max_tokens=2, temperature=-3.0)
    request = generate_pb2.GenerateRequest(model=MODEL, text="x", params=params)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
