"""Web search through a SearxNG-compatible endpoint (`GET {endpoint}/search?q=...&format=json`).

Off unless an endpoint is configured, and then only for the tenants the operator lists: a query
leaves the building only where a tenant may let it. Every outbound query is written to the audit
chain before it is sent, and is not sent if that write fails (the tenant, key, endpoint, a hash of
the query and, where content is stored, the sealed query); a second record lists the pages fetched.
Result pages are fetched, cleaned of markup, cut into chunks like documents, and the chunk closest to
the question stands for each page.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus

import httpx
import numpy as np

from seekd.errors import APIError
from seekd.kb.chunking import chunk_sections
from seekd.kb.embedder import Embedder
from seekd.kb.parsers import parse_html
from seekd.kb.rag import Passage
from seekd.ops.audit import AuditLog

logger = logging.getLogger(__name__)

MAX_PAGE_BYTES = 2 * 2**20
MAX_CHUNKS_PER_PAGE = 32


@dataclass(frozen=True)
class WebSearchPolicy:
    endpoint: str | None
    tenants: frozenset[str]  # "*" = every tenant

    @classmethod
    def parse(cls, endpoint: str | None, tenants: str) -> WebSearchPolicy:
        return cls(endpoint or None, frozenset(t.strip() for t in tenants.split(",") if t.strip()))

    def allows(self, tenant: str) -> bool:
        return self.endpoint is not None and ("*" in self.tenants or tenant in self.tenants)


class WebSearch:
    def __init__(
        self, policy: WebSearchPolicy, embedder: Embedder, audit: AuditLog | None, max_results: int, timeout_s: float
    ) -> None:
        self.policy = policy
        self.embedder = embedder
        self.audit = audit
        self.max_results = max_results
        self.timeout_s = timeout_s

    def check(self, tenant: str) -> None:
        if self.policy.endpoint is None:
            raise APIError(
                HTTPStatus.FORBIDDEN,
                "web search is off on this server (no web_search_endpoint)",
                type="permission_error",
                param="web_search",
                code="web_search_disabled",
            )
        if not self.policy.allows(tenant):
            raise APIError(
                HTTPStatus.FORBIDDEN,
                f"tenant {tenant!r} may not use web search",
                type="permission_error",
                param="web_search",
                code="web_search_forbidden",
            )

    async def search(self, query: str, tenant: str, key_id: str | None, request_id: str | None) -> list[Passage]:
        self.check(tenant)
        assert self.policy.endpoint is not None
        record = {
            "time": round(time.time(), 3),
            "event": "web_search",
            "request_id": request_id,
            "tenant": tenant,
            "key_id": key_id,
            "endpoint": self.policy.endpoint,
            "query_sha256": hashlib.sha256(query.encode()).hexdigest(),
        }
        if self.audit is not None:  # fails closed: a query that cannot be recorded is not sent
            try:
                self.audit.append(record, {"query": query})
            except OSError as e:
                raise APIError(
                    HTTPStatus.SERVICE_UNAVAILABLE, "web search unavailable: cannot write the audit log", code="audit"
                ) from e
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=True) as client:
            try:
                response = await client.get(
                    self.policy.endpoint.rstrip("/") + "/search", params={"q": query, "format": "json"}
                )
                response.raise_for_status()
                results = [r for r in response.json().get("results", []) if isinstance(r.get("url"), str)]
            except (httpx.HTTPError, ValueError) as e:
                self._audit({**record, "event": "web_search_failed", "error": str(e)[:200]}, None)
                raise APIError(HTTPStatus.BAD_GATEWAY, f"web search failed: {e}", code="web_search_failed") from e
            results = results[: self.max_results]
            pages = await asyncio.gather(*(self._fetch(client, r["url"]) for r in results))
        self._audit({**record, "event": "web_search_results", "urls": [r["url"] for r in results]}, None)
        texts = [(r, page or str(r.get("content") or "")) for r, page in zip(results, pages)]
        return await asyncio.to_thread(self._best_passages, query, texts)

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> str | None:
        """The page's text, or None (unreachable, too large, not HTML or text): its snippet stands in."""
        try:
            response = await client.get(url)
            response.raise_for_status()
        except httpx.HTTPError as e:
            logger.info("web search: cannot fetch %s: %s", url, e)
            return None
        if len(response.content) > MAX_PAGE_BYTES:
            return None
        kind = response.headers.get("content-type", "")
        if "html" in kind:
            return "\n".join(s.text for s in parse_html(response.text))
        return response.text if kind.startswith("text/") else None

    def _best_passages(self, query: str, texts: list[tuple[dict, str]]) -> list[Passage]:
        from seekd.kb.parsers import Section

        passages = []
        query_vector = self.embedder.embed([query])[0]
        for result, text in texts:
            chunks = [c.text for c in chunk_sections([Section("", text)])][:MAX_CHUNKS_PER_PAGE]
            if not chunks:
                continue
            scores = self.embedder.embed(chunks) @ query_vector
            best = int(np.argmax(scores))
            title = str(result.get("title") or result["url"])
            passages.append(Passage("web", chunks[best], round(float(scores[best]), 6), title, best, url=result["url"]))
        return passages

    def _audit(self, fields: dict, content: dict | None) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(fields, content)
        except OSError as e:
            logger.error("cannot write the audit log %s: %s", self.audit.path, e)
