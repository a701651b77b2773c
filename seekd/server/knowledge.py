"""The server's side of knowledge bases: one `KnowledgeService` per server (embedding batcher, the
tenants' knowledge bases, web search), and the step of a chat request that retrieves passages and
puts them into its messages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.requests import Request

from seekd.config import SeekdConfig
from seekd.errors import APIError
from seekd.kb.batching import EmbeddingBatcher
from seekd.kb.embedder import Embedder, shared_embedder
from seekd.kb.rag import Citation, Passage, build_context, last_user_text, with_context
from seekd.kb.store import KnowledgeBases
from seekd.kb.websearch import WebSearch, WebSearchPolicy
from seekd.ops.audit import AuditLog
from seekd.ops.auth import principal_of
from seekd.server.admission import resolve_tenant
from seekd.server.generation import ServingContext
from seekd.server.protocol import ChatCompletionRequest

MAX_KNOWLEDGE_BASES = 16  # per chat request


class KnowledgeService:
    """Loads the embedding model on first use, so a server that never embeds never pays for it."""

    def __init__(self, config: SeekdConfig, audit: AuditLog | None) -> None:
        self.config = config.knowledge
        self.data_dir = config.storage.path
        self._audit = audit
        self._embedder: Embedder | None = None
        self._batcher: EmbeddingBatcher | None = None
        self._bases: KnowledgeBases | None = None
        self._web: WebSearch | None = None
        self.policy = WebSearchPolicy.parse(self.config.web_search_endpoint, self.config.web_search_tenants)

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(shared_embedder)
        return self._embedder

    async def batcher(self) -> EmbeddingBatcher:
        if self._batcher is None:
            self._batcher = EmbeddingBatcher(await self.embedder(), self.config.embedding_max_batch)
        return self._batcher

    async def bases(self) -> KnowledgeBases:
        if self._bases is None:
            self._bases = KnowledgeBases(self.data_dir, await self.embedder())
        return self._bases

    async def web(self) -> WebSearch:
        if self._web is None:
            self._web = WebSearch(
                self.policy,
                await self.embedder(),
                self._audit,
                self.config.web_search_results,
                self.config.web_search_timeout_s,
            )
        return self._web

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()


def knowledge_service(request: Request) -> KnowledgeService:
    return request.app.state.knowledge


@dataclass
class Retrieval:
    messages: list[dict[str, Any]]
    citations: list[Citation] = field(default_factory=list)


async def retrieve_for_chat(
    ctx: ServingContext, req: ChatCompletionRequest, messages: list[dict[str, Any]], request: Request
) -> Retrieval:
    """The messages with retrieved passages (none: unchanged), for the request's knowledge bases
    (or its tenant's default ones) and, where asked and allowed, the web."""
    service = knowledge_service(request)
    tenant = resolve_tenant(request)
    names = req.knowledge_bases if req.knowledge_bases is not None else service.config.defaults().get(tenant, [])
    if len(names) > MAX_KNOWLEDGE_BASES:
        raise APIError(
            HTTPStatus.BAD_REQUEST, f"at most {MAX_KNOWLEDGE_BASES} knowledge bases", param="knowledge_bases"
        )
    if not names and not req.web_search:
        return Retrieval(messages)
    query = last_user_text(messages)
    if not query.strip():
        return Retrieval(messages)
    passages: list[Passage] = []
    if req.web_search:  # the policy first: a forbidden request does no other work
        (await service.web()).check(tenant)
    if names:
        bases = await service.bases()
        kbs = [await asyncio.to_thread(bases.get, tenant, name) for name in dict.fromkeys(names)]
        vector = (await (await service.batcher()).embed([query]))[0]
        k = service.config.kb_top_k
        for kb in kbs:
            hits = await asyncio.to_thread(kb.search, query, k, "hybrid", vector)
            passages += [Passage("knowledge_base", h.text, h.score, h.document, h.chunk, kb.name) for h in hits]
        passages = sorted(passages, key=lambda p: p.score, reverse=True)[:k]
    if req.web_search:
        principal = principal_of(request.scope)
        key_id = principal.key.id if principal is not None else None
        request_id = getattr(request.state, "x_request_id", None)
        passages += await (await service.web()).search(query, tenant, key_id, request_id)
    budget = service.config.kb_context_tokens
    context, citations = build_context(passages, budget, lambda text: len(ctx.tokenizer.encode(text, False)))
    return Retrieval(with_context(messages, context), citations)
