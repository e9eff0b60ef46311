"""The admission queue: who joins the batch next."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from orca_scheduler.core.request import Request, RequestStatus


class WaitingQueue:
    """Requests waiting for admission, in admission order: by priority (lower first), then
    preempted requests before new ones (they already hold a place), then arrival time."""

    def __init__(self) -> None:
        self._entries: list[tuple[tuple[int, int, float, int], Request]] = []
        self._tiebreak = itertools.count()  # equal arrival times keep insertion order

    def push(self, request: Request) -> None:
        """Queue a request at its place in admission order."""
        fresh = 0 if request.status is RequestStatus.PREEMPTED else 1
        key = (request.priority, fresh, request.arrival_time, next(self._tiebreak))
        bisect.insort(self._entries, (key, request), key=lambda entry: entry[0])

    def peek(self) -> Request:
        """The next request to admit (IndexError when empty)."""
        return self._entries[0][1]

    def pop(self) -> Request:
        """Remove and return the next request to admit."""
        return self._entries.pop(0)[1]

    def remove(self, request: Request) -> None:
        """Take a request out of the queue (ValueError if it is not queued)."""
        for i, (_, queued) in enumerate(self._entries):
            if queued is request:
                del self._entries[i]
                return
        raise ValueError(f"{request.request_id} is not waiting")

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Request]:
        return (request for _, request in self._entries)
