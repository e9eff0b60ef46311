"""Writes to Redis: requests onto `orca:requests`, cancel/stop onto `orca:control`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from orca_gateway.errors import NotReady
from orca_gateway.log import log_event
from orca_gateway.output_reader import OutputReader
from orca_proto import redis_streams
from orca_proto.v1 import stream_pb2

Kind = stream_pb2.Control.Kind


class Submitter:
    """XADDs StreamRequests and Controls. Requests submitted while a write is in flight
    go out together in the next pipeline (one round trip, one connection), which also
    wakes the output reader."""

    def __init__(self, redis: Redis, reader: OutputReader) -> None:
        self._redis = redis
        self._reader = reader
        self._pending: list[tuple[list[stream_pb2.StreamRequest], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    async def submit(self, requests: Iterable[stream_pb2.StreamRequest]) -> None:
        """XADD one entry per request to `orca:requests`; NotReady when Redis fails."""
        written = asyncio.get_running_loop().create_future()
        self._pending.append((list(requests), written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await written

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            pipe = self._redis.pipeline(transaction=False)
            for requests, _ in batch:
                for request in requests:
                    pipe.xadd(
                        redis_streams.REQUESTS_STREAM,
                        redis_streams.encode(request),
                        maxlen=redis_streams.REQUESTS_MAXLEN,
                        approximate=True,
                    )
            self._reader.add_wake(pipe)
            error = None
            try:
                await pipe.execute()
            except RedisError as exc:
                error = NotReady(f"Redis is unreachable: {exc}")
            for _, written in batch:
                if written.done():  # its request was cancelled meanwhile
                    continue
                if error is None:
                    written.set_result(None)
                else:
                    written.set_exception(error)

    async def control(self, request_ids: Iterable[str], kind: int) -> None:
        """XADD one Control per request id to `orca:control`."""
        pipe = self._redis.pipeline(transaction=False)
        for request_id in request_ids:
            message = stream_pb2.Control(request_id=request_id, kind=kind)
            pipe.xadd(
                redis_streams.CONTROL_STREAM,
                redis_streams.encode(message),
                maxlen=redis_streams.CONTROL_MAXLEN,
                approximate=True,
            )
        await pipe.execute()

    def control_soon(self, request_ids: list[str], kind: int) -> None:
        """Send Controls from a task of their own: safe to call while being cancelled."""
        if not request_ids:
            return
        task = asyncio.get_running_loop().create_task(self._control_logged(request_ids, kind))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _control_logged(self, request_ids: list[str], kind: int) -> None:
        try:
            await self.control(request_ids, kind)
        except RedisError as exc:
            log_event("control_failed", request_ids=",".join(request_ids), error=repr(exc))
            return
        log_event("control_sent", kind=Kind.Name(kind), request_ids=",".join(request_ids))

    async def drain(self) -> None:
        """Wait for Controls still being sent (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
