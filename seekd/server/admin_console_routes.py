"""`/admin/tenants` and `/admin/audit`: what the admin console shows beside the keys.

A tenant is not stored on its own: it exists while keys name it, so creating a key for a new
tenant creates the tenant and revoking all of its keys (`DELETE /admin/tenants/{tenant}`) locks it
out. Its limits are the server's tenant limits (config) plus each key's own.
The audit view verifies the whole chain on every call: the check is the point of showing it.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from seekd.errors import APIError
from seekd.ops.audit import AuditLog, verify
from seekd.ops.keys import KeyStore
from seekd.server.admission import AdmissionController
from seekd.server.openapi import KEYED, errors

router = APIRouter(prefix="/admin")

MAX_AUDIT_RECORDS = 500


class TenantInfo(BaseModel):
    tenant: str
    keys: int
    active_keys: int
    running: int
    queued: int
    weight: float


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    rate_limit_requests_per_min: int  # every tenant's; 0 = none
    rate_limit_tokens_per_min: int
    data: list[TenantInfo]


class RevokedTenant(BaseModel):
    tenant: str
    revoked_keys: list[str]


class AuditView(BaseModel):
    enabled: bool
    path: str | None = None
    verified: bool = False
    num_records: int = 0
    head_hash: str | None = None
    bad_line: int | None = None
    reason: str = ""
    data: list[dict[str, Any]] = []  # newest first, sealed content left out


@router.get("/tenants", response_model=TenantList, responses=errors(*KEYED))
async def list_tenants(request: Request) -> TenantList:
    admission: AdmissionController = request.app.state.admission
    weights = admission.config.weights()
    keys = request.app.state.key_store.list_keys()
    names = sorted({k.tenant for k in keys} | set(admission.running_by_tenant) | set(admission.queue.by_tenant))
    data = [
        TenantInfo(
            tenant=name,
            keys=sum(k.tenant == name for k in keys),
            active_keys=sum(k.tenant == name and k.revoked is None for k in keys),
            running=admission.running_by_tenant.get(name, 0),
            queued=admission.queue.by_tenant.get(name, 0),
            weight=weights.get(name, 1.0),
        )
        for name in names
    ]
    return TenantList(
        rate_limit_requests_per_min=admission.config.rate_limit_requests_per_min,
        rate_limit_tokens_per_min=admission.config.rate_limit_tokens_per_min,
        data=data,
    )


@router.delete("/tenants/{tenant:path}", response_model=RevokedTenant, responses=errors(*KEYED, HTTPStatus.NOT_FOUND))
async def revoke_tenant(tenant: str, request: Request) -> RevokedTenant:
    store: KeyStore = request.app.state.key_store
    active = [k.id for k in store.list_keys() if k.tenant == tenant and k.revoked is None]
    if not active:
        raise APIError(HTTPStatus.NOT_FOUND, f"tenant {tenant!r} has no active API keys", code="tenant_not_found")
    return RevokedTenant(tenant=tenant, revoked_keys=[key_id for key_id in active if store.revoke(key_id)])


@router.get("/audit", response_model=AuditView, responses=errors(HTTPStatus.BAD_REQUEST, *KEYED))
async def audit_view(request: Request, limit: int = Query(100, ge=1, le=MAX_AUDIT_RECORDS)) -> AuditView:
    log: AuditLog | None = request.app.state.audit
    if log is None:
        return AuditView(enabled=False)
    if not log.path.exists():
        return AuditView(enabled=True, path=str(log.path), verified=True)
    return await asyncio.to_thread(_read_audit, log.path, limit)


def _read_audit(path: Path, limit: int) -> AuditView:
    result = verify(path)
    with open(path, "rb") as f:
        tail = deque(f, maxlen=limit)
    return AuditView(
        enabled=True,
        path=str(path),
        verified=result.ok,
        num_records=result.num_records,
        head_hash=result.head_hash,
        bad_line=result.bad_line,
        reason=result.reason,
        data=[_shown(line) for line in reversed(tail)],
    )


def _shown(line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        return {"unreadable": line[:200].decode(errors="replace")}
    if not isinstance(record, dict):
        return {"unreadable": str(record)[:200]}
    if "content" in record:
        record["content"] = "sealed"
    return record
