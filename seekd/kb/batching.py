"""Embedding requests from many callers, batched onto one worker thread: whatever arrived while the
model was busy goes into its next call, so concurrent small requests share one forward pass and
the event loop never runs the model itself."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from seekd.kb.embedder import Embedder

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: list[str]
    done: asyncio.Future[np.ndarray]


class EmbeddingBatcher:
    def __init__(self, embedder: Embedder, max_batch: int) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, texts: list[str]) -> np.ndarray:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.create_task(self._run(), name="seekd-embedding-batcher")
        assert self._wake is not None
        done: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(texts, done))
        self._wake.set()
        return await done

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, count = [], 0
                while self._queue and (not batch or count + len(self._queue[0].texts) <= self.max_batch):
                    item = self._queue.pop(0)
                    batch.append(item)
                    count += len(item.texts)
                await self._serve(batch)

    async def _serve(self, batch: list[_Pending]) -> None:
        texts = [t for item in batch for t in item.texts]
        try:
            vectors = await asyncio.to_thread(self.embedder.embed, texts)
        except Exception as e:
            logger.exception("embedding failed")
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(e)
            return
        start = 0
        for item in batch:
            if not item.done.done():  # its caller may have left
                item.done.set_result(vectors[start : start + len(item.texts)])
            start += len(item.texts)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
