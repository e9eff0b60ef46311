"""The real openai client against a real gateway, real Redis and the stand-in scheduler."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from gateway_harness import MODEL_NAME

from orca_proto.v1 import stream_pb2

PROMPT = "Iteration-level scheduling batches every step anew"


def test_completion(client, standin, tokenizer):
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5)
    prompt_ids = tokenizer.encode(PROMPT)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.model == MODEL_NAME and response.created > 0
    [choice] = response.choices
    # The stand-in repeats the prompt's tokens (BOS left out).
    assert choice.text == tokenizer.decode(prompt_ids[1:6])
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt_ids), 5)
    assert usage.total_tokens == len(prompt_ids) + 5
    [request] = standin.received
    assert request.request_id == f"{response.id}-0"
    assert list(request.prompt_token_ids) == prompt_ids and request.max_tokens == 5
    assert request.model == MODEL_NAME and request.priority == 0
    assert abs(request.arrival_time_unix - time.time()) < 30


def test_completion_default_max_tokens_is_16(client, standin):
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPT)
    assert response.usage.completion_tokens == 16
    assert standin.received[0].max_tokens == 16


def test_streamed_completion_matches_the_whole_one(client, standin):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=9)
    chunks = list(
        client.completions.create(
            model=MODEL_NAME,
            prompt=PROMPT,
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(text_chunks) >= 3  # the stand-in writes 3 tokens per chunk
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert all(c.usage is None and c.object == "text_completion" for c in text_chunks)
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage


def test_stream_without_include_usage_has_no_usage_chunk(client, standin):
    chunks = list(
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, stream=True)
    )
    assert all(len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat(client, standin, tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is Orca?"}]},
    ]
    response = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6)
    prompt_ids = tokenizer.encode_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Orca?"}]
    )
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content == tokenizer.decode([t for t in prompt_ids if t >= 5][:6])
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert list(standin.received[0].prompt_token_ids) == prompt_ids


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, standin):
    standin.max_model_len = 100
    standin.publish_load()
    client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}])
    request = standin.received[0]
    assert request.max_tokens == 100 - len(request.prompt_token_ids)


def test_streamed_chat(client, standin):
    messages = [{"role": "user", "content": "Tell me about batching."}]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, content, last = chunks[0], chunks[1:-1], chunks[-1]
    assert first.object == "chat.completion.chunk" and first.choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content)
    assert (
        "".join(c.choices[0].delta.content or "" for c in content)
        == whole.choices[0].message.content
    )
    assert content[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_async_client_runs_many_requests_at_once(base_url, standin):
    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as aclient:

            async def chat_stream(i: int) -> str:
                stream = await aclient.chat.completions.create(
                    model=MODEL_NAME,
                    messages=[{"role": "user", "content": f"request number {i}"}],
                    max_tokens=7,
                    stream=True,
                )
                return "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )

            async def completion(i: int) -> str:
                response = await aclient.completions.create(
                    model=MODEL_NAME, prompt=f"request number {i}", max_tokens=7
                )
                return response.choices[0].text

            return await asyncio.gather(
                *[chat_stream(i) for i in range(8)], *[completion(i) for i in range(8)]
            )

    results = asyncio.run(run())
    assert all(f"number {i}" in results[8 + i] for i in range(8))
    assert all(results[i] for i in range(8))
    assert len(standin.received) == 16


def test_n_choices_are_separate_requests_with_seed_plus_index(client, standin):
    response = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, n=2, seed=41
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].text == response.choices[1].text
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens == len(standin.received[0].prompt_token_ids)
    received = sorted(standin.received, key=lambda r: r.request_id)
    assert [r.request_id for r in received] == [f"{response.id}-0", f"{response.id}-1"]
    assert [r.sampling.seed for r in received] == [41, 42]

    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "two"}],
        max_tokens=5,
        n=2,
        stream=True,
    )
    texts, roles, finishes = {0: "", 1: ""}, set(), {}
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == {0, 1} and finishes == {0: "length", 1: "length"}
    assert texts[0] == texts[1] != ""


def test_batched_prompts_give_prompts_times_n_choices(client, standin, tokenizer):
    response = client.completions.create(
        model=MODEL_NAME, prompt=["first prompt", "second prompt"], max_tokens=3, n=2
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text[:3] for c in response.choices] == ["fir", "fir", "sec", "sec"]
    first, second = tokenizer.encode("first prompt"), tokenizer.encode("second prompt")
    assert response.usage.prompt_tokens == len(first) + len(second)

    by_ids = client.completions.create(model=MODEL_NAME, prompt=first, max_tokens=3)
    assert by_ids.choices[0].text == response.choices[0].text
    nested = client.completions.create(model=MODEL_NAME, prompt=[first, second], max_tokens=3)
    assert [c.text for c in nested.choices] == [response.choices[0].text, response.choices[2].text]


def test_stop_string_truncates_and_tells_the_scheduler(client, standin):
    standin.chunk_size = 1
    standin.delay_s = 0.02
    response = client.completions.create(
        model=MODEL_NAME, prompt="alpha beta gamma delta", max_tokens=40, stop=["gamma"]
    )
    [choice] = response.choices
    assert choice.text == "alpha beta " and choice.finish_reason == "stop"
    request_id = f"{response.id}-0"
    assert standin.wait_for_control(request_id, stream_pb2.Control.STOP)


def test_stop_strings_split_across_streamed_chunks_are_never_emitted(client, standin):
    standin.chunk_size = 1
    for stop, expected in [(["delta"], "alpha beta gamma "), (["delta", "beta"], "alpha ")]:
        chunks = list(
            client.completions.create(
                model=MODEL_NAME,
                prompt="alpha beta gamma delta",
                max_tokens=40,
                stop=stop,
                stream=True,
            )
        )
        pieces = [c.choices[0].text for c in chunks]
        assert "".join(pieces) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert not any("del" in p or "bet" in p for p in pieces)

    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "one two three"}], stop="two"
    )
    assert (
        chat.choices[0].message.content == "user\n\none "
        and chat.choices[0].finish_reason == "stop"
    )


def test_stop_token_ids_pass_through(client, standin, tokenizer):
    ids = tokenizer.encode("alpha beta gamma")
    response = client.completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=10, extra_body={"stop_token_ids": [ids[2]]}
    )
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 2
    assert list(standin.received[0].stop_token_ids) == [ids[2]]


def test_completion_logprobs_shape(client, standin):
    response = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert logprobs.token_logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    assert all(
        logprobs.top_logprobs[i][t] == pytest.approx(logprobs.token_logprobs[i])
        for i, t in enumerate(logprobs.tokens)
    )
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets
    assert standin.received[0].sampling.top_logprobs == 2

    stream = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=5, logprobs=0, stream=True
    )
    streamed = [t for c in stream for t in c.choices[0].logprobs.tokens]
    assert streamed == logprobs.tokens


def test_chat_logprobs_shape(client, standin):
    response = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "日本語 🙂"}],
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob < 0
        assert isinstance(entry.bytes, list) and all(0 <= b < 256 for b in entry.bytes)
        assert len(entry.top_logprobs) == 3
        assert all(
            set(alt.model_dump()) == {"token", "logprob", "bytes"} for alt in entry.top_logprobs
        )
    joined = b"".join(bytes(e.bytes) for e in content).decode(errors="replace")
    assert joined == response.choices[0].message.content

    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        logprobs=True,
        stream=True,
    )
    entries = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert len(entries) == 4 and all(e.top_logprobs == [] for e in entries)


def test_multibyte_text_survives_token_splits(client, standin):
    text = "héllo 日本語 🙂 done"
    standin.chunk_size = 1
    whole = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=64, stop=["done"])
    assert whole.choices[0].text == "héllo 日本語 🙂 "
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL_NAME, prompt=text, max_tokens=64, stop=["done"], stream=True
        )
    ]
    assert "".join(pieces) == "héllo 日本語 🙂 "
    assert not any("\ufffd" in p for p in pieces)


def test_repeated_chunks_are_dropped(client, standin):
    expected = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8)
    standin.duplicate_chunks = True
    again = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8)
    assert again.choices[0].text == expected.choices[0].text
    assert again.usage == expected.usage


def test_new_requests_are_read_at_once(client, standin):
    # The reader blocks up to 10 s (conftest); the wake stream must cut that short.
    for _ in range(5):
        started = time.monotonic()
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3)
        assert time.monotonic() - started < 1.0
