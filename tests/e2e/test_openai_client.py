"""The `openai` client against the running stack: completions and chat, streaming and not,
n, stop strings, logprobs, seeds, max_tokens edges; greedy text equals the offline LLM's."""

from __future__ import annotations

import asyncio

import openai
import pytest

from orca import SamplingParams

MODEL = "demo-model"
PROMPTS = [
    "Iteration-level scheduling means",
    "The KV cache holds",
    "A request joins the batch when",
]


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def async_client(stack):
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)


def _offline_text(llm, prompt: str, max_tokens: int) -> str:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return llm.generate([prompt], params)[0].text


def test_models_lists_the_demo_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_greedy_completion_equals_offline_engine(client, offline_llm):
    for prompt in PROMPTS:
        response = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert response.choices[0].text == _offline_text(offline_llm, prompt, 12)
        assert response.choices[0].finish_reason == "length"
        assert response.usage.completion_tokens == 12
        assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_streaming_completion_equals_non_streaming(client):
    kwargs = dict(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**kwargs).choices[0].text
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "What does a scheduler do?"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.role == "assistant"
    assert 1 <= reply.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == reply.choices[0].message.content
    )


def test_n_choices_and_seed_reproducibility(client):
    kwargs = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=8, temperature=1.0, seed=7, n=2)
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert sorted(c.index for c in first.choices) == [0, 1]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert first.usage.completion_tokens <= 16


def test_stop_string_ends_generation_and_is_not_returned(client):
    kwargs = dict(
        model=MODEL,
        prompt=PROMPTS[2],
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    stopped = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert full.startswith(stopped.text)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(stop=stop, stream=True, **kwargs)
        if c.choices
    )
    assert streamed == stopped.text


def test_logprobs_shapes(client):
    completion = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=4, temperature=0, logprobs=3
    )
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(alts) == 3 for alts in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 2 for entry in content)


def test_max_tokens_edges(client):
    one = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=1, temperature=0)
    assert one.usage.completion_tokens == 1
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=10**7)


def test_async_client(async_client, client):
    async def run():
        return await async_client.completions.create(
            model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0
        )

    reply = asyncio.run(run())
    sync = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert reply.choices[0].text == sync.choices[0].text
