"""Incremental detokenization: turn a growing list of token ids into text, piece by piece.

Decoding one token at a time is wrong for byte-level tokenizers (a character may span
tokens) and for SentencePiece ones (a token's leading space depends on what precedes it).
So each step decodes a short window twice, with and without the new tokens, and emits the
difference; while the window ends in an incomplete character (U+FFFD) nothing is emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as left context, so the first output token decodes as it would inside
# the whole text (e.g. SentencePiece's leading space).
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """The text of one sequence's output tokens, emitted only as complete characters."""

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int] = ()):
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        # _ids[_prefix:_read] is the context already emitted; _ids[_read:] is not yet.
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the new complete text (maybe empty)."""
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """The sequence ended: return whatever is held back, incomplete characters included."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT_CHAR) and not final):
            # Nothing visible yet (a special token), or a character still incomplete.
            if final:
                self._prefix = self._read = len(self._ids)
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]
