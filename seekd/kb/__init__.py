"""Knowledge bases: `/v1/embeddings`, per-tenant document stores with hybrid (vector + BM25)
retrieval, retrieval-augmented prompts with citations, and an optional web search connector.

Sits beside the server: the server imports it, it never imports the server (errors come from
`seekd.errors`, the audit chain from `seekd.ops.audit`).
"""
