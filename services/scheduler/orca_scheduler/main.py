"""`orca-scheduler`: the iteration-level scheduler as a service.

Once connected to Redis and the worker(s) it prints one line to stdout,
`orca-scheduler ready workers=HOST:PORT model=NAME`, for launchers to wait on.
SIGTERM or SIGINT drains: no new requests are read, the ones taken finish, then it exits 0;
a second signal stops at once (unfinished requests stay pending in Redis and a restarted
scheduler resumes them). It exits 1 when it cannot start or loses its worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from redis.exceptions import RedisError

from orca_scheduler.config import SchedulerServiceConfig, parse_config
from orca_scheduler.grpc_executor import WorkerUnavailableError
from orca_scheduler.service import SchedulerService

log = logging.getLogger("orca_scheduler")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `orca-scheduler`; returns the process exit code."""
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    return asyncio.run(serve(config))


async def serve(config: SchedulerServiceConfig) -> int:
    """Start the service, print the ready line, serve until a signal; returns the exit code."""
    service = SchedulerService(config)
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    start = asyncio.create_task(service.start())
    next_signal = asyncio.create_task(signals.get())
    await asyncio.wait({start, next_signal}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # a signal before we were ready: just leave
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await service.close()
        return 0
    try:
        start.result()
    except (WorkerUnavailableError, RedisError, ConnectionError, OSError, ValueError) as exc:
        log.error("startup_failed error=%r", str(exc))
        next_signal.cancel()
        await service.close()
        return 1
    print(
        f"orca-scheduler ready workers={','.join(config.workers)} model={service.model_name}",
        flush=True,
    )
    run = asyncio.create_task(service.run())
    signal_count = 0
    while not run.done():
        if next_signal.done():
            signal_count += 1
            if signal_count == 1:
                service.drain()
            else:
                service.stop_now()
            next_signal = asyncio.create_task(signals.get())
        await asyncio.wait({run, next_signal}, return_when=asyncio.FIRST_COMPLETED)
    next_signal.cancel()
    return run.result()


if __name__ == "__main__":
    sys.exit(main())
