"""The public gRPC API (orca.v1.Generate) on its own port, in the gateway's event loop.

Generate runs the same path as HTTP (GatewayService: checks, submission, detokenization,
stop strings); the HTTP error classes become INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND,
RESOURCE_EXHAUSTED and UNAVAILABLE. A client that cancels its call cancels the request.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc

from orca_gateway.auth import check_bearer
from orca_gateway.errors import GatewayError, GenerationFailed, InvalidParameter
from orca_gateway.generation import ChoiceUpdate
from orca_gateway.log import log_event, log_exception
from orca_gateway.params import GenerationParams, validate_token_ids
from orca_gateway.service import GatewayService
from orca_gateway.tokenizer import Tokenizer
from orca_proto.v1 import generate_pb2, generate_pb2_grpc


def generation_params(params: generate_pb2.GenerationParams, vocab_size: int) -> GenerationParams:
    """Validated GenerationParams from the proto (unset optionals keep OpenAI's defaults)."""
    defaults = GenerationParams()

    def optional(name: str, default):
        return getattr(params, name) if params.HasField(name) else default

    result = GenerationParams(
        max_tokens=params.max_tokens or None,
        temperature=optional("temperature", defaults.temperature),
        top_p=optional("top_p", defaults.top_p),
        top_k=params.top_k,
        min_p=params.min_p,
        seed=optional("seed", None),
        stop=[s for s in params.stop if s],
        stop_token_ids=list(params.stop_token_ids),
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=optional("repetition_penalty", defaults.repetition_penalty),
        logprobs=params.top_logprobs if params.logprobs else None,
        ignore_eos=params.ignore_eos,
    )
    result.validate(vocab_size, logprobs_param="top_logprobs")
    return result


def _prompt_ids(request: generate_pb2.GenerateRequest, tokenizer: Tokenizer) -> list[int]:
    which = request.WhichOneof("prompt")
    if which == "text":
        ids = tokenizer.encode(request.text)
    elif which == "token_ids":
        ids = list(request.token_ids.ids)
    else:
        raise InvalidParameter("The request has no prompt (text or token_ids).", param="prompt")
    validate_token_ids(ids, tokenizer.vocab_size, "prompt")
    return ids


class GenerateServicer(generate_pb2_grpc.GenerateServicer):
    """orca.v1.Generate over a GatewayService."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service

    async def Generate(self, request, context):  # noqa: N802 (the proto's name)
        """Stream one completion; status codes for refused requests, CANCEL on client cancel."""
        service = self._service
        request_id = f"cmpl-{uuid.uuid4().hex}"
        status = grpc.StatusCode.OK
        generation = None
        try:
            self._authorize(context)
            service.check_model(request.model)
            params = generation_params(request.params, service.tokenizer.vocab_size)
            prompt = _prompt_ids(request, service.tokenizer)
            generation = await service.generate(
                request_id,
                [prompt],
                params,
                default_max_tokens=None,
                prompt_param="prompt",
                traceparent=_metadata(context).get("traceparent", ""),
            )
            async for update in generation.updates():
                if update.finish_reason == "error":
                    raise GenerationFailed(update.error or "generation failed")
                yield self._response(request_id, update, generation)
        except GatewayError as exc:
            status = exc.grpc_code
            log_event("request_rejected", request_id=request_id, api="grpc", code=exc.code)
            await context.abort(exc.grpc_code, exc.message)
        except (asyncio.CancelledError, GeneratorExit):
            status = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL
            log_exception("request_failed", request_id=request_id, api="grpc")
            raise
        finally:
            if generation is not None:
                generation.close()
            service.metrics.requests.labels("grpc:Generate", status.name).inc()

    async def Tokenize(self, request, context):  # noqa: N802
        """A text's token ids."""
        try:
            self._authorize(context)
            self._service.check_model(request.model)
        except GatewayError as exc:
            await context.abort(exc.grpc_code, exc.message)
        return generate_pb2.TokenizeResponse(token_ids=self._service.tokenizer.encode(request.text))

    async def Models(self, request, context):  # noqa: N802
        """The served model and its context length."""
        try:
            self._authorize(context)
        except GatewayError as exc:
            await context.abort(exc.grpc_code, exc.message)
        card = generate_pb2.ModelCard(
            id=self._service.model_name, max_model_len=await self._service.max_model_len()
        )
        return generate_pb2.ModelsResponse(models=[card])

    async def Health(self, request, context):  # noqa: N802
        """Readiness, with the reason when not ready (no API key needed)."""
        readiness = await self._service.loads.readiness(max_age_s=0)
        return generate_pb2.HealthResponse(ready=readiness.ready, reason=readiness.reason)

    def _authorize(self, context) -> None:
        check_bearer(_metadata(context).get("authorization"), self._service.config.api_key)

    def _response(
        self, request_id, update: ChoiceUpdate, generation
    ) -> generate_pb2.GenerateResponse:
        tokenizer = self._service.tokenizer
        response = generate_pb2.GenerateResponse(
            id=request_id,
            text=update.text,
            token_ids=update.token_ids,
            logprobs=[
                generate_pb2.LogprobEntry(
                    token_id=e.token_id,
                    token=tokenizer.token_text(e.token_id),
                    logprob=e.logprob,
                    top_logprobs=[
                        generate_pb2.LogprobEntry(
                            token_id=a.token_id,
                            token=tokenizer.token_text(a.token_id),
                            logprob=a.logprob,
                        )
                        for a in e.top_logprobs
                    ],
                )
                for e in update.logprobs
            ],
        )
        if update.finish_reason is not None:
            response.finish_reason = update.finish_reason
            response.usage.prompt_tokens = generation.prompt_tokens
            response.usage.completion_tokens = generation.completion_tokens
        return response


def _metadata(context) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


async def start_grpc_server(service: GatewayService, host: str, port: int) -> grpc.aio.Server:
    """Start orca.v1.Generate on host:port (in the running loop) and return the server."""
    server = grpc.aio.server()
    generate_pb2_grpc.add_GenerateServicer_to_server(GenerateServicer(service), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server
