"""Reads `orca:control` (cancel / stop from the gateways) and hands each to the loop.

Every scheduler reads the whole stream with XREAD (no consumer group: a control is for
whichever scheduler runs the request), from the last entry present at startup on.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orca_proto.redis_streams import CONTROL_STREAM, MalformedEntryError, decode_control
from orca_scheduler.inbox import Inbox
from orca_scheduler.stream_ids import entry_id_str

log = logging.getLogger(__name__)


class ControlReader:
    """Follows `orca:control` and puts each Control in the inbox."""

    def __init__(self, client: aioredis.Redis, inbox: Inbox, block_ms: int = 1000) -> None:
        self._client = client
        self._inbox = inbox
        self._block_ms = block_ms
        self._last_id = "$"

    async def start_from_now(self) -> None:
        """Skip what the stream holds now (controls for an earlier scheduler's requests);
        reading from a concrete id rather than '$' leaves no gap between reads."""
        last = await self._client.xrevrange(CONTROL_STREAM, count=1)
        self._last_id = entry_id_str(last[0][0]) if last else "0-0"

    async def run(self) -> None:
        """Read controls until cancelled; Redis errors are logged and retried."""
        backoff_s = 0.1
        while True:
            try:
                response = await self._client.xread(
                    {CONTROL_STREAM: self._last_id}, count=256, block=self._block_ms
                )
                backoff_s = 0.1
            except (RedisError, OSError) as exc:
                log.warning("control_read_failed error=%r backoff_s=%.1f", str(exc), backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id_str(entry_id)
                    try:
                        control = decode_control(fields)
                    except MalformedEntryError as exc:
                        log.warning(
                            "control_malformed entry_id=%s error=%r", self._last_id, str(exc)
                        )
                        continue
                    self._inbox.put_control(control)
