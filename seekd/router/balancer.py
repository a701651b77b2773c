"""Choosing a backend: prefix affinity by consistent hashing, yielding to least-outstanding under load.

Requests whose prompts start alike go to the same replica, so its prefix cache hits: the prompt's
first characters are hashed onto a ring of `virtual_nodes` points per backend, and the first point
clockwise names the owner. Adding or removing a backend moves only the keys next to its points.
Affinity must not overload a replica with one popular prefix, so the owner is taken only while its
load stays within `load_factor` times the mean ("consistent hashing with bounded loads", Mirrokni et
al. 2018); past that, and for requests without a prompt, the least-loaded backend wins (in-flight
requests divided by weight; ties broken at random so equal replicas share work).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from functools import lru_cache

from seekd.router.backends import Backend
from seekd.router.config import BalanceConfig


def stable_hash(text: str) -> int:
    """64 bits of SHA-256: the same on every router process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@lru_cache(maxsize=64)
def _ring(names: tuple[str, ...], virtual_nodes: int) -> tuple[list[int], list[str]]:
    points = sorted((stable_hash(f"{name}#{i}"), name) for name in names for i in range(virtual_nodes))
    return [p for p, _ in points], [n for _, n in points]


class Balancer:
    def __init__(self, config: BalanceConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()

    def affinity_owner(self, candidates: list[Backend], key: str) -> Backend:
        by_name = {b.name: b for b in candidates}
        hashes, names = _ring(tuple(sorted(by_name)), self.config.virtual_nodes)
        index = bisect.bisect(hashes, stable_hash(key)) % len(hashes)
        return by_name[names[index]]

    def within_bound(self, backend: Backend, candidates: list[Backend]) -> bool:
        total = sum(b.outstanding for b in candidates)
        weight = sum(b.config.weight for b in candidates)
        cap = math.ceil(self.config.load_factor * (total + 1) * backend.config.weight / weight)
        return backend.outstanding + 1 <= cap and not backend.saturated()

    def least_loaded(self, candidates: list[Backend]) -> Backend:
        return min(candidates, key=lambda b: (b.saturated(), b.load(), self.rng.random()))

    def pick(self, candidates: list[Backend], affinity_key: str | None) -> Backend | None:
        if not candidates:
            return None
        if self.config.prefix_affinity and affinity_key:
            owner = self.affinity_owner(candidates, affinity_key)
            if self.within_bound(owner, candidates):
                return owner
        return self.least_loaded(candidates)


def affinity_key(body: dict, prefix_chars: int) -> str | None:
    """The prompt's opening characters: the chat messages' text in order, or the completion prompt."""
    if isinstance(messages := body.get("messages"), list):
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role', '') if isinstance(message, dict) else ''}:{content or ''}\n")
        text = "".join(parts)
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else str(prompt) if prompt is not None else ""
    return text[:prefix_chars] or None
