"""How to generate, independent of the API the request came through (HTTP or gRPC)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orca_gateway.errors import InvalidParameter, UnsupportedParameter
from orca_gateway.schemas import SamplingRequest
from orca_proto.v1 import worker_pb2

MAX_N = 16
MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
# Choices of one request: prompts times n.
MAX_CHOICES = 1024
_SEED_MODULUS = 2**64


@dataclass
class GenerationParams:
    """The OpenAI sampling parameters, with OpenAI's defaults."""

    # None: the endpoint's default (completions 16; chat and gRPC the rest of the context).
    max_tokens: int | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    # None: no logprobs; k >= 0: each token's logprob and its k top alternatives.
    logprobs: int | None = None
    ignore_eos: bool = False

    def validate(self, vocab_size: int, logprobs_param: str = "logprobs") -> None:
        """Raise InvalidParameter (naming the parameter) for the first bad value."""
        if self.top_k == -1:  # vLLM's spelling of "off"
            self.top_k = 0
        checks = [
            ("n", 1 <= self.n <= MAX_N, f"must be in [1, {MAX_N}]"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0.0, "must be >= 0"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (or -1 for no limit)"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1]"),
            ("seed", self.seed is None or 0 <= self.seed < _SEED_MODULUS, "must be in [0, 2**64)"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "must be in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "must be > 0"),
            ("stop", len(self.stop) <= MAX_STOP_STRINGS, f"has at most {MAX_STOP_STRINGS} strings"),
            (
                "stop_token_ids",
                all(0 <= t < vocab_size for t in self.stop_token_ids),
                f"must be token ids in [0, {vocab_size})",
            ),
            (
                logprobs_param,
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"must be in [0, {MAX_TOP_LOGPROBS}]",
            ),
        ]
        for param, ok, rule in checks:
            if not ok:
                raise InvalidParameter(f"'{param}' {rule}.", param=param)

    def sampling(self, choice: int) -> worker_pb2.SamplingParams:
        """The worker's SamplingParams for choice `choice` (seeded choices get seed + choice)."""
        sampling = worker_pb2.SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
        )
        if self.seed is not None:
            sampling.seed = (self.seed + choice) % _SEED_MODULUS
        return sampling


def validate_token_ids(prompt: list[int], vocab_size: int, param: str) -> None:
    """A pre-tokenized prompt must be non-empty ids of the vocabulary."""
    if not prompt:
        raise InvalidParameter(f"'{param}' must not be empty.", param=param)
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidParameter(
            f"'{param}' holds token id {bad}, outside the vocabulary [0, {vocab_size}).",
            param=param,
        )


def params_from_request(
    body: SamplingRequest,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    vocab_size: int,
    logprobs_param: str = "logprobs",
) -> GenerationParams:
    """Validated GenerationParams from an OpenAI body's shared fields (None means default)."""
    if body.logit_bias:
        raise UnsupportedParameter("'logit_bias' is not supported.", param="logit_bias")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    defaults = GenerationParams()
    params = GenerationParams(
        max_tokens=max_tokens,
        n=_or(body.n, defaults.n),
        temperature=_or(body.temperature, defaults.temperature),
        top_p=_or(body.top_p, defaults.top_p),
        top_k=_or(body.top_k, defaults.top_k),
        min_p=_or(body.min_p, defaults.min_p),
        seed=body.seed,
        stop=[s for s in stop if s],
        stop_token_ids=list(body.stop_token_ids or []),
        presence_penalty=_or(body.presence_penalty, defaults.presence_penalty),
        frequency_penalty=_or(body.frequency_penalty, defaults.frequency_penalty),
        repetition_penalty=_or(body.repetition_penalty, defaults.repetition_penalty),
        logprobs=logprobs,
        ignore_eos=bool(body.ignore_eos),
    )
    params.validate(vocab_size, logprobs_param=logprobs_param)
    return params


def _or(value, default):
    return default if value is None else value
