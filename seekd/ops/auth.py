"""Who is calling: `Authorization: Bearer <key>` checked on every route but `/health`, in one ASGI
middleware, so a route added later is covered without anyone remembering to protect it. The web
page's static files (`/ui/...`) need no key: they hold no secrets, and the page sends the user's key
with every API call it makes. `/ready`
without any key answers its status alone (readiness probes carry no secrets); its details (engine
stats, queues) need a key like any other route.

Authentication is on as soon as any key exists (the key file holds a key, even a revoked one, or
`api_key` is set) and then fails closed. Route roles: `/admin/*` needs `admin`; `/metrics` needs
`admin` or `metrics` (one port, so Prometheus scrapes it with `bearer_token`); a `metrics` key
reaches nothing else. Without keys every caller is an anonymous admin — which is why the server
refuses to bind anything but loopback in that state (`check_bind_is_safe`).

The authenticated key is left in the request scope (`principal_of`); the tenant, the model
allow-list, per-key rate limits and the audit record all come from it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from seekd.errors import APIError
from seekd.ops.keys import ApiKey, KeyStore, hash_secret

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health"})
PUBLIC_PREFIX = "/ui"  # the web page's static files
PROBE_PATHS = frozenset({"/ready"})  # keyless calls pass with no principal: the route answers status only
ADMIN_PREFIX = "/admin"
METRICS_PATH = "/metrics"
STATIC_KEY_ID = "api-key"  # the id audit records show for the `--api-key` key
ANONYMOUS_ID = "anonymous"
DEFAULT_TENANT = "default"
WS_POLICY_VIOLATION = 1008  # close code for a refused WebSocket (none exist yet; a future one is covered)


@dataclass(frozen=True)
class Principal:
    key: ApiKey
    authenticated: bool  # False: no keys configured, loopback only; the tenant then comes from a header


ANONYMOUS = Principal(ApiKey(ANONYMOUS_ID, DEFAULT_TENANT, "admin"), authenticated=False)


def principal_of(scope: Scope) -> Principal | None:
    return scope.get("state", {}).get("principal")


def cache_salt_for(tenant: str, request_salt: str | None, isolate_tenants: bool) -> str | None:
    """The prefix-cache salt of a request. With isolation the tenant is always part of it, so a
    request's own `cache_salt` can only narrow its cache scope (never reach another tenant's blocks)."""
    if not isolate_tenants:
        return request_salt
    return hashlib.sha256(json.dumps([tenant, request_salt]).encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_is_safe(host: str, auth_enabled: bool) -> None:
    """Refuse to start an unauthenticated server that others could reach."""
    if auth_enabled:
        return
    if not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without API keys: anyone who can reach it could use the model. "
            "Create a key (`seekd keys create --tenant NAME`), set SEEKD_API_KEY, or bind 127.0.0.1."
        )
    logger.warning("no API keys configured: the server is UNAUTHENTICATED (listening on loopback %s only)", host)


def bearer_token(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class Authenticator:
    """Keys from the store plus the optional static `api_key`."""

    def __init__(self, store: KeyStore, static_key: str | None) -> None:
        self.store = store
        self._static_hash = hash_secret(static_key) if static_key else None
        self._keys_seen = False

    @property
    def enabled(self) -> bool:
        if self._static_hash is not None or self._keys_seen:
            return True
        self._keys_seen = self.store.has_keys()  # once on, stays on: never fail open
        return self._keys_seen

    def authenticate(self, token: str) -> ApiKey | None:
        if self._static_hash is not None and hmac.compare_digest(hash_secret(token), self._static_hash):
            return ApiKey(STATIC_KEY_ID, DEFAULT_TENANT, "admin")
        return self.store.authenticate(token)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path == PUBLIC_PREFIX or path.startswith(PUBLIC_PREFIX + "/")


def required_role_error(path: str, key: ApiKey) -> APIError | None:
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        if key.role != "admin":
            return _forbidden(f"{path} needs an admin key; key {key.id} has role {key.role!r}")
        return None
    if path == METRICS_PATH:
        if key.role not in ("admin", "metrics"):
            return _forbidden(f"/metrics needs a key with role admin or metrics; key {key.id} has role {key.role!r}")
        return None
    if key.role == "metrics":
        return _forbidden(f"key {key.id} has role 'metrics': it may read /metrics only")
    return None


def _forbidden(message: str) -> APIError:
    return APIError(HTTPStatus.FORBIDDEN, message, type="permission_error", code="insufficient_permissions")


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(
        HTTPStatus.UNAUTHORIZED, message, type="authentication_error", code=code, headers={"WWW-Authenticate": "Bearer"}
    )


class AuthMiddleware:
    """Sits outside the body limit, so an unauthenticated caller cannot make the server read a body."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, on_reject: Callable[[], None]) -> None:
        self.app = app
        self.authenticator = authenticator
        self.on_reject = on_reject  # counts the refusal (seekd:request_rejected_total{reason="auth"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        principal, error = self._check(scope)
        if error is not None and error.code == "missing_api_key" and scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if error is not None:
            self.on_reject()
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": error.message[:120]})
            else:
                await error.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> tuple[Principal | None, APIError | None]:
        if not self.authenticator.enabled:
            return ANONYMOUS, None
        token = bearer_token(Headers(scope=scope))
        if token is None:
            return None, _unauthorized(
                "missing API key: send the header 'Authorization: Bearer sk-seekd-...'", "missing_api_key"
            )
        key = self.authenticator.authenticate(token)
        if key is None:
            return None, _unauthorized("invalid or revoked API key", "invalid_api_key")
        principal = Principal(key, authenticated=True)
        scope.setdefault("state", {})["principal"] = principal  # the audit record names a refused key too
        return principal, required_role_error(scope["path"], key)
