"""Retrieval quality on the test corpus (tests/kb/corpus.py): recall@5 of the hand-labelled
questions for hybrid, vector-only and BM25-only retrieval, after an incremental re-ingest in which
one document changed and another was removed. The numbers are printed, and written to
$SEEKD_RESULTS_DIR/kb_recall.json when that is set (`SEEKD_RESULTS_DIR=benchmarks/results` refreshes
the committed file; a plain test run leaves the checkout untouched)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from seekd.kb.store import KnowledgeBase

from .corpus import DOCUMENTS, QUESTIONS, UPDATED

ROOT = Path(__file__).resolve().parents[2]
K = 5


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder) -> KnowledgeBase:
    folder = tmp_path_factory.mktemp("kb") / "company"
    folder.mkdir()
    kb = KnowledgeBase(folder, embedder)
    first = {name: kb.ingest(name, text.encode()).status for name, text in DOCUMENTS.items()}
    assert set(first.values()) == {"added"}
    kb.ingest("scratch/obsolete.txt", "The old cafeteria menu: dumplings on Friday. 旧菜单作废。".encode())
    return kb


def recall_at_k(kb: KnowledgeBase, mode: str) -> tuple[float, list[str]]:
    misses = []
    for question, answers in QUESTIONS:
        found = [hit.document for hit in kb.search(question, K, mode)]
        if not set(found) & set(answers):
            misses.append(f"{question} -> {found}")
    return 1 - len(misses) / len(QUESTIONS), misses


def test_incremental_reingest_then_recall(kb: KnowledgeBase, tmp_path: Path) -> None:
    name, text = UPDATED
    chunks_before = kb.num_chunks
    statuses = {n: kb.ingest(n, t.encode()).status for n, t in {**DOCUMENTS, name: text}.items()}
    assert statuses.pop(name) == "updated"
    assert set(statuses.values()) == {"unchanged"}  # unchanged files are not parsed or embedded again
    assert kb.remove("scratch/obsolete.txt")
    assert kb.num_chunks < chunks_before + 3

    # The old version and the removed document are gone from both indexes.
    for mode in ("bm25", "vector", "hybrid"):
        for hit in kb.search("submit receipts by email within 30 days", 20, mode):
            assert "30 days" not in hit.text, hit
        assert all(h.document != "scratch/obsolete.txt" for h in kb.search("old cafeteria menu dumplings", 20, mode))
    assert "Huiyuan" in kb.search("Which portal do I use to submit receipts?", 1, "hybrid")[0].text

    results = {mode: recall_at_k(kb, mode) for mode in ("hybrid", "vector", "bm25")}
    recall = {mode: round(value, 3) for mode, (value, _) in results.items()}
    print(f"\nrecall@{K} over {len(QUESTIONS)} questions: {recall}")
    for mode, (_, misses) in results.items():
        for miss in misses:
            print(f"  {mode} missed: {miss}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = Path(os.environ.get("SEEKD_RESULTS_DIR", tmp_path)) / "kb_recall.json"
    result.write_text(
        json.dumps(
            {
                "what": f"recall@{K} of hand-labelled questions on the test corpus (tests/kb/corpus.py)",
                "command": "pytest tests/kb/test_retrieval_recall.py",
                "commit": commit.stdout.strip(),
                "questions": len(QUESTIONS),
                "documents": len(DOCUMENTS),
                "chunks": kb.num_chunks,
                "recall_at_5": recall,
                "misses": {mode: misses for mode, (_, misses) in results.items()},
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    assert recall["hybrid"] >= 0.9
    assert recall["hybrid"] >= recall["vector"] and recall["hybrid"] >= recall["bm25"]
