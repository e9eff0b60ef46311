"""POST /v1/chat/completions: messages through the model's chat template."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from orca_gateway.disconnect import run_unless_disconnected
from orca_gateway.errors import InvalidParameter, UnsupportedParameter
from orca_gateway.generation import ChoiceResult, ChoiceUpdate
from orca_gateway.openai_format import ResponseFormatter
from orca_gateway.params import MAX_TOP_LOGPROBS, params_from_request, validate_token_ids
from orca_gateway.schemas import ChatCompletionRequest, ChatMessage
from orca_gateway.service import GatewayService
from orca_gateway.sse import stream_generation
from orca_proto.v1 import worker_pb2

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    """Answer a conversation (n choices), streamed or whole."""
    service: GatewayService = request.app.state.service
    request_id = request.state.request_id = f"chatcmpl-{uuid.uuid4().hex}"
    _reject_unsupported(body)
    params = params_from_request(
        body,
        max_tokens=_or(body.max_completion_tokens, body.max_tokens),
        logprobs=_top_logprobs(body),
        vocab_size=service.tokenizer.vocab_size,
        logprobs_param="top_logprobs",
    )
    service.check_model(body.model)
    prompt = service.tokenizer.encode_chat(template_messages(body.messages))
    validate_token_ids(prompt, service.tokenizer.vocab_size, "messages")
    generation = await service.generate(
        request_id,
        [prompt],
        params,
        default_max_tokens=None,  # the rest of the context
        prompt_param="messages",
        traceparent=request.headers.get("traceparent", ""),
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    formatter = ChatFormatter(
        request_id,
        service.model_name,
        service.tokenizer,
        logprobs=bool(body.logprobs),
        include_usage=include_usage,
        n=params.n,
    )
    if body.stream:
        return await stream_generation(request, generation, formatter, include_usage)
    try:
        results = await run_unless_disconnected(request, generation.collect())
    finally:
        generation.close()
    return JSONResponse(formatter.response(results, generation))


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the chat template expects them, each content joined into one string."""
    if not messages:
        raise InvalidParameter("'messages' must not be empty.", param="messages")
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise UnsupportedParameter(
                        f"Content parts of type '{part.type}' are not supported; only text.",
                        param=f"messages[{i}].content",
                    )
            content = "".join(part.text for part in content)
        item = {"role": message.role, "content": content or ""}
        if message.name:
            item["name"] = message.name
        out.append(item)
    return out


def _top_logprobs(body: ChatCompletionRequest) -> int | None:
    if not body.logprobs:
        if body.top_logprobs:
            raise InvalidParameter(
                "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs"
            )
        return None
    top = body.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise InvalidParameter(
            f"'top_logprobs' must be in [0, {MAX_TOP_LOGPROBS}].", param="top_logprobs"
        )
    return top


def _reject_unsupported(body: ChatCompletionRequest) -> None:
    if body.tools or body.functions:
        raise UnsupportedParameter("Tools and functions are not supported.", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise UnsupportedParameter(
            "Only the 'text' response_format is supported.", param="response_format"
        )


def _or(value, default):
    return default if value is None else value


class ChatFormatter(ResponseFormatter):
    """chat.completion / chat.completion.chunk objects; logprobs as {content: [...]}."""

    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, *args, n: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._n = n

    def choice(self, result: ChoiceResult) -> dict:
        """One whole choice."""
        return {
            "index": result.index,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": self._logprobs(result.logprobs) if self.logprobs else None,
            "finish_reason": result.finish_reason,
        }

    def stream_start(self) -> list[dict]:
        """Every choice's stream opens with the assistant role."""
        return [
            self.chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(self._n)
        ]

    def chunk_choice(self, update: ChoiceUpdate) -> dict | None:
        """One streamed choice; the last one of a choice carries its finish_reason."""
        if (
            not update.text
            and update.finish_reason is None
            and not (self.logprobs and update.logprobs)
        ):
            return None
        return {
            "index": update.index,
            "delta": {"content": update.text} if update.text else {},
            "logprobs": self._logprobs(update.logprobs) if self.logprobs else None,
            "finish_reason": update.finish_reason,
        }

    def _logprobs(self, entries: list[worker_pb2.SampledToken]) -> dict:
        return {"content": [self._entry(e.token_id, e.logprob, e.top_logprobs) for e in entries]}

    def _entry(self, token_id: int, logprob: float, alternatives=None) -> dict:
        entry = {
            "token": self.tokenizer.token_text(token_id),
            "logprob": logprob,
            "bytes": list(self.tokenizer.token_bytes(token_id)),
        }
        if alternatives is not None:
            entry["top_logprobs"] = [self._entry(a.token_id, a.logprob) for a in alternatives]
        return entry
