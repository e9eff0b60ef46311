"""One task per gateway process that reads every open output stream with one XREAD.

Each in-flight choice registers its request id with a sink (an asyncio.Queue) and a tag;
the reader XREADs `orca:out:<id>` for all registered ids at once (blocking up to
`block_ms`) and puts `(tag, TokenChunk)` on the sinks. A private wake stream is part of
every XREAD: registering a request while the reader is blocked XADDs to it (in the same
Redis round trip as the request itself, see submit.py), so a new stream is read at once
instead of after the block times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from orca_gateway.log import log_event, log_exception
from orca_proto import redis_streams

# A crashed gateway's wake stream disappears on its own.
WAKE_TTL_S = 600
WAKE_MAXLEN = 16
# Entries per stream per XREAD.
READ_COUNT = 256
RETRY_DELAY_S = 0.5


@dataclass
class _Subscription:
    sink: asyncio.Queue
    tag: object
    last_id: bytes | str = "0-0"


class OutputReader:
    """Reads all registered output streams with one connection and dispatches chunks."""

    def __init__(self, redis: Redis, block_ms: int = 1000) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._subs: dict[str, _Subscription] = {}
        self.wake_key = redis_streams.GATEWAY_WAKE_STREAM_PREFIX + uuid.uuid4().hex
        self._wake_last_id: bytes | str = "0-0"
        # True once a wake was queued since the reader last built its XREAD; see needs_wake.
        self._wake_sent = False
        self._task: asyncio.Task | None = None

    @property
    def num_open_streams(self) -> int:
        """How many request ids are registered."""
        return len(self._subs)

    def start(self) -> None:
        """Start the reader task on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="orca-output-reader")

    async def stop(self) -> None:
        """Stop the reader task and delete the wake stream."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(RedisError):
            await self._redis.delete(self.wake_key)

    def register(self, request_id: str, sink: asyncio.Queue, tag: object) -> None:
        """Start delivering `orca:out:<request_id>` chunks to `sink` as `(tag, chunk)`."""
        self._subs[request_id] = _Subscription(sink=sink, tag=tag)

    def unregister(self, request_id: str) -> None:
        """Stop delivering a request's chunks (unknown ids are ignored)."""
        self._subs.pop(request_id, None)

    def add_wake(self, pipeline) -> None:
        """Queue a wake-up on a Redis pipeline if the reader may be blocked without the
        streams registered since it last started an XREAD."""
        if self._wake_sent:
            return
        self._wake_sent = True
        pipeline.xadd(self.wake_key, {b"w": b"1"}, maxlen=WAKE_MAXLEN, approximate=True)
        pipeline.expire(self.wake_key, WAKE_TTL_S)

    async def _run(self) -> None:
        failing = False
        while True:
            # Building the stream set and clearing _wake_sent happen with no await between
            # them, so a registration is either in this XREAD or sends a new wake.
            self._wake_sent = False
            streams = {self.wake_key: self._wake_last_id}
            for request_id, sub in self._subs.items():
                streams[redis_streams.output_stream(request_id)] = sub.last_id
            try:
                replies = await self._redis.xread(streams, count=READ_COUNT, block=self._block_ms)
            except RedisError as exc:
                if not failing:  # once per outage
                    log_event("output_reader_error", error=repr(exc), open_streams=len(streams) - 1)
                failing = True
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            except Exception:  # a bug: keep serving the other requests
                log_exception("output_reader_crash")
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if failing:
                log_event("output_reader_recovered", open_streams=len(streams) - 1)
                failing = False
            for key, entries in replies or []:
                self._dispatch(key, entries)

    def _dispatch(self, key: bytes | str, entries: list) -> None:
        key = key.decode() if isinstance(key, bytes) else key
        if key == self.wake_key:
            if entries:
                self._wake_last_id = entries[-1][0]
            return
        request_id = key[len(redis_streams.OUTPUT_STREAM_PREFIX) :]
        sub = self._subs.get(request_id)
        if sub is None:  # finished or cancelled meanwhile
            return
        for entry_id, fields in entries:
            sub.last_id = entry_id
            try:
                chunk = redis_streams.decode_chunk(fields)
            except redis_streams.MalformedEntryError as exc:
                log_event("bad_output_entry", request_id=request_id, error=str(exc))
                continue
            sub.sink.put_nowait((sub.tag, chunk))
