"""`orca-worker`: load a model, then serve `orca.v1.Worker` over gRPC until SIGTERM.

Once serving it prints one line to stdout, `orca-worker listening HOST:PORT model=NAME
kv_blocks=N`, for launchers to wait on. SIGTERM or SIGINT drains (plans that start new
sequences are refused while running ones finish, up to --drain-timeout-s), then stops and
exits 0; a second signal stops at once.

With --tp or --pp > 1 it first joins its pipeline's process group (--dist-init-addr) and
loads only its shard. If the pipeline breaks (a peer died or fell out of step), it answers
the plan with the error, then exits 1 so that the pipeline is restarted as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import torch

from orca_worker.errors import ModelLoadError
from orca_worker.parallel.distributed import init_parallel
from orca_worker.parallel.topology import TopologyError
from orca_worker.runner import ModelRunner
from orca_worker.server import WorkerService, build_server, wait_until_drained
from orca_worker.service_config import WorkerServiceConfig, parse_config

log = logging.getLogger("orca_worker")

# Put in the signal queue when the runner's pipeline breaks.
BROKEN = object()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `orca-worker`; returns the process exit code."""
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    place = config.runner.place
    comm = None
    try:
        if place.world_size > 1:
            comm = init_parallel(
                place,
                config.dist_init_addr or "",
                torch.device(config.runner.device),
                config.dist_timeout_s,
                config.dist_connect_timeout_s,
            )
        runner = ModelRunner(config.runner, comm)
    except (ModelLoadError, TopologyError, OSError, RuntimeError) as exc:
        # RuntimeError: torch.distributed's (a rendezvous that timed out, a peer that died).
        log.error(
            "model_load_failed model=%s ordinal=%d error=%r",
            config.runner.model_dir,
            place.ordinal,
            str(exc),
        )
        return 1
    try:
        return asyncio.run(serve(runner, config))
    finally:
        # A broken pipeline is left as is: tearing down a group whose peers are gone can hang.
        if comm is not None and runner.broken is None:
            try:
                runner.close()
                comm.close()
            except RuntimeError as exc:  # the next stage is gone already
                log.warning("pipeline_close_failed error=%r", str(exc))


async def serve(runner: ModelRunner, config: WorkerServiceConfig) -> int:
    """Serve `runner` until a signal asks to stop (exit code 0) or its pipeline breaks (1)."""
    signals: asyncio.Queue = asyncio.Queue()
    service = WorkerService(runner, on_broken=lambda reason: signals.put_nowait(BROKEN))
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    if await signals.get() is BROKEN:
        # Its peers are stuck or gone: the pipeline restarts as a whole (the orchestrator
        # restarts this process; the others fail their next collective and follow).
        log.error("pipeline_broken reason=%r", runner.broken)
        await server.stop(grace=1.0)
        service.close()
        return 1
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
