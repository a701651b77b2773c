"""Summaries of a run: latency percentiles, throughput and goodput under an SLO.

Goodput counts only successful requests that meet every SLO given, per second of the run, so it
never exceeds request throughput; it is what a user with a latency target actually gets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seekd.bench.client import RequestResult

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SLO:
    """Latency targets in milliseconds; None means no target on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None

    def met_by(self, r: RequestResult) -> bool:
        if not r.ok:
            return False
        if self.ttft_ms is not None and (r.ttft is None or r.ttft * 1e3 > self.ttft_ms):
            return False
        # a one-token answer has no TPOT, so it cannot miss a TPOT target
        if self.tpot_ms is not None and r.tpot is not None and r.tpot * 1e3 > self.tpot_ms:
            return False
        return self.e2e_ms is None or r.e2e * 1e3 <= self.e2e_ms

    def as_dict(self) -> dict[str, float | None]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}


def distribution(values_s: Sequence[float]) -> dict[str, float | None]:
    """mean and percentiles in milliseconds (linear interpolation); None where there are no values."""
    if not values_s:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    out = {"mean": float(ms.mean())}
    out.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES))})
    return out


def summarize(results: Sequence[RequestResult], duration_s: float, slo: SLO) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    good = sum(slo.met_by(r) for r in ok)
    errors = Counter(r.error for r in results if not r.ok)
    first_errors = {}
    for r in results:
        if not r.ok and r.error not in first_errors:
            first_errors[r.error] = r.error_detail
    return {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": dict(sorted(errors.items())),
        "error_examples": first_errors,
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (output_tokens + prompt_tokens) / duration_s,
        "goodput": None if slo.empty else good / duration_s,
        "slo_met": None if slo.empty else good,
        "prompt_tokens": prompt_tokens,
        "cached_prompt_tokens": sum(r.cached_tokens or 0 for r in ok),
        "output_tokens": output_tokens,
        "output_tokens_from_usage": all(r.usage_output_tokens is not None for r in ok),
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": distribution([r.tpot for r in ok if r.tpot is not None]),
        "itl_ms": distribution([gap for r in ok for gap in r.itl]),
        "e2e_ms": distribution([r.e2e for r in ok]),
    }
