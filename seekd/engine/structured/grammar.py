"""StructuredOutputParams -> llguidance grammar text, and validation without a tokenizer.

Why llguidance (not xgrammar): benchmarks/results/structured_backends_cpu.json, DeepSeek's
tokenizer, random walks through bounded JSON schemas, one thread on the shared 2-core CPU. Host work
per decode step (mask fill + advance): batch 1 llguidance 0.17 ms, xgrammar 1.2 ms; batch 64
llguidance 8.6 ms, xgrammar 17.7 ms. Compiling a new schema: 0.5 ms against ~200 ms, and requests
that bring their own schema (tool calls, response_format) compile on the engine's critical path.
llguidance also has no runtime dependencies (xgrammar pulls transformers and triton) and takes
Lark grammars with special tokens, which tool-call markup needs.

JSON whitespace: at most one space between tokens. Unbounded whitespace lets a model (and any
random-weight model) loop on blanks until max_tokens; one optional space still admits both compact
JSON and Python's json.dumps style.

Undeclared keys: an object schema that lists `properties` but says nothing of
`additionalProperties` is closed (as OpenAI's strict mode requires and vLLM's default backend does).
JSON Schema would allow any extra key, and a model that strays into inventing keys then keeps going
until max_tokens; clients that want extra keys say `"additionalProperties": true`.
"""

from __future__ import annotations

import json

import llguidance

from seekd.sampling_params import StructuredOutputParams

JSON_OPTIONS = {"whitespace_pattern": r" ?"}
ANY_JSON_OBJECT = '{"type": "object"}'


class GrammarError(ValueError):
    """The constraint does not compile: a bad schema, regex or grammar, or an unsupported keyword."""


def to_grammar(params: StructuredOutputParams) -> str:
    """The llguidance grammar (its JSON form) of a constraint; raises GrammarError on input that
    is not even well-formed (invalid JSON text); `validate` finds the deeper errors. A lenient
    constraint ignores the schema keywords and formats the grammar cannot enforce."""
    if params.json_schema is not None or params.json_object:
        text = params.json_schema if params.json_schema is not None else ANY_JSON_OBJECT
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from e
        if not isinstance(schema, (dict, bool)):
            raise GrammarError("a JSON schema must be an object (or true/false)")
        try:
            options = {**JSON_OPTIONS, "lenient": True} if params.lenient else JSON_OPTIONS
            return llguidance.LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=options)
        except ValueError as e:
            raise GrammarError(f"invalid JSON schema: {e}") from e
    if params.regex is not None:
        return llguidance.LLMatcher.grammar_from_regex(params.regex)
    return llguidance.LLMatcher.grammar_from_lark(params.grammar or "")


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")  # not allOf: its members intersect, so none may be closed alone
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def close_objects(schema: object) -> object:
    """A copy of the schema in which every object schema with `properties` (or
    `patternProperties`) and no `additionalProperties` gets `"additionalProperties": false`. Walks
    only the places that hold subschemas, so a property that happens to be named "properties" is
    left alone; schemas combined with others (allOf, $ref siblings) stay open."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: close_objects(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [close_objects(sub) for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if key in out:
            value = out[key]
            out[key] = [close_objects(sub) for sub in value] if isinstance(value, list) else close_objects(value)
    composed = "allOf" in out or "$ref" in out  # keys allowed by the other part would be shut out
    if ("properties" in out or "patternProperties" in out) and "additionalProperties" not in out and not composed:
        out["additionalProperties"] = False
    return out


def validate(params: StructuredOutputParams) -> None:
    """Compile the constraint without a tokenizer (cheap: no token masks); raise GrammarError with
    the library's message if it would not compile in the engine. A lenient constraint must still be
    a schema, but keywords the grammar lacks (uniqueItems, not, unknown formats) are no error."""
    grammar = to_grammar(params)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(error)
