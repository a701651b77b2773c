"""Who is calling: the tenant of a client request, and whether a caller may use the admin API.

With keys configured (`keys:` in router.yaml, each read from an environment variable) a request must
carry one of them and takes its tenant; without, the router is open (loopback by default) and the
tenant is a digest of whatever bearer token came along, so two callers' cache entries still differ.
The admin API needs its own key (`admin_key_env`); without one set it is off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from http import HTTPStatus

from seekd.router.config import RouterConfig
from seekd.router.errors import APIError

ANONYMOUS = "anonymous"


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class ClientAuth:
    def __init__(self, config: RouterConfig) -> None:
        self.keys: list[tuple[bytes, str]] = []
        for key in config.keys:
            value = os.environ.get(key.key_env)
            if not value:
                raise ValueError(f"router key of tenant {key.tenant}: environment variable {key.key_env} is not set")
            self.keys.append((value.encode(), key.tenant))
        admin = os.environ.get(config.admin_key_env, "")
        self.admin_key = admin.encode() if admin else None

    def tenant(self, headers: dict[str, str]) -> str:
        token = bearer(headers)
        if not self.keys:
            return f"key-{hashlib.sha256(token.encode()).hexdigest()[:16]}" if token else ANONYMOUS
        if token is not None:
            for key, tenant in self.keys:  # every key compared in constant time
                if hmac.compare_digest(key, token.encode()):
                    return tenant
        raise APIError(
            HTTPStatus.UNAUTHORIZED,
            "missing or unknown API key: send Authorization: Bearer <key> with a key this router knows",
            type="authentication_error",
            code="invalid_api_key",
        )

    def check_admin(self, headers: dict[str, str]) -> None:
        if self.admin_key is None:
            raise APIError(
                HTTPStatus.FORBIDDEN,
                "the admin API is off: start the router with its admin key in the variable named by admin_key_env",
                type="permission_error",
                code="admin_api_off",
            )
        token = bearer(headers)
        if token is None or not hmac.compare_digest(self.admin_key, token.encode()):
            raise APIError(
                HTTPStatus.UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <admin key>",
                type="authentication_error",
                code="invalid_api_key",
            )
