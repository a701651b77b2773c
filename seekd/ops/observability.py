"""Wires metrics, GPU metrics, request ids and the access log into the API app, and serves /metrics."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from seekd.ops.access_log import AccessLogMiddleware
from seekd.ops.gpu import GpuCollector
from seekd.ops.metrics import CONTENT_TYPE, ServerMetrics


def install_observability(app: FastAPI, model_name: str) -> ServerMetrics:
    """Adds `app.state.metrics`, the access-log middleware (outermost, so it sees every status,
    413s included) and `GET /metrics`. Engine stats and restarts are read from app state at scrape
    time, so they work before the engine is up and across restarts."""
    metrics = ServerMetrics(model_name)

    def engine_stats() -> dict[str, float]:
        client = app.state.engine
        return dict(client.stats) if client is not None else {}

    def engine_restarts() -> int:
        supervisor = getattr(app.state, "supervisor", None)
        return supervisor.num_restarts if supervisor is not None else 0

    metrics.add_engine_source(engine_stats, engine_restarts)
    metrics.registry.register(GpuCollector())
    app.state.metrics = metrics
    app.add_middleware(AccessLogMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text exposition of this server's registry."""
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)

    return metrics
