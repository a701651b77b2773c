"""The packaged embedding model, loaded once for the knowledge-base tests."""

from __future__ import annotations

import pytest

from seekd.kb.embedder import Embedder, shared_embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return shared_embedder()
