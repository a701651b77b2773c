"""`/admin/keys`: list, create, re-limit and revoke API keys over HTTP (the auth middleware admits only
admin keys).

A created key is in the response once and nowhere else; the server keeps only its hash.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from seekd.errors import APIError
from seekd.ops.keys import KeyStore
from seekd.server.errors import invalid_request
from seekd.server.openapi import KEYED, WITH_BODY, errors

router = APIRouter(prefix="/admin")


class KeyInfo(BaseModel):
    id: str
    name: str
    tenant: str
    role: str
    models: list[str]
    rpm: int
    tpm: int
    created: float
    revoked: float | None = None


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=64)
    role: Literal["user", "admin", "metrics"] = "user"
    models: list[str] = Field(default_factory=list, max_length=64)
    rpm: int = Field(0, ge=0, le=10**9)
    tpm: int = Field(0, ge=0, le=10**12)
    name: str = Field("", max_length=128)


class KeyLimitsUpdate(BaseModel):
    """Fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] | None = Field(None, max_length=64)
    rpm: int | None = Field(None, ge=0, le=10**9)
    tpm: int | None = Field(None, ge=0, le=10**12)


class CreatedKey(KeyInfo):
    key: str  # shown once


def _store(request: Request) -> KeyStore:
    return request.app.state.key_store


@router.get("/keys", response_model=KeyList, responses=errors(*KEYED))
async def list_keys(request: Request) -> KeyList:
    return KeyList(data=[KeyInfo(**k.public()) for k in _store(request).list_keys()])


@router.post("/keys", response_model=CreatedKey, responses=errors(*WITH_BODY, *KEYED))
async def create_key(body: CreateKeyRequest, request: Request) -> CreatedKey:
    try:
        key, record = _store(request).create(body.tenant, body.role, tuple(body.models), body.rpm, body.tpm, body.name)
    except ValueError as e:
        raise invalid_request(str(e)) from e
    return CreatedKey(key=key, **record.public())


@router.patch("/keys/{key_id}", response_model=KeyInfo, responses=errors(*WITH_BODY, *KEYED, HTTPStatus.NOT_FOUND))
async def update_key_limits(key_id: str, body: KeyLimitsUpdate, request: Request) -> KeyInfo:
    store = _store(request)
    models = None if body.models is None else tuple(body.models)
    if not store.update_limits(key_id, body.rpm, body.tpm, models):
        raise _no_active_key(key_id)
    return _key_info(store, key_id)


@router.delete("/keys/{key_id}", response_model=KeyInfo, responses=errors(*KEYED, HTTPStatus.NOT_FOUND))
async def revoke_key(key_id: str, request: Request) -> KeyInfo:
    store = _store(request)
    if not store.revoke(key_id):
        raise _no_active_key(key_id)
    return _key_info(store, key_id)


def _key_info(store: KeyStore, key_id: str) -> KeyInfo:
    (record,) = [k for k in store.list_keys() if k.id == key_id]
    return KeyInfo(**record.public())


def _no_active_key(key_id: str) -> APIError:
    return APIError(HTTPStatus.NOT_FOUND, f"no active API key with id {key_id!r}", code="key_not_found")
