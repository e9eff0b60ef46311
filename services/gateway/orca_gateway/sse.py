"""Server-sent events exactly as OpenAI streams them: `data: {json}\n\n` ... `data: [DONE]\n\n`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse

from orca_gateway.disconnect import run_unless_disconnected
from orca_gateway.errors import GenerationFailed, error_body
from orca_gateway.generation import ChoiceUpdate, Generation
from orca_gateway.openai_format import ResponseFormatter

DONE = b"data: [DONE]\n\n"


def encode_event(payload: dict) -> bytes:
    """One SSE event carrying a JSON object."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


class GenerationStreamingResponse(StreamingResponse):
    """A StreamingResponse that always runs `on_close` when it ends, however it ends
    (finished, client gone, or cancelled before the body iterator ever started)."""

    def __init__(self, content, on_close: Callable[[], None], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        """Send the stream; then close the generation."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def stream_generation(
    request: Request, generation: Generation, formatter: ResponseFormatter, include_usage: bool
) -> StreamingResponse:
    """The SSE response of a streaming request.

    The first update is awaited before the response starts, so a request the scheduler
    refuses outright still gets a proper 400 instead of a broken stream.
    """
    updates = generation.updates()
    try:
        first = await run_unless_disconnected(request, anext(updates))
        if first.finish_reason == "error":
            raise GenerationFailed(first.error or "generation failed")
    except BaseException:
        generation.close()
        raise
    return GenerationStreamingResponse(
        _events(first, updates, generation, formatter, include_usage),
        on_close=generation.close,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    first: ChoiceUpdate,
    updates: AsyncIterator[ChoiceUpdate],
    generation: Generation,
    formatter: ResponseFormatter,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    for payload in formatter.stream_start():
        yield encode_event(payload)
    update: ChoiceUpdate | None = first
    while update is not None:
        if update.finish_reason == "error":
            message = update.error or "generation failed"
            yield encode_event(
                error_body(message, "invalid_request_error", None, "generation_failed")
            )
            return
        payload = formatter.stream_chunk(update)
        if payload is not None:
            yield encode_event(payload)
        update = await anext(updates, None)
    if include_usage:
        yield encode_event(formatter.usage_chunk(generation))
    yield DONE
