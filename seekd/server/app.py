"""The API server process: FastAPI app factory, engine lifecycle, health/readiness, `run_server`.

The socket is bound before the model is loaded, so `/health` answers at once and `/ready` turns
200 only when the engine core has loaded the model and the tokenizer is in memory.
SIGTERM drains: new requests get 503 while queued and running ones finish (up to `drain_timeout_s`),
then the server exits 0; what is still running then ends with an error its client can read
(`seekd.server.shutdown`). A second SIGTERM, or Ctrl-C, stops at once.
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
from seekd.models.generation_config import GenerationConfig
from seekd.ops.audit import AUDIT_FILE, AuditLog, ContentCipher, load_key
from seekd.ops.auth import Authenticator, AuthMiddleware, check_bind_is_safe, principal_of
from seekd.ops.keys import KeyStore
from seekd.ops.logging_setup import configure_logging
from seekd.ops.observability import install_observability
from seekd.ops.tls import build_ssl_context
from seekd.server.admin_console_routes import router as admin_console_router
from seekd.server.admin_routes import router as admin_router
from seekd.server.admission import AdmissionController, resolve_tenant
from seekd.server.audit_trail import AuditMiddleware
from seekd.server.engine_client import EngineClient
from seekd.server.errors import install_error_handlers
from seekd.server.generation import ServingContext
from seekd.server.http.body_limit import BodySizeLimitMiddleware
from seekd.server.http.protocol import OpenAIErrorHttpProtocol
from seekd.server.images import ImageFrontend
from seekd.server.kb_routes import router as kb_router
from seekd.server.knowledge import KnowledgeService
from seekd.server.logprobs import TokenTexts
from seekd.server.lora_routes import router as lora_router
from seekd.server.openai_routes import router
from seekd.server.openapi import DESCRIPTION, KEYED, errors, install_openapi, probe
from seekd.server.shutdown import DrainingServer, LiveRequests
from seekd.server.supervisor import EngineSupervisor
from seekd.text.tokenizer import Tokenizer
from seekd.ui.routes import router as ui_router

logger = logging.getLogger(__name__)


async def _start_engine(app: FastAPI, config: SeekdConfig, on_failure: asyncio.Event) -> None:
    client: EngineClient = app.state.engine
    try:
        info = await client.start()
        tokenizer = await asyncio.to_thread(Tokenizer, Path(info.model_folder))
        generation_config = GenerationConfig.from_folder(info.model_folder)
        images = await asyncio.to_thread(ImageFrontend.for_model, info.model_folder, tokenizer, config.server)
    except Exception as e:
        logger.error("cannot serve: %s", e)
        app.state.startup_error = str(e)
        on_failure.set()
        return
    app.state.supervisor = EngineSupervisor(client, config.admission)
    app.state.supervisor.start()
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
        admission=app.state.admission,
        live=app.state.live,
        request_timeout_s=config.admission.request_timeout_s,
        tenant_cache_isolation=config.security.tenant_cache_isolation,
        max_prompt_tokens=config.server.max_prompt_tokens,
        max_output_tokens=config.server.max_output_tokens,
        generation_config=generation_config,
        images=images,
        quantization=config.model.quantization,
        precision=info.precision,
    )
    demo = " (demo model with RANDOM weights)" if config.model.model is None else ""
    logger.info(
        "ready: serving %s%s from %s in %s, context %d tokens, at %s://%s:%d/v1",
        name,
        demo,
        info.model_folder,
        info.precision,
        info.max_model_len,
        _scheme(config),
        config.server.host,
        config.server.port,
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
            if app.state.supervisor is not None:
                await app.state.supervisor.stop()
            await app.state.engine.shutdown()
            await app.state.knowledge.close()

    app = FastAPI(title="seekd", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.engine = None
    app.state.serving = None
    app.state.startup_error = None
    app.state.supervisor = None
    max_inflight = config.admission.max_inflight_requests or config.scheduler.max_num_seqs
    app.state.admission = AdmissionController(config.admission, max_inflight)
    app.state.live = LiveRequests()
    install_error_handlers(app)
    # Outermost first: access log -> audit -> auth -> body limit -> routes.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=config.server.max_request_body_bytes,
        max_json_depth=config.server.max_json_depth,
    )
    app.state.key_store = KeyStore.in_data_dir(config.storage.path)
    app.add_middleware(
        AuthMiddleware,
        authenticator=authenticator(config),
        on_reject=lambda: app.state.metrics.request_rejected("auth"),
    )
    audit = audit_log(config) if config.security.audit_log else None
    if audit is not None:
        app.add_middleware(AuditMiddleware, log=audit, store_content=config.security.audit_store_content)
    app.state.audit = audit
    app.state.knowledge = KnowledgeService(config, audit)
    app.include_router(router)
    app.include_router(kb_router)
    app.include_router(admin_router)
    app.include_router(admin_console_router)
    app.include_router(ui_router)
    app.include_router(lora_router)
    install_observability(app, config.model.display_name)
    install_openapi(app)

    @app.get("/health", responses=probe())
    async def health(request: Request) -> JSONResponse:
        """Liveness: the server runs and its engine core has not died."""
        client: EngineClient | None = request.app.state.engine
        dead = request.app.state.startup_error or (client.dead_reason if client is not None else None)
        supervisor: EngineSupervisor | None = request.app.state.supervisor
        restarts = supervisor.health() if supervisor is not None and supervisor.num_restarts else {}
        if dead:
            return JSONResponse(
                {"status": "unhealthy", "reason": dead, **restarts}, status_code=HTTPStatus.SERVICE_UNAVAILABLE
            )
        return JSONResponse({"status": "ok", **restarts})

    @app.get("/ready", responses=probe(*KEYED))
    async def ready(request: Request) -> JSONResponse:
        """Readiness, plus the engine's latest stats (running/waiting requests, KV usage)."""
        ctx: ServingContext | None = request.app.state.serving
        detailed = principal_of(request.scope) is not None  # else a probe without a key (auth on): status alone
        reason = None
        if ctx is None or not ctx.client.is_ready:
            client: EngineClient | None = request.app.state.engine
            reason = request.app.state.startup_error or (client.dead_reason if client else None) or "loading"
        elif ctx.admission.draining:
            reason = "draining: the server is shutting down"
        if reason is not None:
            body = {"status": "not_ready", "reason": reason} if detailed else {"status": "not_ready"}
            return JSONResponse(body, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        if not detailed:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {
                "status": "ready",
                "model": ctx.served_model_name,
                "max_model_len": ctx.max_model_len,
                "requests_in_flight": ctx.client.num_in_flight,
                "engine_pid": ctx.client.pid,
                "engine_state": "restarting" if ctx.client.is_restarting else "running",
                "engine": ctx.client.stats,
                "admission": ctx.admission.snapshot(),
            }
        )

    @app.get("/v1/queue", responses=errors(HTTPStatus.BAD_REQUEST, *KEYED))
    async def queue(request: Request) -> JSONResponse:
        """The caller's tenant's queued and running requests, and the estimated wait in the queue."""
        admission: AdmissionController = request.app.state.admission
        return JSONResponse(admission.snapshot(resolve_tenant(request)))

    return app


def authenticator(config: SeekdConfig) -> Authenticator:
    return Authenticator(KeyStore.in_data_dir(config.storage.path), config.security.api_key)


def audit_log(config: SeekdConfig) -> AuditLog:
    security = config.security
    path = Path(security.audit_log_file).expanduser() if security.audit_log_file else config.storage.path / AUDIT_FILE
    cipher = None
    if security.audit_store_content:
        cipher = ContentCipher(load_key(security.audit_encryption_key, security.audit_encryption_key_file))
    return AuditLog(path, cipher)


def _scheme(config: SeekdConfig) -> str:
    return "https" if config.security.ssl_certfile else "http"


def run_server(config: SeekdConfig) -> int:
    """Serve until interrupted; returns the process exit code (1 if the engine never started).
    Raises ValueError before binding if the configuration is unsafe (no keys on a public address,
    unreadable certificates)."""
    configure_logging(config.server.log_level, config.server.log_format)
    check_bind_is_safe(config.server.host, authenticator(config).enabled)
    if config.security.audit_store_content:
        audit_log(config)  # a bad encryption key fails here, not on the first request
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown has finished
        return 0


async def _serve(config: SeekdConfig) -> int:
    failure = asyncio.Event()
    ssl_context = build_ssl_context(config.security)
    app = create_app(config, failure)
    uvicorn_config = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level=config.server.log_level,
        timeout_graceful_shutdown=5,
        http=OpenAIErrorHttpProtocol,
        log_config=None,  # uvicorn's lines go through our root handler, in our format
        access_log=False,  # seekd.access logs each request once, with tokens and timings
    )
    uvicorn_config.load()
    uvicorn_config.ssl = ssl_context  # ours: uvicorn cannot set a minimum TLS version
    server = DrainingServer(uvicorn_config, app, config.admission.drain_timeout_s)
    logger.info(
        "seekd %s starting on %s://%s:%d (model: %s)",
        __version__,
        _scheme(config),
        config.server.host,
        config.server.port,
        config.model.model or "built-in demo",
    )

    async def stop_on_failure() -> None:
        await failure.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_on_failure())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return 1 if failure.is_set() else 0
