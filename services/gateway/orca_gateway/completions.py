"""POST /v1/completions (OpenAI's legacy text completions)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orca_gateway.disconnect import run_unless_disconnected
from orca_gateway.errors import InvalidParameter, UnsupportedParameter
from orca_gateway.generation import ChoiceResult, ChoiceUpdate
from orca_gateway.openai_format import ResponseFormatter
from orca_gateway.params import MAX_CHOICES, params_from_request, validate_token_ids
from orca_gateway.schemas import CompletionRequest
from orca_gateway.service import GatewayService
from orca_gateway.sse import stream_generation
from orca_gateway.tokenizer import Tokenizer
from orca_proto.v1 import worker_pb2

DEFAULT_MAX_TOKENS = 16

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    """Complete one prompt or a batch of prompts (n choices each), streamed or whole."""
    service: GatewayService = request.app.state.service
    request_id = request.state.request_id = f"cmpl-{uuid.uuid4().hex}"
    _reject_unsupported(body)
    params = params_from_request(
        body,
        max_tokens=body.max_tokens,
        logprobs=body.logprobs,
        vocab_size=service.tokenizer.vocab_size,
    )
    service.check_model(body.model)
    prompts = completion_prompts(body.prompt, service.tokenizer)
    if len(prompts) * params.n > MAX_CHOICES:
        raise InvalidParameter(
            f"At most {MAX_CHOICES} choices (prompts x n) per request.", param="n"
        )
    generation = await service.generate(
        request_id,
        prompts,
        params,
        default_max_tokens=DEFAULT_MAX_TOKENS,
        prompt_param="prompt",
        traceparent=request.headers.get("traceparent", ""),
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = CompletionFormatter(
        request_id,
        service.model_name,
        service.tokenizer,
        logprobs=body.logprobs is not None,
        include_usage=include_usage,
    )
    if body.stream:
        return await stream_generation(request, generation, formatter, include_usage)
    try:
        results = await run_unless_disconnected(request, generation.collect())
    finally:
        generation.close()
    return JSONResponse(formatter.response(results, generation))


def completion_prompts(prompt, tokenizer: Tokenizer) -> list[list[int]]:
    """The token ids of each prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        prompts = [tokenizer.encode(prompt)]
    elif not prompt:
        raise InvalidParameter("'prompt' must not be empty.", param="prompt")
    elif isinstance(prompt[0], str):
        prompts = [tokenizer.encode(p) for p in prompt]
    elif isinstance(prompt[0], int):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    for ids in prompts:
        validate_token_ids(ids, tokenizer.vocab_size, "prompt")
    return prompts


def _reject_unsupported(body: CompletionRequest) -> None:
    if body.echo:
        raise UnsupportedParameter("'echo' is not supported.", param="echo")
    if body.suffix:
        raise UnsupportedParameter("'suffix' is not supported.", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise UnsupportedParameter("'best_of' other than n is not supported.", param="best_of")


class CompletionFormatter(ResponseFormatter):
    """text_completion objects, with logprobs as {tokens, token_logprobs, top_logprobs,
    text_offset}."""

    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._text_offsets: dict[int, int] = {}

    def choice(self, result: ChoiceResult) -> dict:
        """One whole choice."""
        return {
            "index": result.index,
            "text": result.text,
            "logprobs": self._logprobs(result.index, result.logprobs) if self.logprobs else None,
            "finish_reason": result.finish_reason,
        }

    def chunk_choice(self, update: ChoiceUpdate) -> dict | None:
        """One streamed choice."""
        if (
            not update.text
            and update.finish_reason is None
            and not (self.logprobs and update.logprobs)
        ):
            return None
        return {
            "index": update.index,
            "text": update.text,
            "logprobs": self._logprobs(update.index, update.logprobs) if self.logprobs else None,
            "finish_reason": update.finish_reason,
        }

    def _logprobs(self, index: int, entries: list[worker_pb2.SampledToken]) -> dict:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        offset = self._text_offsets.get(index, 0)
        for entry in entries:
            text = self.tokenizer.token_text(entry.token_id)
            tokens.append(text)
            token_logprobs.append(entry.logprob)
            # OpenAI always includes the sampled token, so up to logprobs + 1 entries.
            top = {text: entry.logprob}
            for alt in entry.top_logprobs:
                top.setdefault(self.tokenizer.token_text(alt.token_id), alt.logprob)
            top_logprobs.append(top)
            text_offset.append(offset)
            offset += len(text)
        self._text_offsets[index] = offset
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }
