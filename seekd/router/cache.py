"""Response cache in two levels: an LRU in the router's memory (L1) and Redis (L2, shared by every
router and surviving their restarts).

Only deterministic requests are cached — temperature 0 or a seed — unless a request opts in with
`X-Seekd-Cache: allow`: a cached answer to a sampled request would silently remove its randomness.
The key holds the route, the target's version (a new model version, or a blue-green switch, misses
everything cached before; `invalidate` also deletes it), a digest of the tenant (tenants never see
each other's entries) and a digest of the normalized request (keys sorted, `user` left out).
A streamed answer is stored as its SSE bytes and replayed as SSE; a whole answer as its JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from seekd.router.config import CacheConfig

logger = logging.getLogger(__name__)

KEY_PREFIX = "seekd:router:cache:"
OPT_IN_HEADER = "x-seekd-cache"
IGNORED_FIELDS = ("user",)


@dataclass(frozen=True)
class CachedResponse:
    stream: bool
    body: bytes

    def encode(self) -> bytes:
        return (b"sse\n" if self.stream else b"json\n") + self.body

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse:
        kind, _, body = data.partition(b"\n")
        return cls(kind == b"sse", body)

    def events(self) -> list[bytes]:
        """The SSE body split back into its events, each with its blank-line terminator."""
        return [event + b"\n\n" for event in self.body.split(b"\n\n") if event.strip()]


def cacheable(body: dict, headers: dict[str, str]) -> bool:
    if headers.get(OPT_IN_HEADER, "").strip().lower() == "allow":
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(tenant: str, route: str, version: str, body: dict) -> str:
    normalized = json.dumps(
        {k: v for k, v in body.items() if k not in IGNORED_FIELDS}, sort_keys=True, separators=(",", ":")
    )
    return f"{KEY_PREFIX}{_escape(route)}:{_escape(version)}:{_digest(tenant)[:32]}:{_digest(normalized)}"


def _escape(part: str) -> str:
    """Route and version names without the characters Redis' SCAN patterns and our ':' split give meaning."""
    return "".join(c if c.isalnum() or c in "-_.@" else f"%{ord(c):02x}" for c in part)


class ResponseCache:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.l1: OrderedDict[str, tuple[float, CachedResponse]] = OrderedDict()
        self.redis = None

    async def start(self) -> None:
        if self.config.enabled and self.config.redis_url:
            import redis.asyncio as redis

            self.redis = redis.from_url(self.config.redis_url)
            await self.redis.ping()  # a wrong URL fails the start, not every request

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def get(self, key: str) -> tuple[str, CachedResponse] | None:
        """(level, entry) of a hit: "l1" or "redis" (a Redis hit is copied into L1)."""
        now = time.monotonic()
        if (item := self.l1.get(key)) is not None:
            expires, entry = item
            if expires > now:
                self.l1.move_to_end(key)
                return "l1", entry
            del self.l1[key]
        if self.redis is not None:
            try:
                data = await self.redis.get(key)
            except Exception as e:  # Redis down: the request goes to a backend instead
                logger.warning("redis cache read failed: %s", e)
                return None
            if data is not None:
                entry = CachedResponse.decode(data)
                self._put_l1(key, entry)
                return "redis", entry
        return None

    async def put(self, key: str, entry: CachedResponse) -> None:
        if len(entry.body) > self.config.max_entry_bytes:
            return
        self._put_l1(key, entry)
        if self.redis is not None:
            try:
                await self.redis.set(key, entry.encode(), px=int(self.config.ttl_s * 1000))
            except Exception as e:
                logger.warning("redis cache write failed: %s", e)

    def _put_l1(self, key: str, entry: CachedResponse) -> None:
        self.l1[key] = (time.monotonic() + self.config.ttl_s, entry)
        self.l1.move_to_end(key)
        while len(self.l1) > self.config.l1_entries:
            self.l1.popitem(last=False)

    async def invalidate(self, route: str) -> int:
        """Forget every entry of a route, all versions and tenants; returns how many were dropped."""
        prefix = f"{KEY_PREFIX}{_escape(route)}:"
        dropped = [k for k in self.l1 if k.startswith(prefix)]
        for key in dropped:
            del self.l1[key]
        count = len(dropped)
        if self.redis is not None:
            keys = [k async for k in self.redis.scan_iter(match=prefix + "*", count=500)]
            if keys:
                count += await self.redis.delete(*keys)
        return count
