"""One knowledge base on disk, and the per-tenant set of them.

`<data_dir>/kb/<sha256(tenant)>/<name>/` holds `kb.db` (SQLite: documents and chunks with their
BM25 terms and vectors, the source of truth) and `vectors.usearch` (the HNSW index, rebuilt from the
database if it is missing or stale). A tenant's directory is named by a hash of the tenant, so no
tenant name can reach another's files, and every lookup goes through the caller's tenant: there is
no call that takes a path or another tenant's name.

Re-ingesting a document whose bytes are unchanged (same SHA-256) does nothing; a changed one has its
chunks replaced; a removed one leaves both indexes and the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from seekd.errors import APIError
from seekd.kb.bm25 import BM25Index, tokenize
from seekd.kb.chunking import DEFAULT_MAX_CHARS, chunk_sections
from seekd.kb.embedder import Embedder
from seekd.kb.fusion import reciprocal_rank_fusion
from seekd.kb.parsers import parse_document
from seekd.kb.vector_index import VectorIndex

logger = logging.getLogger(__name__)

KB_DIR = "kb"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_DOCUMENT_NAME = 512
EMBED_BATCH = 64
CANDIDATES = 50  # per retriever, before fusion
# In hybrid retrieval BM25 votes only for chunks matching terms that carry this share of the query's
# IDF weight. A question in one language over a document in another shares only generic words with
# the corpus (员工, 需要); without the floor those one-word matches, present in both candidate lists,
# outrank the right passage that only the vector half found. 0.3 was the smallest floor that removed
# this on the test corpus (tests/kb/corpus.py: hybrid recall@5 0.92 -> 0.96); BM25-only search keeps
# every match.
HYBRID_BM25_COVERAGE = 0.3
Mode = Literal["hybrid", "vector", "bm25"]
_DOC_FIELDS = ("name", "sha256", "size", "chunks", "updated")
MODES: tuple[str, ...] = ("hybrid", "vector", "bm25")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS documents (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL,
        size INTEGER NOT NULL, chunks INTEGER NOT NULL, updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id INTEGER NOT NULL, ordinal INTEGER NOT NULL,
        heading TEXT NOT NULL, text TEXT NOT NULL, terms TEXT NOT NULL, vector BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES ('generation', 0)",
)
INDEX_FILE = "vectors.usearch"
INDEX_GENERATION_FILE = "vectors.generation"  # the database generation the saved index reflects


@dataclass(frozen=True)
class IngestResult:
    document: str
    status: Literal["added", "updated", "unchanged"]
    chunks: int


@dataclass(frozen=True)
class Hit:
    """One retrieved passage; `chunk` is its position in its document (0-based)."""

    chunk_id: int
    document: str
    chunk: int
    heading: str
    text: str
    score: float


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise APIError(
            400,
            f"knowledge base name {name!r}: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
            param="name",
            code="invalid_knowledge_base_name",
        )
    return name


class KnowledgeBase:
    """Thread-safe: the server calls it from worker threads; one lock serialises its operations."""

    def __init__(self, folder: Path, embedder: Embedder) -> None:
        self.folder = folder
        self.name = folder.name
        self.embedder = embedder
        self._lock = threading.Lock()
        self._db = sqlite3.connect(folder / "kb.db", check_same_thread=False, timeout=10.0)
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._db.commit()
        self._load()

    def _load(self) -> None:
        """Both indexes from the database; the vector index from its file where that file reflects
        the database's current generation, else rebuilt from the stored vectors."""
        self._version = self._data_version()
        self._bm25 = BM25Index()
        rows = self._db.execute("SELECT id, terms FROM chunks").fetchall()
        for chunk_id, terms in rows:
            self._bm25.add(chunk_id, json.loads(terms))
        stamp = self.folder / INDEX_GENERATION_FILE
        current = stamp.exists() and stamp.read_text().strip() == str(self._generation())
        self._vectors = VectorIndex(self.embedder.dimensions, self.folder / INDEX_FILE, load=current)
        if not current:
            for chunk_id, vector in self._db.execute("SELECT id, vector FROM chunks"):
                self._vectors.add([chunk_id], np.frombuffer(vector, dtype=np.float32)[None, :])
            self._save_index()

    def _generation(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]

    def _commit(self) -> None:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        self._db.commit()
        self._version = self._data_version()

    def _save_index(self) -> None:
        self._vectors.save()
        (self.folder / INDEX_GENERATION_FILE).write_text(str(self._generation()))

    def save_index(self) -> None:
        """Write the vector index after changes made with `save=False` (a bulk ingest)."""
        with self._lock:
            self._save_index()

    def _data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _refresh(self) -> None:
        """Another process (`seekd kb add` beside a running server) committed: load its changes."""
        if self._data_version() != self._version:
            logger.info("kb %s: changed by another process, reloading", self.name)
            self._load()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- documents ------------------------------------------------------------------------------

    def ingest(self, document: str, data: bytes, max_chars: int = DEFAULT_MAX_CHARS, save: bool = True) -> IngestResult:
        """`save=False` leaves the vector index file stale (rebuilt on the next open) until
        `save_index`: writing it after every document of a bulk ingest would cost more than the rest."""
        if not document or len(document) > MAX_DOCUMENT_NAME:
            raise APIError(400, f"a document name is 1 to {MAX_DOCUMENT_NAME} characters", param="name")
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._refresh()
            row = self._db.execute("SELECT id, sha256, chunks FROM documents WHERE name = ?", (document,)).fetchone()
        if row is not None and row[1] == digest:
            return IngestResult(document, "unchanged", row[2])
        chunks = chunk_sections(parse_document(document, data), max_chars)
        texts = [c.indexed_text for c in chunks]
        vectors = np.concatenate(
            [self.embedder.embed(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)]
            or [np.zeros((0, self.embedder.dimensions), np.float32)]
        )
        terms = [tokenize(t) for t in texts]
        with self._lock:
            if row is not None:
                self._drop_chunks(row[0])
                self._db.execute(
                    "UPDATE documents SET sha256 = ?, size = ?, chunks = ?, updated = ? WHERE id = ?",
                    (digest, len(data), len(chunks), time.time(), row[0]),
                )
                doc_id = row[0]
            else:
                cur = self._db.execute(
                    "INSERT INTO documents (name, sha256, size, chunks, updated) VALUES (?, ?, ?, ?, ?)",
                    (document, digest, len(data), len(chunks), time.time()),
                )
                doc_id = cur.lastrowid
            ids = []
            for ordinal, (chunk, chunk_terms, vector) in enumerate(zip(chunks, terms, vectors)):
                cur = self._db.execute(
                    "INSERT INTO chunks (doc_id, ordinal, heading, text, terms, vector) VALUES (?, ?, ?, ?, ?, ?)",
                    (doc_id, ordinal, chunk.heading, chunk.text, json.dumps(chunk_terms), vector.tobytes()),
                )
                ids.append(cur.lastrowid)
                self._bm25.add(cur.lastrowid, chunk_terms)
            self._vectors.add(ids, vectors)
            self._commit()
            if save:
                self._save_index()
        logger.info("kb %s: %s %s (%d chunks)", self.name, "updated" if row else "added", document, len(chunks))
        return IngestResult(document, "updated" if row is not None else "added", len(chunks))

    def _drop_chunks(self, doc_id: int) -> None:
        rows = self._db.execute("SELECT id, terms FROM chunks WHERE doc_id = ?", (doc_id,)).fetchall()
        for chunk_id, terms in rows:
            self._bm25.remove(chunk_id, json.loads(terms))
        self._vectors.remove([chunk_id for chunk_id, _ in rows])
        self._db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))

    def remove(self, document: str) -> bool:
        with self._lock:
            self._refresh()
            row = self._db.execute("SELECT id FROM documents WHERE name = ?", (document,)).fetchone()
            if row is None:
                return False
            self._drop_chunks(row[0])
            self._db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
            self._commit()
            self._save_index()
        logger.info("kb %s: removed %s", self.name, document)
        return True

    def documents(self) -> list[dict[str, object]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, sha256, size, chunks, updated FROM documents ORDER BY name"
            ).fetchall()
        return [dict(zip(("name", "sha256", "size", "chunks", "updated"), row)) for row in rows]

    @property
    def num_chunks(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._bm25)

    # -- retrieval ------------------------------------------------------------------------------

    def search(
        self, query: str, k: int = 5, mode: Mode = "hybrid", query_vector: np.ndarray | None = None
    ) -> list[Hit]:
        """Best `k` passages for `query`; identical passages (near-duplicate documents) count once."""
        if mode not in MODES:
            raise APIError(400, f"mode must be one of {', '.join(MODES)}", param="mode")
        pool = max(CANDIDATES, 4 * k)
        with self._lock:
            self._refresh()
        rankings: list[list[int]] = []
        if mode in ("hybrid", "vector"):
            vector = query_vector if query_vector is not None else self.embedder.embed([query])[0]
            with self._lock:
                rankings.append([key for key, _ in self._vectors.search(vector, pool)])
        if mode in ("hybrid", "bm25"):
            terms = tokenize(query)
            coverage = HYBRID_BM25_COVERAGE if mode == "hybrid" else 0.0
            with self._lock:
                rankings.append([key for key, _ in self._bm25.search(terms, pool, coverage)])
        fused = reciprocal_rank_fusion(*rankings)
        return self._hits(fused, k)

    def _hits(self, fused: list[tuple[int, float]], k: int) -> list[Hit]:
        hits: list[Hit] = []
        seen: set[str] = set()
        with self._lock:
            for chunk_id, score in fused:
                row = self._db.execute(
                    "SELECT d.name, c.ordinal, c.heading, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
                    "WHERE c.id = ?",
                    (chunk_id,),
                ).fetchone()
                if row is None:
                    continue
                key = " ".join(row[3].split())
                if key in seen:
                    continue
                seen.add(key)
                hits.append(Hit(chunk_id, row[0], row[1], row[2], row[3], round(score, 6)))
                if len(hits) == k:
                    break
        return hits

    def passage(self, document: str, chunk: int) -> str | None:
        """The text of one cited passage, or None if it does not exist (any more)."""
        with self._lock:
            row = self._db.execute(
                "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.name = ? AND c.ordinal = ?",
                (document, chunk),
            ).fetchone()
        return row[0] if row else None


def ingest_paths(
    kb: KnowledgeBase, paths: Iterable[Path], prune: bool = False, max_chars: int = DEFAULT_MAX_CHARS
) -> list[IngestResult]:
    """Files, and the supported files under folders, named by their path relative to the folder
    given (a file given alone: its name). `prune` removes documents that are no longer there."""
    from seekd.kb.parsers import SUFFIXES

    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in SUFFIXES:
                    found[file.relative_to(path).as_posix()] = file
        elif path.is_file():
            found[path.name] = path
        else:
            raise FileNotFoundError(f"{path} does not exist")
    try:
        results = [kb.ingest(name, file.read_bytes(), max_chars, save=False) for name, file in found.items()]
    finally:
        kb.save_index()
    if prune:
        for doc in kb.documents():
            if doc["name"] not in found:
                kb.remove(str(doc["name"]))
    return results


class KnowledgeBases:
    """Every tenant's knowledge bases under `<data_dir>/kb`; opened ones stay in memory."""

    def __init__(self, data_dir: Path, embedder: Embedder) -> None:
        self.root = data_dir / KB_DIR
        self.embedder = embedder
        self._open: dict[tuple[str, str], KnowledgeBase] = {}
        self._lock = threading.Lock()

    def _folder(self, tenant: str, name: str) -> Path:
        return self.root / hashlib.sha256(tenant.encode()).hexdigest()[:32] / check_name(name)

    def create(self, tenant: str, name: str) -> KnowledgeBase:
        folder = self._folder(tenant, name)
        if folder.exists():
            raise APIError(409, f"knowledge base {name!r} exists", param="name", code="knowledge_base_exists")
        folder.mkdir(parents=True, mode=0o700)
        (folder.parent / "tenant").write_text(tenant)  # for an operator reading the directory
        return self.get(tenant, name)

    def get(self, tenant: str, name: str) -> KnowledgeBase:
        """The tenant's knowledge base; 404 if that tenant has none of this name (another tenant's
        of the same name is a different one and stays invisible)."""
        folder = self._folder(tenant, name)
        with self._lock:
            kb = self._open.get((tenant, name))
            if kb is not None:
                return kb
            if not (folder / "kb.db").exists() and not folder.is_dir():
                raise APIError(
                    404, f"no knowledge base {name!r}", param="knowledge_bases", code="knowledge_base_not_found"
                )
            kb = self._open[(tenant, name)] = KnowledgeBase(folder, self.embedder)
            return kb

    def list(self, tenant: str) -> list[str]:
        folder = self.root / hashlib.sha256(tenant.encode()).hexdigest()[:32]
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def delete(self, tenant: str, name: str) -> None:
        kb = self.get(tenant, name)
        with self._lock:
            self._open.pop((tenant, name), None)
        kb.close()
        shutil.rmtree(kb.folder)
