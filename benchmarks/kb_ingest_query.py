"""Knowledge-base ingest throughput and query latency at 10k and 100k chunks, on this machine's CPU.

Pages are generated (Chinese and English policy-like text, ~1,000 characters, seeded) and ingested
one by one into one knowledge base through the same path as `seekd kb add` (parse, chunk, embed with
the packaged model, BM25 terms, SQLite, HNSW), until it holds each target number of chunks; then a
set of questions is asked in hybrid mode (query embedding + HNSW + BM25 + fusion + passage lookup),
and vector-only and BM25-only for comparison. Embedding dominates ingest.

    python benchmarks/kb_ingest_query.py [--chunks 10000 100000] [--queries 200]
        [--out benchmarks/results/kb_ingest_query_cpu.json]

The machine is shared with other workers: the load average at the start and end of each stage is
recorded with the numbers. On it the embedder manages about 60 chunks/s on a free core and far fewer
on a loaded one, so a real 100k-chunk ingest would take hours: chunks beyond `--embed-up-to` (10k)
are stored with a recycled vector (a real embedding of an earlier chunk plus noise, renormalised)
instead of being embedded. Their stage then measures the rest of ingest (parse, chunk, BM25,
SQLite, HNSW insert) and query latency at that size, with real query embeddings; the result file
says which stages recycled vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seekd.bench.report import result_header
from seekd.kb.embedder import Embedder, shared_embedder
from seekd.kb.store import KnowledgeBase

TOPICS_ZH = [
    "年假",
    "报销",
    "机房",
    "密码",
    "保修",
    "食堂",
    "班车",
    "培训",
    "合同",
    "审计",
    "采购",
    "招聘",
    "网络",
    "备份",
]
TOPICS_EN = ["leave", "expenses", "servers", "passwords", "warranty", "canteen", "shuttle", "training", "contracts",
             "audits", "purchasing", "hiring", "network", "backups"]  # fmt: skip
ZH = [
    "{t}相关事项须在{n}个工作日内通过内部系统提交，并由部门负责人审批。",
    "关于{t}的规定自{y}年起执行，违反规定者将按照公司制度处理。",
    "第{n}条：{t}的具体标准为每人每月不超过{m}元，超出部分需要额外说明。",
    "如对{t}有疑问，请联系{d}部，服务时间为工作日九点至十八点。",
    "{d}部每季度对{t}进行一次检查，检查结果在内网公布。",
]
EN = [
    "Requests about {t} must be filed within {n} working days through the internal portal.",
    "The {t} policy has applied since {y}; exceptions need written approval from the {d} department.",
    "Section {n}: the {t} limit is {m} yuan per person per month.",
    "Questions about {t} go to the {d} team, available on working days from 9:00 to 18:00.",
    "The {d} department reviews {t} every quarter and publishes the findings on the intranet.",
]
DEPARTMENTS = ["人事", "财务", "信息技术", "法务", "行政", "运维", "HR", "finance", "IT", "legal", "facilities"]


def make_page(rng: random.Random, number: int) -> tuple[str, str]:
    lines = [f"# 制度 {number} / Policy {number}"]
    for section in range(4):
        i = rng.randrange(len(TOPICS_ZH))
        lines.append(f"\n## {TOPICS_ZH[i]} / {TOPICS_EN[i]} {section}")
        for _ in range(rng.randint(2, 4)):
            template, topic = (rng.choice(ZH), TOPICS_ZH[i]) if rng.random() < 0.5 else (rng.choice(EN), TOPICS_EN[i])
            lines.append(
                template.format(
                    t=topic,
                    n=rng.randint(1, 90),
                    m=rng.randint(50, 9000),
                    y=rng.randint(2000, 2026),
                    d=rng.choice(DEPARTMENTS),
                )
            )
    return f"policies/{number:06d}.md", "\n".join(lines)


def questions(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        i = rng.randrange(len(TOPICS_ZH))
        out.append(
            rng.choice(
                [
                    f"{TOPICS_ZH[i]}需要在多少个工作日内提交？",
                    f"What is the {TOPICS_EN[i]} limit per month?",
                    f"{TOPICS_ZH[i]}有问题找哪个部门",
                    f"Who reviews {TOPICS_EN[i]} every quarter?",
                ]
            )
        )
    return out


class RecyclingEmbedder:
    """Real query embeddings; past `real_up_to` embedded texts, a recycled vector per text."""

    def __init__(self, embedder: Embedder, real_up_to: int) -> None:
        self.embedder, self.real_up_to = embedder, real_up_to
        self.name, self.dimensions = embedder.name, embedder.dimensions
        self.pool: list[np.ndarray] = []
        self.rng = np.random.default_rng(0)
        self.recycling = False

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.recycling or not self.pool:
            vectors = self.embedder.embed(texts)
            if not self.recycling and len(self.pool) < self.real_up_to:
                self.pool.extend(vectors)
            return vectors
        picks = np.stack([self.pool[i] for i in self.rng.integers(0, len(self.pool), len(texts))])
        noisy = picks + self.rng.normal(0, 0.05, picks.shape).astype(np.float32)
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)

    def count_tokens(self, text: str) -> int:
        return self.embedder.count_tokens(text)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-up-to", type=int, default=10_000, help="chunks embedded for real; beyond: recycled")
    parser.add_argument("--out", default="benchmarks/results/kb_ingest_query_cpu.json")
    args = parser.parse_args()
    real = shared_embedder()
    embedder = RecyclingEmbedder(real, args.embed_up_to)
    rng = random.Random(0)
    asked = questions(random.Random(1), args.queries)
    result = {
        **result_header("kb_ingest_query", f"cpu ({os.cpu_count()} cores, shared with other workers)"),
        "what": "ingest (parse, chunk, embed, BM25, SQLite, HNSW) of generated zh/en pages into one knowledge "
        "base, then query latency (hybrid = query embedding + HNSW + BM25 + RRF + passage lookup)",
        "embedding_model": embedder.name,
        "stages": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bench"
        folder.mkdir()
        kb = KnowledgeBase(folder, embedder)  # type: ignore[arg-type]
        pages = 0
        for target in sorted(args.chunks):
            embedder.recycling = kb.num_chunks >= args.embed_up_to
            load_start = os.getloadavg()[0]
            start, pages_start, chunks_start = time.perf_counter(), pages, kb.num_chunks
            while kb.num_chunks < target:
                name, text = make_page(rng, pages)
                kb.ingest(name, text.encode(), save=False)
                pages += 1
            kb.save_index()
            seconds = time.perf_counter() - start
            stage = {
                "chunks": kb.num_chunks,
                "ingest_vectors": "recycled (not embedded)" if embedder.recycling else "embedded",
                "pages": pages,
                "ingest": {
                    "pages": pages - pages_start,
                    "chunks": kb.num_chunks - chunks_start,
                    "seconds": round(seconds, 1),
                    "pages_per_s": round((pages - pages_start) / seconds, 2),
                    "chunks_per_s": round((kb.num_chunks - chunks_start) / seconds, 2),
                },
            }
            embedder.recycling = False  # queries are always embedded for real
            for mode in ("hybrid", "vector", "bm25"):
                kb.search(asked[0], 5, mode)  # warm
                samples = []
                for question in asked:
                    t = time.perf_counter()
                    kb.search(question, 5, mode)
                    samples.append(time.perf_counter() - t)
                stage[f"query_{mode}"] = percentiles(samples)
            stage["load_average_start_end"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
            result["stages"].append(stage)
            print(json.dumps(stage), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
