"""Publishes the scheduler's load to the `orca:load` hash every ~0.5 s.

Gateways read it for admission (429 when the queue is long), readiness (a stale
`updated_at_unix` means no live scheduler) and prompt validation (`max_model_len`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from orca_proto.redis_streams import LOAD_KEY, LoadReport

log = logging.getLogger(__name__)


class LoadReporter:
    """Writes `snapshot()` to `orca:load` periodically."""

    def __init__(
        self,
        client: aioredis.Redis,
        snapshot: Callable[[], LoadReport],
        interval_s: float = 0.5,
    ) -> None:
        self._client = client
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._failing = False

    async def report(self, report: LoadReport | None = None) -> None:
        """Write one report now (the current snapshot unless given)."""
        report = report or self._snapshot()
        report.updated_at_unix = time.time()
        await self._client.hset(LOAD_KEY, mapping=report.to_hash())

    async def run(self) -> None:
        """Report every interval until cancelled; Redis errors are logged once per outage."""
        while True:
            try:
                await self.report()
                if self._failing:
                    log.info("load_report_recovered")
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("load_report_failed error=%r", str(exc))
                self._failing = True
            await asyncio.sleep(self._interval_s)
