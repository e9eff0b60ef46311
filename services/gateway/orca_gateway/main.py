"""`orca-gateway`: flags (each defaulting from an ORCA_* env var) -> GatewayConfig -> serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from orca_gateway.config import GatewayConfig


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; `env` supplies the defaults (ORCA_MODEL, ORCA_PORT, ...)."""
    p = argparse.ArgumentParser(
        prog="orca-gateway",
        description="Orca's OpenAI-compatible HTTP and gRPC front door.",
    )
    defaults = GatewayConfig(model="")

    def add(flag: str, env_name: str, default, kind=str, help_text: str = "", **kw):
        value = env.get(env_name)
        p.add_argument(
            flag,
            type=kind,
            default=kind(value) if value not in (None, "") else default,
            help=f"{help_text} (env {env_name}; default {default!r})",
            **kw,
        )

    add("--model", "ORCA_MODEL", None, help_text="model folder with the tokenizer (required)")
    add(
        "--served-model-name",
        "ORCA_SERVED_MODEL_NAME",
        "",
        help_text="name clients use in `model`; empty = the model folder's basename",
    )
    add("--host", "ORCA_HOST", defaults.host, help_text="address of both servers")
    add("--port", "ORCA_PORT", defaults.port, int, help_text="HTTP port (0 = a free one)")
    add(
        "--grpc-port",
        "ORCA_GRPC_PORT",
        defaults.grpc_port,
        int,
        help_text="port of the orca.v1.Generate gRPC service (0 = off)",
    )
    add("--redis-url", "ORCA_REDIS_URL", defaults.redis_url, help_text="Redis URL")
    add(
        "--api-key",
        "ORCA_API_KEY",
        "",
        help_text="require 'Authorization: Bearer KEY' on /v1 routes and gRPC calls",
    )
    add(
        "--max-queue-len",
        "ORCA_MAX_QUEUE_LEN",
        defaults.max_queue_len,
        int,
        help_text="answer 429 while the scheduler reports this many waiting requests",
    )
    add("--log-level", "ORCA_LOG_LEVEL", defaults.log_level, help_text="debug, info, warning")
    return p


def config_from_args(argv: list[str] | None, env: Mapping[str, str]) -> GatewayConfig:
    """Parse flags (env defaults) into the GatewayConfig; exits with usage on bad flags."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or ORCA_MODEL) is required")
    return GatewayConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        redis_url=args.redis_url,
        api_key=args.api_key,
        max_queue_len=args.max_queue_len,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit code."""
    config = config_from_args(argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from orca_proto.tracing import configure_tracing

    try:
        configure_tracing("orca-gateway")
    except ValueError as exc:
        print(f"orca-gateway: {exc}", file=sys.stderr)
        return 2
    from orca_gateway.server import GatewayServer

    server = GatewayServer(config)
    asyncio.run(server.run(on_started=lambda s: print(s.ready_line, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
