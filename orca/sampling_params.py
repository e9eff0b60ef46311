"""User-facing sampling parameters of the offline API, validated once on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20


class InvalidSamplingParams(ValueError):
    """A sampling parameter is out of range; the message names it."""


@dataclass
class SamplingParams:
    """How to generate one completion (the OpenAI parameters, vLLM's names)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; n >= 0: sampled token plus top n

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.temperature >= 0.0, "temperature must be >= 0"),
            (self.top_k >= 0 or self.top_k == -1, "top_k must be >= 0 (or -1 for off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (self.repetition_penalty > 0.0, "repetition_penalty must be > 0"),
            (self.seed is None or 0 <= self.seed < 2**64, "seed must be in [0, 2**64)"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]",
            ),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSamplingParams(message)
