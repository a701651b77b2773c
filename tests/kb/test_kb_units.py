"""The pieces of retrieval on their own: sentence-aware chunking (Chinese and English), HTML
cleaning, BM25 additions and removals, rank fusion, the prompt's token budget, `kb_defaults`."""

from __future__ import annotations

import pytest

from seekd.config import KnowledgeConfig
from seekd.errors import APIError
from seekd.kb.bm25 import BM25Index, tokenize
from seekd.kb.chunking import chunk_sections, split_sentences
from seekd.kb.fusion import reciprocal_rank_fusion
from seekd.kb.parsers import Section, parse_document, parse_markdown
from seekd.kb.rag import HEADER, INSTRUCTIONS, Passage, build_context, references, with_context


def test_chunks_end_at_sentence_ends_and_never_cross_headings() -> None:
    assert split_sentences("第一句。第二句！Third one. Fourth?") == ["第一句。", "第二句！", "Third one.", "Fourth?"]
    sections = parse_markdown("# A\n一二三四五。六七八九十。\n## B\nShort one. Next one.")
    chunks = chunk_sections(sections, max_chars=11)
    assert [(c.heading, c.text) for c in chunks] == [
        ("A", "一二三四五。"),
        ("A", "六七八九十。"),
        ("A > B", "Short one."),
        ("A > B", "Next one."),
    ]
    assert chunks[2].indexed_text == "A > B\nShort one."
    assert all(len(c.text) <= 30 for c in chunk_sections([Section("", "x" * 100)], max_chars=30))


def test_html_loses_scripts_and_navigation_and_keeps_headings() -> None:
    html = b"<nav>Menu</nav><h1>Title</h1><script>evil()</script><p>Body &amp; more.</p><footer>(c)</footer>"
    assert parse_document("page.html", html) == [Section("Title", "Body & more.")]
    assert parse_document("gbk.txt", "中文内容".encode("gb18030")) == [Section("", "中文内容")]
    with pytest.raises(APIError) as e:
        parse_document("tool.exe", b"MZ")
    assert e.value.status == 415


def test_bm25_takes_removals_and_ranks_by_rare_terms() -> None:
    index = BM25Index()
    docs = {1: "服务器机房的温度", 2: "机房门禁管理", 3: "员工食堂午餐"}
    for key, text in docs.items():
        index.add(key, tokenize(text))
    assert [key for key, _ in index.search(tokenize("机房温度"), 3)] == [1, 2]
    index.remove(1, tokenize(docs[1]))
    assert [key for key, _ in index.search(tokenize("机房温度"), 3)] == [2]
    assert len(index) == 2
    assert index.search(tokenize("机房温度"), 3, min_coverage=0.9) == []


def test_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([1, 2, 3], [3, 4])
    assert fused[0][0] == 3 and {item for item, _ in fused} == {1, 2, 3, 4}


def test_context_respects_the_token_budget_and_numbers_citations() -> None:
    passages = [Passage("knowledge_base", "x " * n, float(n), f"d{n}", 0, "kb") for n in (50, 5, 30)]
    words = lambda text: len(text.split())  # noqa: E731
    budget = words(INSTRUCTIONS + HEADER) + 54 + 9 + 5  # entry = 4 words of label + the passage
    context, citations = build_context(passages, budget, words)
    assert [c.passage.document for c in citations] == ["d50", "d5"]  # d30 did not fit after d50
    assert [c.index for c in citations] == [1, 2] and "[2] (kb/d5, chunk 0)" in context
    assert references(citations).endswith("[1] kb/d50, chunk 0\n[2] kb/d5, chunk 0")
    merged = with_context([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "CTX")
    assert merged[0]["content"] == "Be brief.\n\nCTX" and len(merged) == 2


def test_kb_defaults_parse_and_refuse_junk() -> None:
    assert KnowledgeConfig(kb_defaults="a=h+faq, b=docs").defaults() == {"a": ["h", "faq"], "b": ["docs"]}
    with pytest.raises(ValueError):
        KnowledgeConfig(kb_defaults="a=")
