"""Runs the HTTP app (uvicorn) and the gRPC server in one event loop, and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

import uvicorn

from orca_gateway.app import create_app
from orca_gateway.config import GatewayConfig
from orca_gateway.grpc_server import start_grpc_server
from orca_gateway.log import log_event
from orca_gateway.service import GatewayService


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: GatewayServer owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        """No-op: signals are handled by GatewayServer.run."""
        yield


class GatewayServer:
    """One gateway: service, HTTP and gRPC. `run()` serves until `request_stop()`."""

    def __init__(self, config: GatewayConfig, service: GatewayService | None = None) -> None:
        self.config = config
        self.service = service or GatewayService.from_config(config)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        # Set (from the serving thread) once both servers accept connections.
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._uvicorn: _Uvicorn | None = None
        self._stop_requested = False

    @property
    def ready_line(self) -> str:
        """The line printed once serving."""
        grpc_addr = f"{self.config.host}:{self.grpc_port}" if self.grpc_port else "off"
        return (
            f"orca-gateway listening http://{self.config.host}:{self.http_port} "
            f"grpc={grpc_addr} model={self.service.model_name}"
        )

    def request_stop(self) -> None:
        """Ask the server to stop (thread-safe; idempotent)."""
        self._stop_requested = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop_now)

    def _stop_now(self) -> None:
        self._stop_requested = True
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    async def run(self, on_started=None) -> None:
        """Serve until stopped; `on_started(server)` is called once both servers listen."""
        self._loop = asyncio.get_running_loop()
        self._install_signal_handlers()
        await self.service.start()
        grpc_server = None
        try:
            if self.config.grpc_port:
                grpc_server = await start_grpc_server(
                    self.service, self.config.host, self.config.grpc_port
                )
                self.grpc_port = self.config.grpc_port
            self._uvicorn = _Uvicorn(
                uvicorn.Config(
                    create_app(self.service),
                    host=self.config.host,
                    port=self.config.port,
                    log_level=self.config.log_level.lower(),
                    lifespan="off",
                    access_log=False,
                    timeout_graceful_shutdown=self.config.shutdown_grace_s,
                )
            )
            self._uvicorn.should_exit = self._stop_requested
            serving = asyncio.create_task(self._uvicorn.serve())
            while not self._uvicorn.started and not serving.done():
                await asyncio.sleep(0.01)
            if self._uvicorn.started:
                self.http_port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
                self.started.set()
                log_event("gateway_started", http_port=self.http_port, grpc_port=self.grpc_port)
                if on_started is not None:
                    on_started(self)
            await serving
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=min(self.config.shutdown_grace_s, 5.0))
            await self.service.stop()
            log_event("gateway_stopped")

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self._stop_now)
