"""What completions and chat responses have in common: ids, envelopes, usage."""

from __future__ import annotations

import time

from orca_gateway.generation import ChoiceResult, ChoiceUpdate, Generation
from orca_gateway.tokenizer import Tokenizer


def usage(generation: Generation) -> dict:
    """OpenAI's usage object (prompt tokens count each prompt once, not once per choice)."""
    completion = generation.completion_tokens
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": generation.prompt_tokens + completion,
    }


class ResponseFormatter:
    """Builds one request's response objects; subclasses give the per-endpoint shapes."""

    object_name = ""
    chunk_object_name = ""

    def __init__(
        self,
        request_id: str,
        model: str,
        tokenizer: Tokenizer,
        logprobs: bool,
        include_usage: bool = False,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.created = int(time.time())
        self.tokenizer = tokenizer
        self.logprobs = logprobs
        self.include_usage = include_usage

    def envelope(self, object_name: str, choices: list[dict]) -> dict:
        """{id, object, created, model, choices}."""
        return {
            "id": self.request_id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def response(self, results: list[ChoiceResult], generation: Generation) -> dict:
        """The whole non-streaming response."""
        body = self.envelope(self.object_name, [self.choice(r) for r in results])
        body["usage"] = usage(generation)
        return body

    def stream_start(self) -> list[dict]:
        """Chunks sent before any text (chat: the assistant role of every choice)."""
        return []

    def stream_chunk(self, update: ChoiceUpdate) -> dict | None:
        """One streamed chunk for an update, or None when it carries nothing to send."""
        choice = self.chunk_choice(update)
        if choice is None:
            return None
        return self.chunk([choice])

    def chunk(self, choices: list[dict]) -> dict:
        """A streamed chunk around some choices (with usage null when usage is streamed)."""
        body = self.envelope(self.chunk_object_name, choices)
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, generation: Generation) -> dict:
        """The last streamed chunk when include_usage: no choices, the usage."""
        body = self.envelope(self.chunk_object_name, [])
        body["usage"] = usage(generation)
        return body

    def choice(self, result: ChoiceResult) -> dict:
        """One choice of the non-streaming response."""
        raise NotImplementedError

    def chunk_choice(self, update: ChoiceUpdate) -> dict | None:
        """One choice of a streamed chunk, or None."""
        raise NotImplementedError
