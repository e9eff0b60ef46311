"""Every write the scheduler makes to Redis (chunks, acks, dead letters), in order, batched.

Callers submit a batch of commands without waiting; one task applies batches in submission
order, each round trip carrying everything queued so far in one pipeline. A connection
failure is retried (the same commands again: a chunk written twice is harmless, readers drop
token indexes they have), so a Redis restart delays output but loses none of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Adds commands to a pipeline (e.g. `lambda pipe: pipe.xack(...)`).
Command = Callable[[aioredis.client.Pipeline], object]


@dataclass
class _Batch:
    commands: list[Command]
    on_written: Callable[[], None] | None


class RedisWriter:
    """Applies batches of commands in order, one pipelined round trip per wake-up."""

    def __init__(self, client: aioredis.Redis, max_backoff_s: float = 2.0) -> None:
        self._client = client
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._max_backoff_s = max_backoff_s

    def submit(self, commands: list[Command], on_written: Callable[[], None] | None = None) -> None:
        """Queue commands to run after every earlier batch; `on_written` runs once they have."""
        if commands:
            self._queue.put_nowait(_Batch(commands, on_written))

    @property
    def backlog(self) -> int:
        """Batches not written yet."""
        return self._queue.qsize()

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        await self._queue.join()

    async def run(self) -> None:
        """The writer task: runs until cancelled."""
        while True:
            batches = [await self._queue.get()]
            while not self._queue.empty():
                batches.append(self._queue.get_nowait())
            await self._write(batches)
            for batch in batches:
                if batch.on_written is not None:
                    batch.on_written()
                self._queue.task_done()

    async def _write(self, batches: list[_Batch]) -> None:
        backoff_s = 0.05
        while True:
            pipe = self._client.pipeline(transaction=False)
            for batch in batches:
                for command in batch.commands:
                    command(pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis_write_retry error=%r backoff_s=%.2f", str(exc), backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            for result in results:
                if isinstance(result, RedisError):  # e.g. WRONGTYPE: retrying cannot help
                    log.error("redis_write_failed error=%r", str(result))
            return
