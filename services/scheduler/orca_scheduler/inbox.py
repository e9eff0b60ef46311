"""The hand-off between the Redis readers and the iteration loop.

Readers (new requests, resumed requests, controls) put items in; the loop takes them all at
the top of each iteration, and sleeps on the inbox when it has nothing to run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from orca_proto.v1 import stream_pb2


@dataclass(frozen=True)
class IncomingRequest:
    """A request read from `orca:requests`, with the id of its stream entry (to XACK it)."""

    entry_id: str
    request: stream_pb2.StreamRequest
    # Tokens already in the request's output stream: a resumed request continues after them.
    output_token_ids: tuple[int, ...] = ()


class Inbox:
    """Requests and controls waiting for the loop, plus the event that wakes it."""

    def __init__(self) -> None:
        self._requests: deque[IncomingRequest] = deque()
        self._controls: deque[stream_pb2.Control] = deque()
        self._event = asyncio.Event()

    def put_request(self, item: IncomingRequest) -> None:
        """Queue a request for the loop and wake it."""
        self._requests.append(item)
        self._event.set()

    def put_control(self, control: stream_pb2.Control) -> None:
        """Queue a control (cancel / stop) for the loop and wake it."""
        self._controls.append(control)
        self._event.set()

    def wake(self) -> None:
        """Wake the loop without giving it anything (e.g. to notice a drain)."""
        self._event.set()

    def take_requests(self) -> list[IncomingRequest]:
        """Every queued request, oldest first; the queue is left empty."""
        items = list(self._requests)
        self._requests.clear()
        return items

    def take_controls(self) -> list[stream_pb2.Control]:
        """Every queued control, oldest first; the queue is left empty."""
        items = list(self._controls)
        self._controls.clear()
        return items

    def __len__(self) -> int:
        return len(self._requests) + len(self._controls)

    async def wait(self, timeout_s: float | None = None) -> None:
        """Sleep until something is put or `wake()` is called (at once if items are queued)."""
        if len(self):
            return
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
