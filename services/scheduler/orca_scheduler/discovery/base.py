"""The Discovery interface, and the static list of workers `orca serve` uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

# The ready workers: ordinal -> "host:port".
ReadyWorkers = dict[int, str]


class Discovery(Protocol):
    """A source of the ready workers."""

    def updates(self) -> AsyncIterator[ReadyWorkers]:
        """Yield every ready worker, first the current set, then the whole set again each
        time it changes (never twice the same set in a row)."""
        ...


class StaticDiscovery:
    """Workers from a fixed list (`--workers`), ordinal = position in the list.

    A static worker is taken as ready: a pipeline that cannot be reached (or breaks) is
    retried by the pipeline manager, so a restarted worker is picked up again.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self.workers: ReadyWorkers = dict(enumerate(addresses))

    async def updates(self) -> AsyncIterator[ReadyWorkers]:
        """Yield the list once, then nothing more (until cancelled)."""
        yield dict(self.workers)
        await asyncio.Event().wait()
