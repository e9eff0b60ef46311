"""Incremental detokenization with the demo model's byte-level BPE tokenizer."""

from __future__ import annotations

import random

import pytest

from orca_gateway.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer

TEXTS = [
    "Iteration-level scheduling batches every step anew.",
    "héllo wörld: naïve café, 日本語のテキスト and emoji 🙂🚀 mixed in.",
    "  leading spaces,\ttabs\nand new lines\n\n",
    "🙂",
    "a",
]


def _pieces(ids: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(ids):
        step = rng.randint(1, 4)
        pieces.append(ids[i : i + step])
        i += step
    return pieces


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_output_equals_full_decode(tokenizer, text, seed):
    ids = tokenizer.encode(text)[1:]  # without BOS
    detok = IncrementalDetokenizer(tokenizer.decode, tokenizer.encode("The prompt:"))
    emitted = [detok.push(piece) for piece in _pieces(ids, seed)]
    emitted.append(detok.flush())
    assert "".join(emitted) == tokenizer.decode(ids) == text
    # Never a partial character on the way.
    assert not any(REPLACEMENT_CHAR in piece for piece in emitted)


def test_multibyte_character_split_across_tokens_is_held_back(tokenizer):
    ids = tokenizer.encode("🙂")[1:]
    assert len(ids) > 1, "the emoji must span several tokens for this test"
    detok = IncrementalDetokenizer(tokenizer.decode)
    for token in ids[:-1]:
        assert detok.push([token]) == ""
    assert detok.push([ids[-1]]) == "🙂"
    assert detok.flush() == ""


def test_flush_releases_an_incomplete_character(tokenizer):
    ids = tokenizer.encode("日")[1:]
    detok = IncrementalDetokenizer(tokenizer.decode)
    assert detok.push(ids[:-1]) == ""
    assert detok.flush() == tokenizer.decode(ids[:-1])
    assert REPLACEMENT_CHAR in tokenizer.decode(ids[:-1])


def test_special_tokens_are_skipped(tokenizer):
    eot = 4  # <|eot_id|> in the demo tokenizer
    assert tokenizer.decode([eot]) == ""
    ids = tokenizer.encode("Hello there")[1:]
    detok = IncrementalDetokenizer(tokenizer.decode)
    text = detok.push(ids[:1]) + detok.push([eot]) + detok.push(ids[1:]) + detok.flush()
    assert text == "Hello there"


def test_token_bytes_are_exact_for_byte_level(tokenizer):
    ids = tokenizer.encode("日本 🙂")[1:]
    assert b"".join(tokenizer.token_bytes(t) for t in ids) == "日本 🙂".encode()
