"""`/v1/embeddings` (OpenAI's shape, served by the packaged embedding model) and
`/v1/knowledge_bases` (create, list, delete; add, list and remove documents; search), each acting on
the caller's own tenant only: the tenant comes from the API key, never from the request body."""

from __future__ import annotations

import asyncio
import base64
import binascii
from http import HTTPStatus
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from seekd.errors import APIError
from seekd.kb.embedder import MODEL_NAME
from seekd.kb.store import MAX_DOCUMENT_NAME, KnowledgeBase
from seekd.ops.auth import principal_of
from seekd.server.admission import resolve_tenant
from seekd.server.errors import invalid_request
from seekd.server.knowledge import knowledge_service
from seekd.server.openapi import KEYED, WITH_BODY, errors
from seekd.server.protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage

router = APIRouter()
KB_ERRORS = (*KEYED, HTTPStatus.NOT_FOUND)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=errors(*WITH_BODY, *KB_ERRORS))
async def create_embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    if body.model is not None and body.model != MODEL_NAME:
        raise APIError(
            HTTPStatus.NOT_FOUND,
            f"The embedding model `{body.model}` does not exist; this server embeds with `{MODEL_NAME}`.",
            param="model",
            code="model_not_found",
        )
    principal = principal_of(request.scope)
    if principal is not None and not principal.key.allows_model(MODEL_NAME):
        raise APIError(
            HTTPStatus.FORBIDDEN,
            f"API key {principal.key.id} may not use the model `{MODEL_NAME}`",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )
    service = knowledge_service(request)
    embedder = await service.embedder()
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise invalid_request(f"`{MODEL_NAME}` makes {embedder.dimensions}-dimensional vectors", param="dimensions")
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors = await (await service.batcher()).embed(texts)
    tokens = await asyncio.to_thread(lambda: sum(embedder.count_tokens(t) for t in texts))
    data = [
        Embedding(
            index=i,
            embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else v.tolist(),
        )
        for i, v in enumerate(vectors)
    ]
    return EmbeddingResponse(
        data=data, model=MODEL_NAME, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


# -- knowledge bases -----------------------------------------------------------------------------


class KnowledgeBaseInfo(BaseModel):
    object: Literal["knowledge_base"] = "knowledge_base"
    name: str
    documents: int
    chunks: int


class KnowledgeBaseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KnowledgeBaseInfo]


class CreateKnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)


class DocumentInfo(BaseModel):
    name: str
    sha256: str
    size: int
    chunks: int
    updated: float


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentInfo]


class AddDocument(BaseModel):
    """`text` for txt/md/html given as text; `content_base64` for the bytes of any supported file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_DOCUMENT_NAME)
    text: str | None = None
    content_base64: str | None = None


class IngestInfo(BaseModel):
    document: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(5, ge=1, le=100)
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"


class SearchHit(BaseModel):
    document: str
    chunk: int
    heading: str
    text: str
    score: float


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[SearchHit]


async def _kb(request: Request, name: str) -> KnowledgeBase:
    bases = await knowledge_service(request).bases()
    return await asyncio.to_thread(bases.get, resolve_tenant(request), name)


def _info(kb: KnowledgeBase) -> KnowledgeBaseInfo:
    return KnowledgeBaseInfo(name=kb.name, documents=len(kb.documents()), chunks=kb.num_chunks)


@router.get("/v1/knowledge_bases", response_model=KnowledgeBaseList, responses=errors(*KEYED, HTTPStatus.BAD_REQUEST))
async def list_knowledge_bases(request: Request) -> KnowledgeBaseList:
    bases = await knowledge_service(request).bases()
    tenant = resolve_tenant(request)
    kbs = [await asyncio.to_thread(bases.get, tenant, name) for name in bases.list(tenant)]
    return KnowledgeBaseList(data=[_info(kb) for kb in kbs])


@router.post(
    "/v1/knowledge_bases", response_model=KnowledgeBaseInfo, responses=errors(*WITH_BODY, *KEYED, HTTPStatus.CONFLICT)
)
async def create_knowledge_base(body: CreateKnowledgeBase, request: Request) -> KnowledgeBaseInfo:
    bases = await knowledge_service(request).bases()
    kb = await asyncio.to_thread(bases.create, resolve_tenant(request), body.name)
    return _info(kb)


@router.delete(
    "/v1/knowledge_bases/{name}", response_model=KnowledgeBaseInfo, responses=errors(*KB_ERRORS, HTTPStatus.BAD_REQUEST)
)
async def delete_knowledge_base(name: str, request: Request) -> KnowledgeBaseInfo:
    kb = await _kb(request, name)
    info = _info(kb)
    bases = await knowledge_service(request).bases()
    await asyncio.to_thread(bases.delete, resolve_tenant(request), name)
    return info


@router.get(
    "/v1/knowledge_bases/{name}/documents",
    response_model=DocumentList,
    responses=errors(*KB_ERRORS, HTTPStatus.BAD_REQUEST),
)
async def list_documents(name: str, request: Request) -> DocumentList:
    kb = await _kb(request, name)
    return DocumentList(data=[DocumentInfo(**d) for d in kb.documents()])


@router.post(
    "/v1/knowledge_bases/{name}/documents",
    response_model=IngestInfo,
    responses=errors(*WITH_BODY, *KB_ERRORS, HTTPStatus.UNSUPPORTED_MEDIA_TYPE),
)
async def add_document(name: str, body: AddDocument, request: Request) -> IngestInfo:
    """Adds or replaces a document; the same bytes again change nothing."""
    if (body.text is None) == (body.content_base64 is None):
        raise invalid_request("give exactly one of text and content_base64", param="text")
    if body.text is not None:
        data = body.text.encode()
    else:
        try:
            data = base64.b64decode(body.content_base64 or "", validate=True)
        except (binascii.Error, ValueError) as e:
            raise invalid_request(f"content_base64 is not base64: {e}", param="content_base64") from e
    kb = await _kb(request, name)
    result = await asyncio.to_thread(kb.ingest, body.name, data, knowledge_service(request).config.kb_chunk_chars)
    return IngestInfo(document=result.document, status=result.status, chunks=result.chunks)


@router.delete(
    "/v1/knowledge_bases/{name}/documents/{document:path}",
    response_model=DocumentList,
    responses=errors(*KB_ERRORS, HTTPStatus.BAD_REQUEST),
)
async def remove_document(name: str, document: str, request: Request) -> DocumentList:
    """Removes the document and its passages from both indexes; answers the documents left."""
    kb = await _kb(request, name)
    if not await asyncio.to_thread(kb.remove, document):
        raise APIError(HTTPStatus.NOT_FOUND, f"no document {document!r} in {name!r}", code="document_not_found")
    return DocumentList(data=[DocumentInfo(**d) for d in kb.documents()])


@router.post(
    "/v1/knowledge_bases/{name}/search", response_model=SearchResponse, responses=errors(*WITH_BODY, *KB_ERRORS)
)
async def search(name: str, body: SearchRequest, request: Request) -> SearchResponse:
    kb = await _kb(request, name)
    vector = None
    if body.mode != "bm25":
        vector = (await (await knowledge_service(request).batcher()).embed([body.query]))[0]
    hits = await asyncio.to_thread(kb.search, body.query, body.k, body.mode, vector)
    return SearchResponse(
        data=[
            SearchHit(document=h.document, chunk=h.chunk, heading=h.heading, text=h.text, score=h.score) for h in hits
        ]
    )
