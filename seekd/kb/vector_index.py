"""Approximate nearest neighbours over chunk vectors: `usearch` (HNSW, Unum; one 2 MB wheel, no
server, add and remove by integer key, saved to one file).

Evaluated against: faiss-cpu (a 30 MB wheel, removal from HNSW indexes is not supported, so every
re-ingest would rebuild), sqlite-vec (pre-1.0, brute force only: linear in the corpus at 100k
chunks) and LanceDB (pulls in pyarrow and a columnar store: far more than one tenant's knowledge
base needs). Vectors are unit length, so cosine distance ranks by the embedder's similarity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from usearch.index import Index


class VectorIndex:
    def __init__(self, dimensions: int, path: Path | None = None, load: bool = True) -> None:
        self.dimensions = dimensions
        self.path = path
        self._index = Index(ndim=dimensions, metric="cos", dtype="f32")
        if load and path is not None and path.exists():
            self._index.load(str(path))

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: list[int], vectors: np.ndarray) -> None:
        if keys:
            self._index.add(np.asarray(keys, dtype=np.uint64), vectors)

    def remove(self, keys: list[int]) -> None:
        if keys:
            self._index.remove(np.asarray(keys, dtype=np.uint64))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Best `k` (key, cosine similarity), highest first."""
        if not len(self._index):
            return []
        found = self._index.search(vector, min(k, len(self._index)))
        return [(int(key), 1.0 - float(dist)) for key, dist in zip(found.keys, found.distances)]

    def save(self) -> None:
        if self.path is not None:
            self._index.save(str(self.path))
