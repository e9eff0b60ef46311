"""The sampler against direct computations: penalties, filters, seeds, greedy, logprobs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from orca_proto.v1 import worker_pb2
from orca_worker.sampler import (
    Sampler,
    SequenceSamplingState,
    apply_penalties,
    apply_top_k_top_p_min_p,
)

VOCAB = 64


def params(**fields) -> worker_pb2.SamplingParams:
    """Proto params with the offline API's defaults for anything not given."""
    defaults = {"temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
    return worker_pb2.SamplingParams(**{**defaults, **fields})


def state(prompt=(1, 2, 3), output=(), **fields) -> SequenceSamplingState:
    return SequenceSamplingState(params(**fields), list(prompt), list(output))


def random_logits(n: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, vocab), generator=gen) * 3


def generate(sampler: Sampler, steps: list[torch.Tensor], states, row: int) -> list[int]:
    """Run the sampler over precomputed per-step logits; return the tokens of one row."""
    tokens = []
    for logits in steps:
        out = sampler(logits, states)
        for s, t in zip(states, out.token_ids, strict=True):
            s.output_token_ids.append(t)
        tokens.append(out.token_ids[row])
    return tokens


# --- seeds ---------------------------------------------------------------------------------


def test_seeded_runs_are_reproducible_across_samplers():
    steps = [random_logits(1, seed=s) for s in range(20)]
    a = generate(Sampler(seed=1), steps, [state(seed=42)], 0)
    b = generate(Sampler(seed=2), steps, [state(seed=42)], 0)
    c = generate(Sampler(seed=1), steps, [state(seed=43)], 0)
    assert a == b
    assert a != c


@pytest.mark.parametrize("position", [0, 2, 4])
def test_seeded_row_is_independent_of_its_batch(position: int):
    rows = 5
    target = random_logits(20, seed=7)  # one row of logits per step for the seeded sequence
    alone = generate(Sampler(), [target[i : i + 1] for i in range(20)], [state(seed=9)], 0)

    steps = []
    for i in range(20):
        batch = random_logits(rows, seed=100 + i)
        batch[position] = target[i]
        steps.append(batch)
    others = [state(seed=9 + r) if r % 2 else state(temperature=0.7, top_k=5) for r in range(rows)]
    others[position] = state(seed=9)
    assert generate(Sampler(seed=5), steps, others, position) == alone


def test_seeded_row_survives_preemption_and_recompute():
    steps = [random_logits(1, seed=s) for s in range(12)]
    full = generate(Sampler(), steps, [state(seed=3, top_p=0.9)], 0)
    # Recompute after a preemption at step 7: a fresh sampler, the output so far restored.
    resumed = state(seed=3, top_p=0.9, output=full[:7])
    assert generate(Sampler(seed=99), steps[7:], [resumed], 0) == full[7:]


def test_unseeded_rows_follow_the_sampler_seed():
    logits = random_logits(8)
    a = Sampler(seed=11)(logits, [state() for _ in range(8)]).token_ids
    b = Sampler(seed=11)(logits, [state() for _ in range(8)]).token_ids
    assert a == b


# --- filters -------------------------------------------------------------------------------


def draw_many(logits_row: torch.Tensor, draws: int, **fields) -> set[int]:
    logits = logits_row.expand(draws, -1).contiguous()
    seen = set(Sampler()(logits, [state(**fields) for _ in range(draws)]).token_ids)
    seeded = [
        Sampler()(logits_row[None], [state(seed=s, **fields)]).token_ids[0] for s in range(200)
    ]
    return seen | set(seeded)


def test_top_k_never_emits_an_excluded_token():
    row = random_logits(1)[0] * 0.1  # nearly flat: excluded tokens would often win
    allowed = set(row.topk(3).indices.tolist())
    assert draw_many(row, 4000, top_k=3) == allowed


def test_top_p_and_min_p_never_emit_an_excluded_token():
    probs = torch.tensor([0.05, 0.5, 0.06, 0.3, 0.09])
    row = probs.log()
    # top_p 0.75: 0.5 + 0.3 reaches it, so {1, 3}. min_p 0.15: threshold 0.075 keeps {1, 3, 4}.
    assert draw_many(row, 4000, top_p=0.75) == {1, 3}
    assert draw_many(row, 4000, min_p=0.15) == {1, 3, 4}
    assert draw_many(row, 4000, top_k=4, top_p=0.9, min_p=0.15) == {1, 3, 4}


def test_already_masked_tokens_are_never_sampled():
    row = torch.zeros(VOCAB)
    row[10:] = float("-inf")
    assert draw_many(row, 2000, temperature=5.0) <= set(range(10))


def reference_filter(row: list[float], top_k: int, top_p: float, min_p: float) -> set[int]:
    """The kept tokens, computed one token at a time."""
    order = sorted(range(len(row)), key=lambda t: -row[t])
    if 0 < top_k < len(row):
        order = order[:top_k]
    total = sum(math.exp(row[t]) for t in order)
    probs = {t: math.exp(row[t]) / total for t in order}
    kept, mass = [], 0.0
    for t in order:
        if 0 < top_p < 1 and mass >= top_p and kept:
            break
        kept.append(t)
        mass += probs[t]
    top = probs[order[0]]
    return {t for t in kept if t == order[0] or probs[t] >= min_p * top}


def test_filters_match_a_direct_computation():
    rng = random.Random(0)
    logits = random_logits(40, seed=3)
    top_k = [rng.choice([0, -1, 1, 5, 20, VOCAB]) for _ in range(40)]
    top_p = [rng.choice([1.0, 0.0, 0.3, 0.8, 0.95]) for _ in range(40)]
    min_p = [rng.choice([0.0, 0.01, 0.2]) for _ in range(40)]
    out = apply_top_k_top_p_min_p(
        logits, torch.tensor(top_k), torch.tensor(top_p), torch.tensor(min_p)
    )
    for i in range(40):
        kept = set(torch.isfinite(out[i]).nonzero().flatten().tolist())
        assert kept == reference_filter(logits[i].tolist(), top_k[i], top_p[i], min_p[i]), i
        assert torch.equal(out[i][list(kept)], logits[i][list(kept)])


# --- penalties -----------------------------------------------------------------------------


def reference_penalties(row, prompt, output, repetition, presence, frequency) -> list[float]:
    row = list(row)
    for t in set(prompt) | set(output):
        row[t] = row[t] / repetition if row[t] > 0 else row[t] * repetition
    for t in set(output):
        row[t] -= presence + frequency * output.count(t)
    return row


def test_penalties_match_a_direct_computation():
    rng = random.Random(1)
    n = 12
    logits = random_logits(n, seed=4)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randrange(0, 30))] for _ in range(n)]
    outputs = [[rng.randrange(8) for _ in range(rng.randrange(0, 20))] for _ in range(n)]
    rep = [rng.choice([1.0, 1.3, 0.8]) for _ in range(n)]
    presence = [rng.choice([0.0, 0.5, -1.0]) for _ in range(n)]
    frequency = [rng.choice([0.0, 0.25, 2.0]) for _ in range(n)]
    before = logits.clone()
    out = apply_penalties(
        logits, prompts, outputs, torch.tensor(rep), torch.tensor(presence), torch.tensor(frequency)
    )
    assert torch.equal(logits, before)
    for i in range(n):
        want = reference_penalties(
            logits[i].tolist(), prompts[i], outputs[i], rep[i], presence[i], frequency[i]
        )
        torch.testing.assert_close(out[i], torch.tensor(want), rtol=1e-6, atol=1e-5)


def test_greedy_sees_the_penalties():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    out = Sampler()(logits, [state(temperature=0, output=[0, 0], frequency_penalty=1.0)])
    assert out.token_ids == [1]
    out = Sampler()(logits, [state(temperature=0, prompt=[0], repetition_penalty=2.0)])
    assert out.token_ids == [1]


# --- greedy, logprobs, distribution --------------------------------------------------------


def test_greedy_equals_argmax_and_ignores_filters_and_seeds():
    logits = random_logits(16, seed=5).to(torch.bfloat16)
    # Odd rows greedy (with filters and a seed that must not matter), even rows sampled.
    states = [
        state(temperature=0, top_k=2, top_p=0.1, min_p=0.9, seed=i) if i % 2 else state()
        for i in range(16)
    ]
    out = Sampler()(logits, states)
    assert out.token_ids[1::2] == logits.float().argmax(-1).tolist()[1::2]
    assert out.logprobs == [None] * 16
    assert out.top_logprobs == [[]] * 16


def test_logprobs_are_of_the_raw_distribution():
    logits = random_logits(4, seed=6)
    states = [
        state(logprobs=True, top_logprobs=5, temperature=0.5, repetition_penalty=1.5),
        state(logprobs=True, top_logprobs=0, temperature=0, output=[1, 1], frequency_penalty=2),
        state(logprobs=False),
        state(logprobs=True, top_logprobs=20, top_k=3),
    ]
    out = Sampler()(logits, states)
    want = torch.log_softmax(logits, dim=-1)
    for i in (0, 1, 3):
        assert out.logprobs[i] == pytest.approx(want[i, out.token_ids[i]].item(), abs=1e-6)
    assert out.logprobs[2] is None
    assert [len(t) for t in out.top_logprobs] == [5, 0, 0, 20]
    for i in (0, 3):
        top = out.top_logprobs[i]
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        assert [t for t, _ in top] == want[i].topk(len(top)).indices.tolist()
        for t, v in top:
            assert v == pytest.approx(want[i, t].item(), abs=1e-6)


def test_temperature_sampling_matches_softmax():
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    temperature = 1.5
    draws = 20000
    logits = row.expand(draws, -1).contiguous()
    tokens = Sampler(seed=0)(logits, [state(temperature=temperature) for _ in range(draws)])
    counts = torch.bincount(torch.tensor(tokens.token_ids), minlength=5).double()
    expected = torch.softmax(row.double() / temperature, dim=-1) * draws
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 25.0  # 4 degrees of freedom: p < 1e-4 at this bound; seeded, so no flakes
