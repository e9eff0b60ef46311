"""Turns the core's SequenceUpdates into TokenChunks on each request's output stream.

The publisher tracks every request the scheduler serves: its `orca:requests` entry (to XACK
it) and how many of its tokens are already published (the next chunk's first_token_index).
One step's chunks go to Redis in one round trip; a request's final chunk is followed, in the
same round trip, by EXPIRE of its output stream and XACK of its entry, so a request is
acknowledged only once its last token is stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from orca_proto.redis_streams import (
    OUTPUT_TTL_S,
    REQUESTS_GROUP,
    REQUESTS_STREAM,
    encode,
    output_stream,
)
from orca_proto.v1 import stream_pb2
from orca_scheduler.core.outputs import SequenceUpdate
from orca_scheduler.redis_writer import Command, RedisWriter


@dataclass
class TrackedRequest:
    """What the publisher knows about one request it serves."""

    request_id: str
    entry_id: str
    num_prompt_tokens: int
    num_published: int = 0  # output tokens already in the output stream
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache
    started_at: float = field(default_factory=time.monotonic)
    traceparent: str = ""  # the gateway's span of the request (W3C), parent of ours


@dataclass(frozen=True)
class FinishedRequest:
    """A request whose final chunk was published (queued for writing)."""

    request_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    e2e_s: float
    error: str = ""
    traceparent: str = ""


def build_chunk(
    tracked: TrackedRequest, update: SequenceUpdate, error: str = ""
) -> stream_pb2.TokenChunk:
    """The TokenChunk of `update`, numbered after the tokens already published."""
    chunk = stream_pb2.TokenChunk(
        request_id=tracked.request_id,
        first_token_index=tracked.num_published,
        token_ids=update.new_token_ids,
        logprobs=update.new_logprobs,
    )
    if update.finished:
        chunk.finished = True
        chunk.finish_reason = str(update.finish_reason)
        chunk.usage.prompt_tokens = tracked.num_prompt_tokens
        chunk.usage.completion_tokens = tracked.num_published + len(update.new_token_ids)
        chunk.usage.cached_tokens = tracked.num_cached_tokens or 0
        chunk.error = error
    return chunk


class Publisher:
    """Tracks served requests and queues their chunks on the Redis writer."""

    def __init__(self, writer: RedisWriter) -> None:
        self._writer = writer
        self._tracked: dict[str, TrackedRequest] = {}
        # Finished requests whose final chunk is not written yet: still ours.
        self._finishing: dict[str, str] = {}

    def track(
        self,
        request_id: str,
        entry_id: str,
        num_prompt_tokens: int,
        num_published: int = 0,
        traceparent: str = "",
    ) -> TrackedRequest:
        """Start tracking a request (`num_published` > 0 for a resumed one)."""
        tracked = TrackedRequest(
            request_id, entry_id, num_prompt_tokens, num_published, traceparent=traceparent
        )
        self._tracked[request_id] = tracked
        return tracked

    def is_active(self, request_id: str) -> bool:
        """Whether the request is served here (tracked, or its final chunk is being written)."""
        return request_id in self._tracked or request_id in self._finishing

    def entry_id_of(self, request_id: str) -> str | None:
        """The `orca:requests` entry of a request served here, or None."""
        tracked = self._tracked.get(request_id)
        return tracked.entry_id if tracked is not None else self._finishing.get(request_id)

    def active_entry_ids(self) -> list[str]:
        """The `orca:requests` entries of every request still served here."""
        return [t.entry_id for t in self._tracked.values()] + list(self._finishing.values())

    def note_cached_tokens(self, request_id: str, num_cached: int) -> None:
        """Record how many prompt tokens the prefix cache served (first admission only)."""
        tracked = self._tracked.get(request_id)
        if tracked is not None and tracked.num_cached_tokens is None:
            tracked.num_cached_tokens = min(num_cached, tracked.num_prompt_tokens)

    def publish(self, updates: Iterable[SequenceUpdate]) -> list[FinishedRequest]:
        """Queue one step's chunks as one write; returns the requests that finished."""
        commands: list[Command] = []
        finished: list[FinishedRequest] = []
        for update in updates:
            tracked = self._tracked.get(update.request_id)
            if tracked is None or (not update.new_token_ids and not update.finished):
                continue
            done = self._add_chunk(commands, tracked, update)
            if done is not None:
                finished.append(done)
        self._submit(commands, finished)
        return finished

    def finish(self, request_id: str, reason: str, error: str = "") -> FinishedRequest | None:
        """End a tracked request outside the core's updates ("error", or "abort" of a request
        the core never took); None if it is not tracked."""
        tracked = self._tracked.get(request_id)
        if tracked is None:
            return None
        commands: list[Command] = []
        done = self._add_chunk(
            commands, tracked, SequenceUpdate(request_id, [], [], True, reason), error
        )
        self._submit(commands, [done])
        return done

    def _add_chunk(
        self,
        commands: list[Command],
        tracked: TrackedRequest,
        update: SequenceUpdate,
        error: str = "",
    ) -> FinishedRequest | None:
        chunk = build_chunk(tracked, update, error)
        key = output_stream(tracked.request_id)
        fields = encode(chunk)
        commands.append(lambda pipe: pipe.xadd(key, fields))
        tracked.num_published += len(update.new_token_ids)
        if not update.finished:
            return None
        entry_id = tracked.entry_id
        commands.append(lambda pipe: pipe.expire(key, OUTPUT_TTL_S))
        commands.append(lambda pipe: pipe.xack(REQUESTS_STREAM, REQUESTS_GROUP, entry_id))
        del self._tracked[tracked.request_id]
        self._finishing[tracked.request_id] = entry_id
        return FinishedRequest(
            request_id=tracked.request_id,
            finish_reason=chunk.finish_reason,
            prompt_tokens=chunk.usage.prompt_tokens,
            completion_tokens=chunk.usage.completion_tokens,
            cached_tokens=chunk.usage.cached_tokens,
            e2e_s=time.monotonic() - tracked.started_at,
            error=error,
            traceparent=tracked.traceparent,
        )

    def _submit(self, commands: list[Command], finished: list[FinishedRequest]) -> None:
        if not commands:
            return
        ids = [f.request_id for f in finished]

        def written() -> None:
            for request_id in ids:
                self._finishing.pop(request_id, None)

        self._writer.submit(commands, written)
