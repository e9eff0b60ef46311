"""`orca-worker`: load a model, then serve `orca.v1.Worker` over gRPC until SIGTERM.

Once serving it prints one line to stdout, `orca-worker listening HOST:PORT model=NAME
kv_blocks=N`, for launchers to wait on. SIGTERM or SIGINT drains (plans that start new
sequences are refused while running ones finish, up to --drain-timeout-s), then stops and
exits 0; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from orca_worker.errors import ModelLoadError
from orca_worker.runner import ModelRunner
from orca_worker.server import WorkerService, build_server, wait_until_drained
from orca_worker.service_config import WorkerServiceConfig, parse_config

log = logging.getLogger("orca_worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `orca-worker`; returns the process exit code."""
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        runner = ModelRunner(config.runner)
    except (ModelLoadError, OSError) as exc:
        log.error("model_load_failed model=%s error=%r", config.runner.model_dir, str(exc))
        return 1
    return asyncio.run(serve(runner, config))


async def serve(runner: ModelRunner, config: WorkerServiceConfig) -> int:
    """Serve `runner` until a signal asks to stop; returns the exit code."""
    service = WorkerService(runner)
    try:
        server, port = build_server(service, config.host, config.port, config.max_message_bytes)
    except (OSError, RuntimeError) as exc:
        log.error("listen_failed host=%s port=%d error=%r", config.host, config.port, str(exc))
        return 1
    await server.start()
    info = runner.info()
    print(
        f"orca-worker listening {config.host}:{port} model={info.model} "
        f"kv_blocks={info.num_kv_blocks}",
        flush=True,
    )
    signals = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    await signals.get()
    service.start_draining()
    drain = asyncio.create_task(wait_until_drained(service, config.drain_timeout_s))
    second_signal = asyncio.create_task(signals.get())
    await asyncio.wait({drain, second_signal}, return_when=asyncio.FIRST_COMPLETED)
    drained = drain.done() and drain.result()
    for task in (drain, second_signal):
        task.cancel()
    log.info("stopping drained=%s active_seqs=%d", drained, service.num_active_seqs)
    await server.stop(grace=1.0)
    service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
