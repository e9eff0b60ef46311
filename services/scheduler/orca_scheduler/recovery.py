"""Resuming requests a scheduler took but did not finish (it crashed or was killed).

At startup a scheduler re-reads its own pending entries (same consumer name) and claims
entries that sat idle longer than `claim_idle_s` on other consumers (XAUTOCLAIM), and it
keeps claiming such entries every few seconds. Each is resumed from its prompt plus the
tokens already in its output stream (recomputed); one whose final chunk is there is only
XACKed. While it runs, a scheduler refreshes its own entries' idle time (XCLAIM JUSTID), so
only the entries of a dead scheduler ever go idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orca_proto.redis_streams import (
    REQUESTS_GROUP,
    REQUESTS_STREAM,
    MalformedEntryError,
    decode_chunk,
    output_stream,
)
from orca_proto.v1 import stream_pb2
from orca_scheduler.inbox import Inbox, IncomingRequest
from orca_scheduler.redis_writer import RedisWriter
from orca_scheduler.request_intake import Entry, RequestIntake

log = logging.getLogger(__name__)


@dataclass
class PublishedOutput:
    """What a request's output stream already holds."""

    token_ids: list[int] = field(default_factory=list)
    finished: bool = False


def merge_chunks(chunks: Iterable[stream_pb2.TokenChunk]) -> PublishedOutput:
    """The contiguous run of tokens the chunks hold from index 0 (repeats dropped), and
    whether a final chunk is among them."""
    out = PublishedOutput()
    for chunk in chunks:
        for offset, token_id in enumerate(chunk.token_ids):
            index = chunk.first_token_index + offset
            if index == len(out.token_ids):
                out.token_ids.append(token_id)
            elif index > len(out.token_ids):
                break  # a gap (never written so): resume from before it
        out.finished |= chunk.finished
    return out


async def read_published(
    client: aioredis.Redis, request_ids: Sequence[str]
) -> dict[str, PublishedOutput]:
    """The published output of each request, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for request_id in request_ids:
        pipe.xrange(output_stream(request_id))
    outputs = {}
    for request_id, entries in zip(request_ids, await pipe.execute(), strict=True):
        chunks = []
        for _entry_id, fields in entries or []:
            try:
                chunks.append(decode_chunk(fields))
            except MalformedEntryError:
                continue
        outputs[request_id] = merge_chunks(chunks)
    return outputs


class Recovery:
    """Finds unfinished requests of dead schedulers (and of this one's past life)."""

    def __init__(
        self,
        client: aioredis.Redis,
        intake: RequestIntake,
        inbox: Inbox,
        writer: RedisWriter,
        active_entry_ids: Callable[[], list[str]],
        claim_idle_s: float,
        batch: int = 256,
    ) -> None:
        self._client = client
        self._intake = intake
        self._inbox = inbox
        self._writer = writer
        self._active_entry_ids = active_entry_ids
        self._claim_idle_ms = max(int(claim_idle_s * 1000), 1)
        self._batch = batch
        self.claiming = True

    @property
    def consumer(self) -> str:
        """This scheduler's consumer name."""
        return self._intake.consumer

    async def resume_own_pending(self) -> int:
        """Resume the entries still pending on this consumer; returns how many."""
        entries: list[Entry] = []
        start = "0"
        while True:
            response = await self._client.xreadgroup(
                REQUESTS_GROUP, self.consumer, {REQUESTS_STREAM: start}, count=self._batch
            )
            batch = response[0][1] if response else []
            if not batch:
                break
            entries.extend(batch)
            start = batch[-1][0]
        return await self.resume(entries)

    async def claim_stale(self) -> int:
        """Claim and resume entries idle longer than claim_idle_s; returns how many."""
        entries: list[Entry] = []
        cursor = "0-0"
        while True:
            reply = await self._client.xautoclaim(
                REQUESTS_STREAM,
                REQUESTS_GROUP,
                self.consumer,
                self._claim_idle_ms,
                cursor,
                count=self._batch,
            )
            cursor, claimed = reply[0], reply[1]
            entries.extend(claimed)
            if cursor in (b"0-0", "0-0"):
                break
        return await self.resume(entries)

    async def resume(self, entries: Sequence[Entry]) -> int:
        """Hand each unfinished request of `entries` to the loop with its published tokens
        (the loop ignores one it serves already); XACK those already finished. Returns the
        number handed over."""
        decoded = []
        for entry_id, fields in entries:
            if entry_id is None:  # deleted from the stream while pending (Redis < 7)
                continue
            item = self._intake.decode(entry_id, fields)
            if item is not None:
                decoded.append(item)
        if not decoded:
            return 0
        published = await read_published(self._client, [r.request_id for _, r in decoded])
        resumed = 0
        for entry_id, request in decoded:
            output = published[request.request_id]
            if output.finished:
                log.info("resume_skip_finished request_id=%s", request.request_id)
                self._writer.submit(
                    [lambda pipe, e=entry_id: pipe.xack(REQUESTS_STREAM, REQUESTS_GROUP, e)]
                )
                continue
            log.info(
                "request_resumed request_id=%s entry_id=%s published_tokens=%d",
                request.request_id,
                entry_id,
                len(output.token_ids),
            )
            self._inbox.put_request(IncomingRequest(entry_id, request, tuple(output.token_ids)))
            resumed += 1
        return resumed

    async def refresh_claims(self) -> None:
        """Reset the idle time of this scheduler's own entries, so nobody claims them."""
        ids = self._active_entry_ids()
        for i in range(0, len(ids), 1000):
            await self._client.xclaim(
                REQUESTS_STREAM, REQUESTS_GROUP, self.consumer, 0, ids[i : i + 1000], justid=True
            )

    async def run(self) -> None:
        """Every claim_idle_s / 3: refresh own claims, then claim stale ones (until cancelled)."""
        interval_s = self._claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh_claims()
                if self.claiming:
                    await self.claim_stale()
            except (RedisError, OSError) as exc:
                log.warning("claim_failed error=%r", str(exc))
