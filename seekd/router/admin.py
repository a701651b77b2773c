"""The admin API: rollout weights, blue-green switches, draining, config reload and cache
invalidation, while the router runs. Every route needs the admin key (`auth.ClientAuth`).
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from fastapi import APIRouter, Request

from seekd.router.auth import ClientAuth
from seekd.router.config import TargetConfig, load_router_config
from seekd.router.errors import APIError
from seekd.router.gateway import Gateway


def _not_found(kind: str, name: str) -> APIError:
    return APIError(HTTPStatus.NOT_FOUND, f"no {kind} named {name!r}", code=f"unknown_{kind}")


def admin_routes(gateway: Gateway, auth: ClientAuth, config_path: Path | None) -> APIRouter:
    router = APIRouter(prefix="/admin")

    async def body_of(request: Request) -> dict:
        auth.check_admin({k.lower(): v for k, v in request.headers.items()})
        if request.method in ("GET",):
            return {}
        data = await request.json() if await request.body() else {}
        if not isinstance(data, dict):
            raise APIError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return data

    @router.get("/state")
    async def state(request: Request) -> dict:
        await body_of(request)
        return {
            "backends": [b.state() for b in gateway.registry],
            "routes": gateway.rollout.state(),
            "cache": {"l1_entries": len(gateway.cache.l1), "redis": gateway.cache.redis is not None},
        }

    @router.put("/routes/{model}/targets")
    async def set_targets(model: str, request: Request) -> dict:
        data = await body_of(request)
        try:
            targets = [TargetConfig(**t) for t in data.get("targets") or []]
            before = _versions(gateway, model)
            route = gateway.rollout.set_targets(model, targets)
        except KeyError:
            raise _not_found("route", model) from None
        except (TypeError, ValueError) as e:
            raise APIError(HTTPStatus.BAD_REQUEST, f"invalid targets: {e}") from None
        dropped = await gateway.cache.invalidate(model) if _versions(gateway, model) != before else 0
        return {"route": model, "targets": [vars(t) for t in route.targets], "cache_entries_dropped": dropped}

    @router.post("/routes/{model}/switch")
    async def switch(model: str, request: Request) -> dict:
        data = await body_of(request)
        group = data.get("group")
        if not isinstance(group, str) or not group:
            raise APIError(HTTPStatus.BAD_REQUEST, 'give the group to switch to: {"group": "green"}', param="group")
        if not any(b.config.group == group for b in gateway.registry):
            raise _not_found("group", group)
        try:
            _, left = gateway.rollout.switch_group(model, group)
        except KeyError:
            raise _not_found("route", model) from None
        dropped = await gateway.cache.invalidate(model)
        return {
            "route": model,
            "group": group,
            "draining": sorted(left),
            "in_flight_on_old": gateway.rollout.draining(gateway.registry, model, left),
            "cache_entries_dropped": dropped,
        }

    @router.get("/routes/{model}/drain")
    async def drain_state(model: str, request: Request, groups: str) -> dict:
        await body_of(request)
        left = set(groups.split(","))
        return {
            "route": model,
            "groups": sorted(left),
            "in_flight": gateway.rollout.draining(gateway.registry, model, left),
        }

    @router.post("/backends/{name}/{action}")
    async def backend_action(name: str, action: str, request: Request) -> dict:
        await body_of(request)
        backend = gateway.registry.get(name)
        if backend is None:
            raise _not_found("backend", name)
        if action not in ("drain", "undrain"):
            raise APIError(HTTPStatus.NOT_FOUND, f"unknown action {action!r}: drain or undrain")
        backend.drained = action == "drain"
        return backend.state()

    @router.post("/reload")
    async def reload(request: Request) -> dict:
        await body_of(request)
        if config_path is None:
            raise APIError(HTTPStatus.CONFLICT, "this router was not started from a config file")
        try:
            config = load_router_config(config_path)
        except (ValueError, FileNotFoundError) as e:
            raise APIError(HTTPStatus.BAD_REQUEST, f"the new config was refused, the old one stays: {e}") from None
        gateway.reload(config)
        return {"backends": [b.name for b in gateway.registry], "routes": sorted(gateway.rollout.routes)}

    @router.post("/cache/invalidate")
    async def invalidate(request: Request) -> dict:
        data = await body_of(request)
        route = data.get("route")
        if not isinstance(route, str):
            raise APIError(HTTPStatus.BAD_REQUEST, 'give the route whose entries to drop: {"route": NAME}')
        return {"route": route, "dropped": await gateway.cache.invalidate(route)}

    return router


def _versions(gateway: Gateway, model: str) -> set[str]:
    route = gateway.rollout.route(model)
    return {t.cache_version for t in route.targets} if route else set()
