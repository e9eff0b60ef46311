"""One exception type per failure a client can cause, each mapped once to an HTTP status,
an OpenAI-style error body and a gRPC status code."""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """A request the gateway refuses; subclasses fix the status, type and code."""

    status: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None
    grpc_code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return error_body(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers of the error response."""
        return {}


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> dict:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidParameter(GatewayError):
    """A parameter has a bad value (400); `param` names it."""

    code = "invalid_parameter"


class UnsupportedParameter(GatewayError):
    """A parameter the gateway does not support was given (400); `param` names it."""

    code = "unsupported_parameter"


class MalformedRequest(GatewayError):
    """The body is not JSON or does not match the request schema (422)."""

    status = 422
    code = "invalid_body"


class Unauthorized(GatewayError):
    """The API key is missing or wrong (401)."""

    status = 401
    code = "invalid_api_key"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ModelNotFound(GatewayError):
    """The request names a model this gateway does not serve (404)."""

    status = 404
    code = "model_not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, requested: str, served: str) -> None:
        super().__init__(
            f"The model '{requested}' does not exist; this server serves '{served}'.",
            param="model",
        )


class ContextLengthExceeded(GatewayError):
    """The prompt (plus max_tokens, when given) does not fit the model's context (400)."""

    code = "context_length_exceeded"


class GenerationFailed(GatewayError):
    """The scheduler refused or failed the request before it produced any output (400)."""

    code = "generation_failed"


class Overloaded(GatewayError):
    """Too many requests are waiting; retry later (429 with Retry-After)."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """Retry-After, in whole seconds."""
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(GatewayError):
    """Redis is unreachable or no scheduler reports a live pipeline (503)."""

    status = 503
    error_type = "server_error"
    code = "not_ready"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ClientDisconnected(Exception):
    """The client went away before its response was complete (not an error of the request)."""
