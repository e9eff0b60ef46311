"""The gateway's one configuration object, built once in `main()` and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to know; flags (and ORCA_* env) fill the first block."""

    # Folder with the tokenizer (and config.json) of the served model.
    model: str
    # Name clients put in `model`; empty means the model folder's basename.
    served_model_name: str = ""
    host: str = "127.0.0.1"
    # HTTP port; 0 picks a free one (the ready line says which).
    port: int = 8000
    # gRPC port of the orca.v1.Generate service; 0 means no gRPC server.
    grpc_port: int = 0
    redis_url: str = "redis://127.0.0.1:6379/0"
    # When set, every /v1 route (and every gRPC call but Health) needs this bearer token.
    api_key: str = ""
    # Reject with 429 while the scheduler reports at least this many waiting requests.
    max_queue_len: int = 1024
    log_level: str = "info"

    # Tunables without flags (tests shorten them).
    # A load report older than this means no live scheduler (not ready).
    load_stale_after_s: float = 5.0
    # How long one read of `orca:load` is reused by admission checks.
    load_cache_s: float = 0.2
    # Retry-After of a 429, in seconds.
    retry_after_s: int = 1
    # Longest XREAD block of the output reader (it is woken early for new requests).
    reader_block_ms: int = 1000
    # On SIGTERM, how long open requests may run before they are cut.
    shutdown_grace_s: float = 30.0

    @property
    def model_name(self) -> str:
        """The served model's name: --served-model-name, else the model folder's basename."""
        return self.served_model_name or Path(self.model).resolve().name
