"""Reciprocal-rank fusion (Cormack et al., 2009): each list votes 1 / (k + rank) for its items, so
BM25 scores and cosine similarities, on unrelated scales, combine without calibration."""

from __future__ import annotations

RRF_K = 60


def reciprocal_rank_fusion(*rankings: list[int], k: int = RRF_K) -> list[tuple[int, float]]:
    """Items of all rankings (best first), by fused score, highest first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda entry: entry[1], reverse=True)
