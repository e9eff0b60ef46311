"""Reads new requests from `orca:requests` as a member of the `schedulers` consumer group.

Each entry is decoded and handed to the loop through the inbox; an entry that is not a
StreamRequest goes to the dead-letter stream (and is XACKed) and the reading goes on.
Entries stay pending in the group until their final chunk is written (the publisher XACKs).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from orca_proto.redis_streams import (
    REQUESTS_GROUP,
    REQUESTS_STREAM,
    MalformedEntryError,
    decode_request,
)
from orca_proto.v1 import stream_pb2
from orca_scheduler.dead_letters import DeadLetters
from orca_scheduler.inbox import Inbox, IncomingRequest
from orca_scheduler.redis_writer import RedisWriter
from orca_scheduler.stream_ids import entry_id_str

log = logging.getLogger(__name__)

# A stream entry as redis-py returns it: (id, fields); fields are empty for a deleted entry.
Entry = tuple[bytes | str, dict | None]


async def ensure_group(client: aioredis.Redis) -> None:
    """Create the `schedulers` group on `orca:requests` (and the stream) unless it exists."""
    try:
        await client.xgroup_create(REQUESTS_STREAM, REQUESTS_GROUP, id="0", mkstream=True)
        log.info("group_created stream=%s group=%s", REQUESTS_STREAM, REQUESTS_GROUP)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class RequestIntake:
    """The consumer of `orca:requests`: new entries in, decoded requests to the inbox."""

    def __init__(
        self,
        client: aioredis.Redis,
        consumer: str,
        inbox: Inbox,
        dead_letters: DeadLetters,
        writer: RedisWriter,
        block_ms: int = 500,
        batch: int = 256,
    ) -> None:
        self._client = client
        self.consumer = consumer
        self._inbox = inbox
        self._dead_letters = dead_letters
        self._writer = writer
        self._block_ms = block_ms
        self._batch = batch
        self._stopping = False

    def stop(self) -> None:
        """Stop reading after the current blocking read returns (within block_ms)."""
        self._stopping = True

    async def run(self) -> None:
        """Read new entries until `stop()`; Redis errors are logged and retried."""
        backoff_s = 0.1
        while not self._stopping:
            try:
                response = await self._client.xreadgroup(
                    REQUESTS_GROUP,
                    self.consumer,
                    {REQUESTS_STREAM: ">"},
                    count=self._batch,
                    block=self._block_ms,
                )
                backoff_s = 0.1
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group was deleted: make it again
                    await ensure_group(self._client)
                    continue
                raise
            except (RedisError, OSError) as exc:
                log.warning("intake_read_failed error=%r backoff_s=%.1f", str(exc), backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    decoded = self.decode(entry_id, fields)
                    if decoded is not None:
                        self._inbox.put_request(IncomingRequest(*decoded))
        log.info("intake_stopped consumer=%s", self.consumer)

    def decode(
        self, entry_id: bytes | str, fields: dict | None
    ) -> tuple[str, stream_pb2.StreamRequest] | None:
        """(entry id, request) of an entry; None when it was dead-lettered (malformed) or
        XACKed (deleted from the stream before it could be read)."""
        entry_id = entry_id_str(entry_id)
        if not fields:
            log.warning("entry_deleted entry_id=%s", entry_id)
            self._writer.submit([lambda pipe: pipe.xack(REQUESTS_STREAM, REQUESTS_GROUP, entry_id)])
            return None
        try:
            return entry_id, decode_request(fields)
        except MalformedEntryError as exc:
            self._dead_letters.send(entry_id, fields, str(exc))
            return None
