"""Turns the last position's logits of each sampled sequence into its next token.

One call handles the whole batch with tensor ops: penalties, temperature, top-k/top-p/min-p
and the draw itself. Sampling is an exponential race, `argmax(probs / q)` with `q ~ Exp(1)`
(computed as `argmax(logits - log q)`), so each row needs exactly one noise vector. A seeded
row draws its noise from a generator seeded by (seed, number of tokens generated so far):
its tokens depend on nothing else in the batch and survive a preemption and recompute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from orca_proto.v1 import worker_pb2

_MASK64 = (1 << 64) - 1
# Smallest noise value: keeps -log(q) finite, so a -inf logit stays -inf after adding it.
_MIN_NOISE = torch.finfo(torch.float32).tiny


@dataclass
class SequenceSamplingState:
    """What the sampler needs to know about one sequence (cached by the worker)."""

    params: worker_pb2.SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)


@dataclass
class SamplerOutput:
    """Sampled tokens, one per row of the logits, with optional logprobs."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int) -> int:
    """The generator seed of a seeded sequence's `step`-th token (a 64-bit hash of both)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ step)


def _token_counts(
    token_ids: list[list[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """[n, vocab] int32 count of each token id in each row's list."""
    n = len(token_ids)
    width = max((len(ids) for ids in token_ids), default=0)
    counts = torch.zeros((n, vocab_size + 1), dtype=torch.int32, device=device)
    if width == 0:
        return counts[:, :vocab_size]
    # Pad with an extra column's index so ragged rows scatter into one tensor.
    padded = [ids + [vocab_size] * (width - len(ids)) for ids in token_ids]
    index = torch.tensor(padded, dtype=torch.int64, device=device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.int32))
    return counts[:, :vocab_size]


def apply_penalties(
    logits: torch.Tensor,
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    repetition_penalties: torch.Tensor,
    presence_penalties: torch.Tensor,
    frequency_penalties: torch.Tensor,
) -> torch.Tensor:
    """Return penalized float32 logits ([n, vocab]); the input is not modified.

    Repetition (HF): every token in prompt or output has a positive logit divided by the
    penalty and a negative one multiplied (1 = off). Presence and frequency (OpenAI): for
    output tokens only, subtract `presence` once and `frequency` once per occurrence.
    The penalties are [n] tensors; rows with neutral values come out unchanged.
    """
    n, vocab_size = logits.shape
    logits = logits.float()
    output_counts = _token_counts(output_token_ids, vocab_size, logits.device)
    rep = repetition_penalties.to(logits.device, torch.float32)[:, None]
    if bool((rep != 1.0).any()):
        prompt_counts = _token_counts(prompt_token_ids, vocab_size, logits.device)
        seen = (prompt_counts > 0) | (output_counts > 0)
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalized, logits)
    presence = presence_penalties.to(logits.device, torch.float32)[:, None]
    frequency = frequency_penalties.to(logits.device, torch.float32)[:, None]
    return logits - presence * (output_counts > 0) - frequency * output_counts


def apply_top_k_top_p_min_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Return the logits with every excluded token set to -inf (the input is not modified).

    Per row, in this order: keep the `top_k` largest (<= 0 or >= vocab = off); of those, keep
    the smallest most-likely-first set whose probability reaches `top_p` (>= 1 or <= 0 = off);
    drop tokens whose probability is below `min_p` times the top token's (<= 0 = off).
    The most likely token is always kept. The arguments are [n] tensors.
    """
    n, vocab_size = logits.shape
    device = logits.device
    top_k = top_k.to(device, torch.int64)
    top_k = torch.where((top_k <= 0) | (top_k > vocab_size), vocab_size, top_k)
    top_p = top_p.to(device, torch.float32)
    min_p = min_p.to(device, torch.float32)

    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab_size, device=device)
    drop = ranks[None, :] >= top_k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    p_on = ((top_p > 0) & (top_p < 1))[:, None]
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= p_on & (mass_before >= top_p[:, None])
    # The ratio to the top token is the same before and after renormalizing.
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    return logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))


class Sampler:
    """Greedy/temperature/top-k/top-p/min-p sampling with penalties and logprobs.

    Zero-valued proto fields mean "off" (proto3 defaults): temperature 0 is greedy,
    top_p and repetition_penalty 0 behave as 1. Unseeded rows share one generator per
    device, seeded from `seed`.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._shared: dict[torch.device, torch.Generator] = {}
        self._per_row: dict[torch.device, torch.Generator] = {}

    def _generator(self, cache: dict[torch.device, torch.Generator], device: torch.device):
        if device not in cache:
            cache[device] = torch.Generator(device=device)
            cache[device].manual_seed(self._seed)
        return cache[device]

    def _noise(self, states: list[SequenceSamplingState], vocab_size: int, device: torch.device):
        """[len(states), vocab] Exp(1) noise: seeded rows from their own stream."""
        noise = torch.empty((len(states), vocab_size), device=device)
        seeded = [i for i, s in enumerate(states) if s.params.HasField("seed")]
        unseeded = [i for i, s in enumerate(states) if not s.params.HasField("seed")]
        shared = self._generator(self._shared, device)
        if not seeded:  # the common case: one launch for the whole batch
            noise.exponential_(generator=shared)
        elif unseeded:
            rows = torch.empty((len(unseeded), vocab_size), device=device)
            noise[torch.tensor(unseeded, device=device)] = rows.exponential_(generator=shared)
        gen = self._generator(self._per_row, device)
        for i in seeded:  # one small launch per seeded row: its own stream
            state = states[i]
            gen.manual_seed(step_seed(state.params.seed, len(state.output_token_ids)))
            noise[i].exponential_(generator=gen)
        return noise.clamp_min_(_MIN_NOISE)

    def __call__(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> SamplerOutput:
        """Sample one token per row of `logits` ([n, vocab], any float dtype)."""
        n, vocab_size = logits.shape
        device = logits.device
        params = [s.params for s in states]
        raw = logits.float()

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        x = raw
        rep = [p.repetition_penalty if p.repetition_penalty > 0 else 1.0 for p in params]
        presence = [p.presence_penalty for p in params]
        frequency = [p.frequency_penalty for p in params]
        if any(r != 1.0 for r in rep) or any(presence) or any(frequency):
            x = apply_penalties(
                raw,
                [s.prompt_token_ids for s in states],
                [s.output_token_ids for s in states],
                column(rep),
                column(presence),
                column(frequency),
            )

        token_ids = x.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if p.temperature > 0]
        if random_rows:
            rows = torch.tensor(random_rows, device=device)
            sub = x if len(random_rows) == n else x[rows]
            sub_params = [params[i] for i in random_rows]
            sub = sub / column([p.temperature for p in sub_params])[:, None]
            if any(_filters_on(p, vocab_size) for p in sub_params):
                sub = apply_top_k_top_p_min_p(
                    sub,
                    torch.tensor([p.top_k for p in sub_params], device=device),
                    column([p.top_p for p in sub_params]),
                    column([p.min_p for p in sub_params]),
                )
            noise = self._noise([states[i] for i in random_rows], vocab_size, device)
            token_ids[rows] = (sub - noise.log()).argmax(dim=-1)

        tokens = token_ids.tolist()
        logprobs: list[float | None] = [None] * n
        top_logprobs: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        if any(p.logprobs or p.top_logprobs > 0 for p in params):
            all_logprobs = torch.log_softmax(raw, dim=-1)
            chosen = all_logprobs.gather(1, token_ids[:, None]).squeeze(1).tolist()
            k = min(max(p.top_logprobs for p in params), vocab_size)
            top_values, top_ids = all_logprobs.topk(max(k, 0), dim=-1)
            top_values, top_ids = top_values.tolist(), top_ids.tolist()
            for i, p in enumerate(params):
                if p.logprobs:
                    logprobs[i] = chosen[i]
                m = min(p.top_logprobs, k)
                top_logprobs[i] = list(zip(top_ids[i][:m], top_values[i][:m], strict=True))
        return SamplerOutput(tokens, logprobs, top_logprobs)


def _filters_on(p: worker_pb2.SamplingParams, vocab_size: int) -> bool:
    return 0 < p.top_k < vocab_size or 0 < p.top_p < 1 or p.min_p > 0
