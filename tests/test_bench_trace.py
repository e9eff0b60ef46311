"""The benchmark trace: deterministic, in range, and identical to the shared peers' trace.

Torch-free: the shared peers_hf.py imports torch at the top, so its `trace` function is
lifted out of the source with `ast` and run on its own.
"""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shapes import SHAPES, param_count, vocab_size  # noqa: E402
from bench.trace import poisson_arrivals, trace, trace_stats  # noqa: E402

SHARED_CANDIDATES = [
    ROOT.parent / "shared" / "bench" / "peers_hf.py",
    ROOT / "shared" / "bench" / "peers_hf.py",
]


def _shared_trace():
    """The shared peers_hf.trace function, compiled alone (no torch), or None."""
    path = next((p for p in SHARED_CANDIDATES if p.exists()), None)
    if path is None:
        return None
    tree = ast.parse(path.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "trace"]
    if not funcs:
        return None
    module = ast.Module(body=funcs, type_ignores=[])
    namespace = {"random": random}
    exec(compile(module, str(path), "exec"), namespace)
    return namespace["trace"]


def test_trace_is_deterministic():
    assert trace(64, 128256) == trace(64, 128256)
    assert trace(64, 128256, seed=1) != trace(64, 128256)


def test_prefix_of_longer_trace():
    # Request i does not depend on n: a smaller --n runs the first n requests of the full one.
    assert trace(16, 50257) == trace(256, 50257)[:16]


def test_lengths_and_ids_in_range():
    reqs = trace(256, 512)
    for prompt, out_len in reqs:
        assert 32 <= len(prompt) <= 512
        assert 1 <= out_len <= 128
        assert all(10 <= t < 512 for t in prompt)
    lens = [len(p) for p, _ in reqs]
    assert min(lens) < 100 and max(lens) > 450  # spans the range, not a constant


def test_stats_match_shared_numbers():
    # TRACE.md: 71,271 prompt / 16,810 output tokens on the Llama vocabulary,
    # 66,207 / 15,992 on GPT-2's.
    assert trace_stats(trace(256, vocab_size("llama8b"))) == {
        "n": 256,
        "in_tokens": 71271,
        "out_tokens": 16810,
    }
    stats = trace_stats(trace(256, vocab_size("gpt3_13b")))
    assert (stats["in_tokens"], stats["out_tokens"]) == (66207, 15992)


@pytest.mark.parametrize("vocab", [512, 50257, 128256])
def test_equals_shared_peers_trace(vocab):
    shared = _shared_trace()
    if shared is None:
        pytest.skip("shared/bench/peers_hf.py not found")
    assert trace(256, vocab) == shared(256, vocab)


def test_poisson_arrivals():
    a = poisson_arrivals(200, 10.0, seed=100)
    assert a == poisson_arrivals(200, 10.0, seed=100)
    assert all(x < y for x, y in zip(a, a[1:], strict=False))
    assert 10 < a[-1] < 30  # about 200 / 10 s


def test_param_counts_match_the_shared_measurements():
    # The params HF reported for the peers' random models (shared/bench/*.jsonl).
    assert param_count("llama1b") == 1235814400
    assert param_count("llama8b") == 8030261248
    assert param_count("gpt3_13b") == 12853386240
    assert {"llama1b", "llama8b", "gpt3_13b", "tiny"} <= set(SHAPES)
