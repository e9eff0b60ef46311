"""Routes about the server itself: /health, /ready, /metrics and /v1/models."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from orca_gateway.metrics import CONTENT_TYPE
from orca_gateway.service import GatewayService

router = APIRouter()
# /v1/models sits behind the API key, so it is registered on its own router.
models_router = APIRouter()


@router.get("/health")
async def health() -> dict:
    """The process is alive (always 200)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 when Redis answers and a scheduler reports a live pipeline; else 503 and why."""
    service: GatewayService = request.app.state.service
    readiness = await service.loads.readiness(max_age_s=0)
    if readiness.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready", "reason": readiness.reason}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text: the gateway's metrics and the scheduler's load gauges."""
    service: GatewayService = request.app.state.service
    try:
        report = await service.loads.read(max_age_s=0)
    except Exception:  # metrics must answer even while Redis is down
        report = None
    service.metrics.set_load(report)
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


@models_router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The served model, OpenAI's list shape, with its context length and topology."""
    service: GatewayService = request.app.state.service
    report = await service.load_report()
    return {
        "object": "list",
        "data": [
            {
                "id": service.model_name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "orca",
                "root": service.config.model,
                "max_model_len": await service.max_model_len(report),
                "topology": {
                    "pipelines": report.num_pipelines if report else 0,
                    "pp": report.pp if report else 1,
                    "tp": report.tp if report else 1,
                },
            }
        ],
    }
