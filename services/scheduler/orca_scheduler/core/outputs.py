"""What the scheduler reports back to its caller after each step."""

from __future__ import annotations

from dataclasses import dataclass

from orca_proto.v1 import worker_pb2


@dataclass
class SequenceUpdate:
    """News about one request: tokens it gained in a step, and whether it is done.

    A stop token (EOS or one of `stop_token_ids`) that ends a request is included in
    `new_token_ids`, as vLLM reports it; callers that hide it strip it themselves.
    """

    request_id: str
    new_token_ids: list[int]
    # One per new token when the request asked for logprobs, else empty.
    new_logprobs: list[worker_pb2.SampledToken]
    finished: bool
    finish_reason: str | None  # a FinishReason ("stop", "length", "abort") once finished
