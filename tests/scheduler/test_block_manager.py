"""BlockManager: allocation, reference counts, prefix caching and LRU eviction."""

from __future__ import annotations

import pytest
from scheduler_fakes import make_request

from orca_scheduler.core.block_manager import BlockManager, cdiv


def computed(request, num_tokens):
    """Mark the first `num_tokens` of a request computed, as the scheduler would."""
    request.num_computed_tokens = num_tokens
    return request


def test_cdiv():
    assert [cdiv(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_allocate_grows_and_is_all_or_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    a, b = make_request("a", 10), make_request("b", 10)
    assert bm.allocate(a, 5)
    assert len(a.block_ids) == 2 and bm.num_free_blocks == 2
    assert bm.allocate(a, 8)  # still two blocks
    assert len(a.block_ids) == 2
    assert not bm.allocate(b, 12)  # needs 3, only 2 free: nothing taken
    assert b.block_ids == [] and bm.num_free_blocks == 2
    assert bm.allocate(b, 8)
    assert bm.usage == 1.0
    bm.check_invariants([a, b])
    bm.free(a)
    assert a.block_ids == [] and bm.num_free_blocks == 2 and bm.usage == 0.5
    bm.check_invariants([b])


def test_prefix_hit_shares_blocks_with_refcount():
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(1, 11))  # 10 tokens: 2 full blocks + 2
    a = make_request("a", prompt)
    assert bm.allocate(a, 10)
    bm.register_full_blocks(computed(a, 10))
    b = make_request("b", prompt[:8] + [40, 41, 42])
    hit = bm.find_cached_prefix(b.all_token_ids)
    assert hit == a.block_ids[:2]
    assert bm.allocate(b, 11, hit)
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    bm.check_invariants([a, b])  # shared blocks have ref count 2
    bm.free(a)
    bm.check_invariants([b])
    assert bm.num_free_blocks == 8 - 3


def test_prefix_hit_needs_a_matching_chain():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(1, 9)))
    assert bm.allocate(a, 8)
    bm.register_full_blocks(computed(a, 8))
    # Same second block, different first block: the chain hash differs, no hit.
    assert bm.find_cached_prefix([9, 9, 9, 9, 5, 6, 7, 8, 1]) == []
    assert bm.find_cached_prefix([1, 2, 3, 4, 9, 9, 9, 9, 1]) == a.block_ids[:1]


def test_full_hit_still_computes_the_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(1, 9)))
    assert bm.allocate(a, 8)
    bm.register_full_blocks(computed(a, 8))
    # All 8 tokens are cached, but the last must run to give logits: only 1 block counts.
    assert bm.find_cached_prefix(list(range(1, 9))) == a.block_ids[:1]
    assert bm.find_cached_prefix(list(range(1, 10))) == a.block_ids[:2]


def test_only_computed_tokens_are_hashed():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_request("a", list(range(1, 11)))
    assert bm.allocate(a, 10)
    bm.register_full_blocks(computed(a, 6))  # one full computed block
    assert bm.find_cached_prefix(a.all_token_ids) == a.block_ids[:1]
    bm.register_full_blocks(computed(a, 10))
    assert bm.find_cached_prefix(a.all_token_ids) == a.block_ids[:2]


def test_freed_cached_block_is_revived_by_a_hit():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_request("a", list(range(1, 10)))
    assert bm.allocate(a, 9)
    bm.register_full_blocks(computed(a, 9))
    cached = a.block_ids[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = make_request("b", list(range(1, 10)))
    hit = bm.find_cached_prefix(b.all_token_ids)
    assert hit == cached
    assert bm.allocate(b, 9, hit)
    assert bm.num_free_blocks == 1
    bm.check_invariants([b])


def test_revived_blocks_count_against_free_blocks():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = make_request("a", list(range(1, 10)))
    assert bm.allocate(a, 9)
    bm.register_full_blocks(computed(a, 9))
    bm.free(a)
    b = make_request("b", list(range(1, 10)) + [1] * 8)  # 17 tokens: 5 blocks
    hit = bm.find_cached_prefix(b.all_token_ids)
    assert len(hit) == 2
    assert not bm.allocate(b, 17, hit)
    assert b.block_ids == [] and bm.num_free_blocks == 3
    bm.check_invariants([])


def test_lru_eviction_prefers_uncached_then_oldest_freed():
    bm = BlockManager(num_blocks=4, block_size=2)
    old, new = make_request("old", [1, 2, 3]), make_request("new", [5, 6, 7])
    assert bm.allocate(old, 3) and bm.allocate(new, 3)
    bm.register_full_blocks(computed(old, 3))
    bm.register_full_blocks(computed(new, 3))
    bm.free(old)  # freed first: evicted first
    bm.free(new)
    x = make_request("x", [9, 9, 9, 9, 9, 9])
    assert bm.allocate(x, 2)  # takes an uncached block: both prefixes survive
    assert bm.find_cached_prefix([1, 2, 3]) and bm.find_cached_prefix([5, 6, 7])
    assert bm.allocate(x, 4)  # second uncached block
    assert bm.allocate(x, 6)  # must evict: the oldest freed cached block goes
    assert bm.find_cached_prefix([1, 2, 3]) == []
    assert bm.find_cached_prefix([5, 6, 7]) != []
    bm.check_invariants([x])


def test_same_content_computed_twice_keeps_first_cached_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = make_request("a", [1, 2, 3]), make_request("b", [1, 2, 3])
    assert bm.allocate(a, 3) and bm.allocate(b, 3)
    bm.register_full_blocks(computed(a, 3))
    bm.register_full_blocks(computed(b, 3))
    assert bm.find_cached_prefix([1, 2, 3]) == a.block_ids[:1]
    bm.check_invariants([a, b])
    bm.free(a)
    bm.free(b)
    bm.check_invariants([])


def test_prefix_caching_off():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    a = make_request("a", [1, 2, 3])
    assert bm.allocate(a, 3)
    bm.register_full_blocks(computed(a, 3))
    assert bm.find_cached_prefix([1, 2, 3]) == []
    bm.free(a)
    bm.check_invariants([])


def test_check_invariants_catches_a_leak():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_request("a", [1, 2, 3])
    assert bm.allocate(a, 3)
    with pytest.raises(AssertionError, match="ref counts"):
        bm.check_invariants([])  # a's blocks have no known owner
    a.block_ids.append(a.block_ids[0])
    with pytest.raises(AssertionError, match="twice"):
        bm.check_invariants([a])
