"""Stop strings, matched on the decoded text of one choice as it streams.

The last len(longest stop) - 1 characters are held back, so a stop string split across
chunks is never emitted. The result equals truncating the whole text before the earliest
occurrence of any stop string: a match is only taken once no earlier, longer stop string
could still be completing.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Feed text in; get back what is safe to emit, and whether a stop string matched."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._buffer = ""
        self.matched: str | None = None

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Add text; return (text to emit now, whether a stop string ended the choice).

        With `final` (the choice has no more text) everything still held is released.
        """
        if self.matched is not None:
            return "", True
        buffer = self._buffer + text
        if not self._stops:
            return buffer, False
        match_at, stop = self._earliest_match(buffer)
        if stop is not None and (final or not self._could_match_before(buffer, match_at)):
            self._buffer = ""
            self.matched = stop
            return buffer[:match_at], True
        if final:
            self._buffer = ""
            return buffer, False
        cut = max(len(buffer) - self._hold, 0)
        self._buffer = buffer[cut:]
        return buffer[:cut], False

    def _earliest_match(self, buffer: str) -> tuple[int, str | None]:
        best_at, best = len(buffer), None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and at < best_at:
                best_at, best = at, stop
        return best_at, best

    def _could_match_before(self, buffer: str, end: int) -> bool:
        """Whether some stop string may start before `end` and complete with more text."""
        start = max(len(buffer) - self._hold, 0)
        for at in range(start, end):
            tail = buffer[at:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self._stops):
                return True
        return False
