"""The router process: FastAPI app over the gateway, health/readiness of the router itself,
`/v1/models`, `/metrics`, the admin API, and `run_router` (uvicorn)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from seekd.router.admin import admin_routes
from seekd.router.auth import ClientAuth
from seekd.router.config import RouterConfig, load_router_config
from seekd.router.errors import APIError
from seekd.router.gateway import Gateway, UpstreamError
from seekd.router.health import HealthChecker
from seekd.router.metrics import CONTENT_TYPE

logger = logging.getLogger(__name__)

PROXIED = ("/v1/chat/completions", "/v1/completions")


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def create_router_app(config: RouterConfig, config_path: Path | None = None, state_dir: Path | None = None) -> FastAPI:
    state_dir = state_dir or (config_path.parent if config_path else Path.cwd())
    gateway = Gateway(config, state_dir)
    auth = ClientAuth(config)
    health = HealthChecker(gateway.registry, config.health, gateway.client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.cache.start()
        health.start()
        logger.info("router ready: %d backends, models %s", len(config.backends), ", ".join(config.public_models()))
        try:
            yield
        finally:
            await health.stop()
            await gateway.close()

    app = FastAPI(title="seekd router", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(UpstreamError)
    async def _upstream(request: Request, exc: UpstreamError) -> Response:
        return exc.response()

    async def proxied(request: Request) -> Response:
        headers = _headers(request)
        tenant = auth.tenant(headers)
        try:
            body = await request.json()
        except ValueError:
            raise APIError(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object", code="invalid_json")
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        return await gateway.handle(request.url.path, body, headers, tenant, request_id)

    for path in PROXIED:
        app.add_api_route(path, proxied, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        auth.tenant(_headers(request))
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "seekd-router"} for name in config.public_models()],
        }

    @app.get("/health")
    async def alive() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        up = [b.name for b in gateway.registry if b.healthy and not b.drained]
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        return JSONResponse({"status": "ready" if up else "not_ready", "backends_up": len(up)}, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(admin_routes(gateway, auth, config_path))
    return app


def run_router(config_path: Path, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from seekd.ops.logging_setup import configure_logging

    config = load_router_config(config_path)
    configure_logging(config.listen.log_level, config.listen.log_format)
    app = create_router_app(config, config_path)
    uvicorn.run(
        app,
        host=host or config.listen.host,
        port=config.listen.port if port is None else port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0
