"""The paged KV-cache pool: block allocation, reference counts and prefix caching.

A block holds the KV of `block_size` consecutive positions of one or more sequences. A
block that is full of computed tokens gets a hash that chains the hashes of every block
before it, so two sequences with the same prefix map it to the same block and share it
(reference count > 1). A cached block stays findable after its last owner frees it, until
the pool needs a fresh block and evicts it (least recently freed first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from orca_scheduler.core.request import Request

# The key a block's hash is made of: the previous block's hash (None for the first block)
# and the block's tokens. Kept per block so a hash collision can never alias two prefixes.
BlockKey = tuple[int | None, tuple[int, ...]]


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of `b` slots hold `a` tokens."""
    return -(-a // b)


class BlockManager:
    """A pool of `num_blocks` KV blocks of `block_size` slots, shared by all requests."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._keys: list[BlockKey | None] = [None] * num_blocks
        self._hashes: list[int | None] = [None] * num_blocks
        # Free blocks come in two queues: uncached ones are handed out first, so cached
        # prefixes survive as long as possible; cached ones in LRU order (oldest freed first).
        self._free_uncached: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._block_by_hash: dict[int, int] = {}
        # Blocks handed to a request from the prefix cache (instead of being recomputed).
        self.num_cache_hits = 0
        # Per request: the hash chain of its leading full, computed blocks.
        self._chains: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no owner (cached ones included: they can be evicted)."""
        return len(self._free_uncached) + len(self._free_cached)

    @property
    def usage(self) -> float:
        """Fraction of the pool owned by requests."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` slots."""
        return cdiv(num_tokens, self.block_size)

    def find_cached_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """Block ids of the longest cached run of full blocks that prefixes `token_ids`.

        The last token is never covered: it must be computed so that the model produces the
        logits of the next token, hence at most (len - 1) // block_size blocks.
        """
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        parent: int | None = None
        bs = self.block_size
        for i in range((len(token_ids) - 1) // bs):
            key = (parent, tuple(token_ids[i * bs : (i + 1) * bs]))
            parent = hash(key)
            block = self._block_by_hash.get(parent)
            if block is None or self._keys[block] != key:
                break
            found.append(block)
        return found

    def allocate(
        self, request: Request, num_tokens: int, cached_block_ids: Sequence[int] = ()
    ) -> bool:
        """Grow `request.block_ids` to hold `num_tokens` slots; all or nothing.

        `cached_block_ids` (from `find_cached_prefix`) become the first blocks of a request
        that has none yet: they are shared, not copied. Returns False, changing nothing, when
        the pool has too few free blocks.
        """
        if cached_block_ids and request.block_ids:
            raise ValueError(f"{request.request_id}: cached blocks only start an empty table")
        num_new = self.blocks_for(num_tokens) - len(request.block_ids) - len(cached_block_ids)
        # Reviving a free cached block takes it out of the free pool too.
        num_revived = sum(1 for b in cached_block_ids if self._ref_counts[b] == 0)
        if max(num_new, 0) + num_revived > self.num_free_blocks:
            return False
        self.num_cache_hits += len(cached_block_ids)
        for block in cached_block_ids:
            if self._ref_counts[block] == 0:
                del self._free_cached[block]
            self._ref_counts[block] += 1
            request.block_ids.append(block)
        if cached_block_ids:
            self._chains[request.request_id] = [self._hashes[b] for b in cached_block_ids]
        for _ in range(num_new):
            request.block_ids.append(self._take_fresh_block())
        return True

    def register_full_blocks(self, request: Request) -> None:
        """Make the request's blocks that are now full of computed tokens findable by hash."""
        if not self.enable_prefix_caching:
            return
        chain = self._chains.setdefault(request.request_id, [])
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_ids))
        if num_full <= len(chain):
            return
        tokens = request.all_token_ids
        bs = self.block_size
        for i in range(len(chain), num_full):
            key = (chain[-1] if chain else None, tuple(tokens[i * bs : (i + 1) * bs]))
            block_hash = hash(key)
            chain.append(block_hash)
            block = request.block_ids[i]
            # Another request may have cached the same content first: keep that block and
            # leave this one uncached (it is freed like any other).
            if self._hashes[block] is None and block_hash not in self._block_by_hash:
                self._hashes[block] = block_hash
                self._keys[block] = key
                self._block_by_hash[block_hash] = block

    def free(self, request: Request) -> None:
        """Drop the request's claim on all its blocks and empty its block table."""
        # Last block first: a sequence's tail is the least likely to be shared, so it
        # should be the first evicted.
        for block in reversed(request.block_ids):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                if self._hashes[block] is None:
                    self._free_uncached.append(block)
                else:
                    self._free_cached[block] = None
        request.block_ids.clear()
        self._chains.pop(request.request_id, None)

    def _take_fresh_block(self) -> int:
        """An unowned block with no cached content (evicting the LRU cached one if needed)."""
        if self._free_uncached:
            block = self._free_uncached.popleft()
        else:
            block, _ = self._free_cached.popitem(last=False)
            del self._block_by_hash[self._hashes[block]]
            self._hashes[block] = None
            self._keys[block] = None
        self._ref_counts[block] = 1
        return block

    def check_invariants(self, owners: Iterable[Request]) -> None:
        """Raise AssertionError unless the pool is consistent with `owners`, the requests
        that hold blocks: each block is free or owned, ref count == number of owners, no
        block twice in one table, and the hash table matches the blocks' hashes."""
        counts = [0] * self.num_blocks
        for request in owners:
            if len(set(request.block_ids)) != len(request.block_ids):
                raise AssertionError(f"{request.request_id} holds a block twice")
            for block in request.block_ids:
                counts[block] += 1
        if counts != self._ref_counts:
            raise AssertionError(f"ref counts {self._ref_counts} != owners {counts}")
        free = set(self._free_uncached) | set(self._free_cached)
        if len(free) != len(self._free_uncached) + len(self._free_cached):
            raise AssertionError("a block is queued as free twice")
        for block, count in enumerate(counts):
            if (count == 0) != (block in free):
                raise AssertionError(f"block {block}: ref count {count}, free={block in free}")
        if any(self._hashes[b] is not None for b in self._free_uncached):
            raise AssertionError("an uncached free block has a hash")
        if any(self._hashes[b] is None for b in self._free_cached):
            raise AssertionError("a cached free block has no hash")
        for block_hash, block in self._block_by_hash.items():
            if self._hashes[block] != block_hash:
                raise AssertionError(f"hash table points at block {block} with another hash")
        if sum(h is not None for h in self._hashes) != len(self._block_by_hash):
            raise AssertionError("a hashed block is missing from the hash table")
