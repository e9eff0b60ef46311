"""Entries of `orca:requests` the scheduler cannot serve, set aside with the reason.

A dead letter keeps the entry's original fields plus `reason` (and `entry_id`, the id it had
in `orca:requests`); the entry is XACKed in the same round trip, so it is never retried.
"""

from __future__ import annotations

import logging

from orca_proto.redis_streams import DEAD_LETTER_STREAM, REQUESTS_GROUP, REQUESTS_STREAM
from orca_scheduler.metrics import SchedulerMetrics
from orca_scheduler.redis_writer import RedisWriter

log = logging.getLogger(__name__)


class DeadLetters:
    """Moves unservable entries to `orca:requests:dead` through the writer."""

    def __init__(self, writer: RedisWriter, metrics: SchedulerMetrics) -> None:
        self._writer = writer
        self._metrics = metrics

    def send(self, entry_id: str, fields: dict, reason: str) -> None:
        """Copy the entry with `reason` to the dead-letter stream and XACK it."""
        dead = {_key(k): v for k, v in (fields or {}).items()}
        dead["reason"] = reason
        dead["entry_id"] = entry_id
        self._writer.submit(
            [
                lambda pipe: pipe.xadd(DEAD_LETTER_STREAM, dead),
                lambda pipe: pipe.xack(REQUESTS_STREAM, REQUESTS_GROUP, entry_id),
            ]
        )
        self._metrics.dead_letters.inc()
        log.warning("dead_letter entry_id=%s reason=%r", entry_id, reason)


def _key(key) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)
