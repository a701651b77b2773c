"""OpenAI `response_format` -> StructuredOutputParams, validated before the request reaches the
engine so that a bad schema is a 400 and never an engine error.

Shapes accepted: `{"type": "text"}`, `{"type": "json_object"}` and
`{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": bool}}`. The schema
is enforced by grammar whether or not `strict` is set: a best-effort mode would only let invalid
JSON through. Without `strict: true` the keywords and formats the grammar cannot enforce
(uniqueItems from a pydantic set, unknown formats) are ignored, as OpenAI ignores the whole schema
then; with it they are a 400, as OpenAI refuses them in strict mode.
"""

from __future__ import annotations

from typing import Any

from seekd.engine.structured.grammar import GrammarError, validate
from seekd.sampling_params import StructuredOutputParams
from seekd.server.errors import invalid_request

PARAM = "response_format"


def structured_from_response_format(response_format: dict[str, Any] | None) -> StructuredOutputParams | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise invalid_request("response_format must be an object with a 'type'", param=PARAM)
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return StructuredOutputParams(json_object=True)
    if kind != "json_schema":
        raise invalid_request(
            f"response_format type {kind!r} is not supported; use 'text', 'json_object' or 'json_schema'",
            param=PARAM,
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_request("response_format json_schema needs a 'json_schema' object", param=PARAM)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request("response_format json_schema needs a 'name'", param=f"{PARAM}.json_schema.name")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise invalid_request("response_format json_schema 'schema' must be an object", param=PARAM)
    return structured_from_schema(schema, param=PARAM, lenient=spec.get("strict") is not True)


def structured_from_schema(schema: dict[str, Any], param: str, lenient: bool = False) -> StructuredOutputParams:
    """A validated constraint for a JSON schema; also for tool-call argument schemas (pass the
    request field the schema came from as `param`, e.g. "tools"). `lenient`: keywords the grammar
    cannot enforce are accepted and ignored (a schema not marked strict, or only shown to the model)."""
    return checked(StructuredOutputParams.from_schema(schema, lenient), param)


def checked(params: StructuredOutputParams, param: str) -> StructuredOutputParams:
    """`params` if it compiles, else a 400 naming `param`."""
    try:
        validate(params)
    except GrammarError as e:
        raise invalid_request(f"invalid {param}: {e}", param=param) from e
    return params
