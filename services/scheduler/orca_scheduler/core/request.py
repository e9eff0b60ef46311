"""A generation request and its scheduling state."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from orca_proto.v1 import worker_pb2


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = enum.auto()  # queued, not admitted yet
    RUNNING = enum.auto()  # admitted: owns KV blocks and takes part in iterations
    PREEMPTED = enum.auto()  # lost its KV blocks; waits to be recomputed from its tokens
    FINISHED = enum.auto()  # stopped by a stop token or a length limit
    ABORTED = enum.auto()  # cancelled by the caller

    @property
    def is_finished(self) -> bool:
        """True for the two terminal states."""
        return self in (RequestStatus.FINISHED, RequestStatus.ABORTED)


class FinishReason(enum.StrEnum):
    """Why a request stopped, with the OpenAI API's names."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


# eq=False: requests are compared and hashed by identity (two requests are never "equal").
@dataclass(eq=False)
class Request:
    """One sequence to generate, plus everything the scheduler tracks about it.

    `output_token_ids` may be non-empty when the request is added: a restarted scheduler
    resumes a request from its prompt plus the tokens already sent (they are recomputed).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: worker_pb2.SamplingParams
    max_tokens: int
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    priority: int = 0  # lower runs first
    arrival_time: float = field(default_factory=time.monotonic)

    # State, owned by the scheduler.
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    # One entry per output token, only when sampling.logprobs is set.
    output_logprobs: list[worker_pb2.SampledToken] = field(default_factory=list)
    # Tokens whose KV is in the cache (the model has consumed them).
    num_computed_tokens: int = 0
    # The block table: KV-cache blocks in position order.
    block_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def num_prompt_tokens(self) -> int:
        """Length of the prompt."""
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt then output tokens (a new list)."""
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, stop: int) -> list[int]:
        """`all_token_ids[start:stop]`, without copying the whole sequence."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : stop - num_prompt]
        if stop <= num_prompt:
            return self.prompt_token_ids[start:stop]
        return self.prompt_token_ids[start:] + self.output_token_ids[: stop - num_prompt]

    @property
    def num_tokens_to_compute(self) -> int:
        """Tokens whose KV is not in the cache yet (the work left before the next sample)."""
        return self.num_tokens - self.num_computed_tokens
