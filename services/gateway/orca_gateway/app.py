"""The FastAPI application: routes, the API key, and the one mapping of errors to
OpenAI-shaped responses."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orca_gateway import chat, completions, system
from orca_gateway.auth import require_api_key
from orca_gateway.errors import ClientDisconnected, GatewayError, MalformedRequest, error_body
from orca_gateway.log import log_event, log_exception
from orca_gateway.metrics import RequestCounterMiddleware
from orca_gateway.service import GatewayService

COUNTED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models"})


def create_app(service: GatewayService) -> FastAPI:
    """The HTTP app over a (started) GatewayService."""
    app = FastAPI(title="Orca gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    v1 = [Depends(require_api_key)]
    app.include_router(completions.router, dependencies=v1)
    app.include_router(chat.router, dependencies=v1)
    app.include_router(system.models_router, dependencies=v1)
    app.include_router(system.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(RequestCounterMiddleware, metrics=service.metrics, paths=COUNTED_PATHS)
    return app


def error_response(error: GatewayError) -> JSONResponse:
    """The HTTP response of a GatewayError."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    log_event(
        "request_rejected",
        request_id=getattr(request.state, "request_id", None),
        path=request.url.path,
        status=exc.status,
        code=exc.code,
        param=exc.param,
        message=exc.message,
    )
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param_path(first.get("loc", ()))
    message = first.get("msg", "invalid request body")
    detail = f"{param}: {message}" if param else message
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more problems)"
    return await _gateway_error(
        request, MalformedRequest(f"Invalid request: {detail}", param=param)
    )


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param_path(location) -> str | None:
    """`messages[0].content` from pydantic's ("body", "messages", 0, "content", "str")."""
    path = ""
    for part in location[1:] if location[:1] == ("body",) else location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in part or part.lower() in _TYPE_TAGS:
            break  # a union member's tag, not a field
        else:
            path += f".{part}" if path else part
    return path or None


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body = error_body(str(exc.detail), "invalid_request_error", None, None)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
    log_event(
        "client_disconnected",
        request_id=getattr(request.state, "request_id", None),
        path=request.url.path,
    )
    return Response(status_code=499)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log_exception(
        "request_failed",
        request_id=getattr(request.state, "request_id", None),
        path=request.url.path,
    )
    body = error_body("Internal server error.", "server_error", None, "internal_error")
    return JSONResponse(body, status_code=500)
