"""The pre-parse depth count (numpy over the raw bytes) against a reference: the depth of the
parsed document, on generated JSON full of brackets, quotes and escapes inside strings."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from seekd.server.http.json_depth import deeper_than, json_depth

tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\\\ab,: \n\u00e9\u4e2d')), max_size=12)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=30,
)


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(documents, st.booleans())
def test_depth_matches_the_parsed_document(document: Any, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    depth = reference_depth(document)
    assert json_depth(body) == depth
    assert not deeper_than(body, depth)
    if depth:
        assert deeper_than(body, depth - 1)
