"""A StreamRequest from Redis as a core `Request`, checked against what the worker accepts.

The scheduler is the last stop before the workers: a token id outside the vocabulary or a
sampling parameter out of range would fail the whole batch's step, so it is refused here,
for this request alone.
"""

from __future__ import annotations

import math
import time

from orca_proto.v1 import worker_pb2
from orca_scheduler.core.errors import InvalidRequestError
from orca_scheduler.core.request import Request
from orca_scheduler.inbox import IncomingRequest

MAX_TOP_LOGPROBS = 20


def to_core_request(incoming: IncomingRequest) -> Request:
    """The core Request of `incoming` (its already-published tokens as output tokens);
    InvalidRequestError when no worker could run its sampling parameters. Its token ids are
    checked against the vocabulary of the pipeline it is placed on (`check_vocabulary`)."""
    sr = incoming.request
    _check_sampling(sr.request_id, sr.sampling)
    sampling = worker_pb2.SamplingParams()
    sampling.CopyFrom(sr.sampling)
    return Request(
        request_id=sr.request_id,
        prompt_token_ids=list(sr.prompt_token_ids),
        sampling=sampling,
        max_tokens=sr.max_tokens,
        stop_token_ids=frozenset(sr.stop_token_ids),
        ignore_eos=sr.ignore_eos,
        priority=sr.priority,
        # Wall-clock arrival (the gateway's), so that FCFS order survives a resume.
        arrival_time=sr.arrival_time_unix or time.time(),
        output_token_ids=list(incoming.output_token_ids),
    )


def check_vocabulary(request: Request, vocab_size: int) -> None:
    """InvalidRequestError unless every prompt and output token id is in [0, vocab_size)."""
    _check_token_ids(request.request_id, "prompt", request.prompt_token_ids, vocab_size)
    _check_token_ids(request.request_id, "output", request.output_token_ids, vocab_size)


def _check_token_ids(request_id: str, what: str, token_ids, vocab_size: int) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(
            f"{request_id}: {what} token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )


def _check_sampling(request_id: str, p: worker_pb2.SamplingParams) -> None:
    # Zero-valued fields mean "off" (proto3 defaults), as the worker's sampler reads them.
    checks = [
        (math.isfinite(p.temperature) and p.temperature >= 0, "temperature must be >= 0"),
        (p.top_k >= -1, "top_k must be >= 0 (or -1 for off)"),
        (0.0 <= p.top_p <= 1.0, "top_p must be in [0, 1] (0: off)"),
        (0.0 <= p.min_p <= 1.0, "min_p must be in [0, 1]"),
        (-2.0 <= p.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
        (-2.0 <= p.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
        (
            math.isfinite(p.repetition_penalty) and p.repetition_penalty >= 0,
            "repetition_penalty must be >= 0 (0: off)",
        ),
        (
            0 <= p.top_logprobs <= MAX_TOP_LOGPROBS,
            f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidRequestError(f"{request_id}: {message}")
