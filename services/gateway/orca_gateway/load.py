"""The scheduler's `orca:load` report: readiness, admission and context length."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from orca_proto import redis_streams
from orca_proto.redis_streams import LoadReport


@dataclass(frozen=True)
class Readiness:
    """Whether requests can be served now, why not, and the report it was judged on."""

    ready: bool
    reason: str
    report: LoadReport | None


class LoadMonitor:
    """Reads `orca:load` (reusing one read for `cache_s`) and judges liveness from it."""

    def __init__(self, redis: Redis, stale_after_s: float, cache_s: float) -> None:
        self._redis = redis
        self._stale_after_s = stale_after_s
        self._cache_s = cache_s
        self._cached: LoadReport | None = None
        self._cached_at = float("-inf")
        self._reading: asyncio.Future | None = None

    async def read(self, max_age_s: float | None = None) -> LoadReport | None:
        """The latest report (None when no scheduler ever wrote one); raises RedisError."""
        max_age_s = self._cache_s if max_age_s is None else max_age_s
        if time.monotonic() - self._cached_at <= max_age_s:
            return self._cached
        # Concurrent callers share one read (a read already in flight is fresh enough).
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._reading)

    async def _fetch(self) -> LoadReport | None:
        started = time.monotonic()
        raw = await self._redis.hgetall(redis_streams.LOAD_KEY)
        self._cached = LoadReport.from_hash(raw) if raw else None
        self._cached_at = started
        return self._cached

    async def readiness(self, max_age_s: float | None = None) -> Readiness:
        """Ready when Redis answers and a fresh report shows at least one pipeline."""
        try:
            report = await self.read(max_age_s)
        except RedisError as exc:
            return Readiness(False, f"Redis is unreachable: {exc}", None)
        if report is None:
            return Readiness(False, "no scheduler has reported its load yet", None)
        age_s = time.time() - report.updated_at_unix
        if age_s > self._stale_after_s:
            return Readiness(
                False, f"the scheduler's load report is stale ({age_s:.1f} s old)", report
            )
        if report.num_pipelines < 1:
            return Readiness(False, "the scheduler has no serving pipeline", report)
        return Readiness(True, "", report)
