"""The API server process: FastAPI app factory, engine lifecycle, health/readiness, `run_server`.

The socket is bound before the model is loaded, so `/health` answers at once and `/ready` turns
200 only when the engine core has loaded the model and the tokenizer is in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from seekd import __version__
from seekd.config import SeekdConfig
from seekd.ops.access_log import configure_logging
from seekd.ops.observability import install_observability
from seekd.server.body_limit import BodySizeLimitMiddleware
from seekd.server.engine_client import EngineClient
from seekd.server.errors import install_error_handlers
from seekd.server.generation import ServingContext
from seekd.server.logprobs import TokenTexts
from seekd.server.openai_routes import router
from seekd.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


async def _start_engine(app: FastAPI, config: SeekdConfig, on_failure: asyncio.Event) -> None:
    client: EngineClient = app.state.engine
    try:
        info = await client.start()
        tokenizer = await asyncio.to_thread(Tokenizer, Path(info.model_folder))
    except Exception as e:
        logger.error("cannot serve: %s", e)
        app.state.startup_error = str(e)
        on_failure.set()
        return
    name = config.model.display_name
    app.state.serving = ServingContext(
        client=client,
        tokenizer=tokenizer,
        token_texts=TokenTexts(tokenizer),
        served_model_name=name,
        max_model_len=info.max_model_len,
        max_n=config.server.max_n,
        created=int(time.time()),
        metrics=app.state.metrics,
    )
    demo = " (demo model with RANDOM weights)" if config.model.model is None else ""
    logger.info(
        "ready: serving %s%s from %s, context %d tokens, at http://%s:%d/v1",
        name, demo, info.model_folder, info.max_model_len, config.server.host, config.server.port,
    )


def create_app(config: SeekdConfig, on_startup_failure: asyncio.Event | None = None) -> FastAPI:
    """`on_startup_failure` is set if the engine cannot start, so that `run_server` can exit."""
    failure = on_startup_failure or asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = EngineClient(config)
        starter = asyncio.create_task(_start_engine(app, config, failure), name="seekd-engine-start")
        try:
            yield
        finally:
            starter.cancel()
            await app.state.engine.shutdown()

    app = FastAPI(title="seekd", version=__version__, lifespan=lifespan)
    app.state.engine = None
    app.state.serving = None
    app.state.startup_error = None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=config.server.max_request_body_bytes)
    app.include_router(router)
    install_observability(app, config.model.display_name)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Liveness: the server runs and its engine core has not died."""
        client: EngineClient | None = request.app.state.engine
        dead = request.app.state.startup_error or (client.dead_reason if client is not None else None)
        if dead:
            return JSONResponse({"status": "unhealthy", "reason": dead}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        """Readiness, plus the engine's latest stats (running/waiting requests, KV usage)."""
        ctx: ServingContext | None = request.app.state.serving
        if ctx is None or not ctx.client.is_ready:
            client: EngineClient | None = request.app.state.engine
            reason = request.app.state.startup_error or (client.dead_reason if client else None) or "loading"
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return JSONResponse(
            {
                "status": "ready",
                "model": ctx.served_model_name,
                "max_model_len": ctx.max_model_len,
                "requests_in_flight": ctx.client.num_in_flight,
                "engine_pid": ctx.client.info.pid if ctx.client.info else None,
                "engine": ctx.client.stats,
            }
        )

    return app


def run_server(config: SeekdConfig) -> int:
    """Serve until interrupted; returns the process exit code (1 if the engine never started)."""
    configure_logging(config.server.log_format)
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown has finished
        return 0


async def _serve(config: SeekdConfig) -> int:
    failure = asyncio.Event()
    app = create_app(config, failure)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.server.host, port=config.server.port, log_level=config.server.log_level,
            timeout_graceful_shutdown=5,
            log_config=None if config.server.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        )
    )
    logger.info("seekd %s starting on http://%s:%d (model: %s)", __version__, config.server.host,
                config.server.port, config.model.model or "built-in demo")

    async def stop_on_failure() -> None:
        await failure.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_on_failure())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return 1 if failure.is_set() else 0
