"""The optional API key: `Authorization: Bearer <key>` on every /v1 route and gRPC call."""

from __future__ import annotations

import secrets

from fastapi import Request

from orca_gateway.errors import Unauthorized


def check_bearer(authorization: str | None, api_key: str) -> None:
    """Unauthorized unless no key is configured or the header carries it."""
    if not api_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        raise Unauthorized("Missing or incorrect API key (send 'Authorization: Bearer <key>').")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of the /v1 routes."""
    check_bearer(request.headers.get("authorization"), request.app.state.service.config.api_key)
