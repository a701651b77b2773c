"""Which tool-call format a model writes, from its family and its chat template.

The models that ship a Python encoder (V3.2, V4) are known by `model_type`. The others are told by
the markup their chat template renders past calls in: Qwen2.5-style `<tool_call>` tags, or the V3
special tokens — with a code-fenced `type<｜tool▁sep｜>name` (V3, R1 and the R1 distills, whose
template is R1's) or `name<｜tool▁sep｜>arguments` (V3.1). A template that shows no calls falls back
on the family: DeepSeek models use the V3 tokens, other families (Qwen, Llama) the Hermes tags.
"""

from __future__ import annotations

from collections.abc import Callable

from seekd.text.tool_parsers.base import ToolParser
from seekd.text.tool_parsers.deepseek_v3 import CALL_BEGIN, SEP, DeepSeekV3ToolParser
from seekd.text.tool_parsers.deepseek_v31 import DeepSeekV31ToolParser
from seekd.text.tool_parsers.dsml import V4_BLOCK, V32_BLOCK, DSMLToolParser
from seekd.text.tool_parsers.hermes import START as HERMES_START
from seekd.text.tool_parsers.hermes import HermesToolParser

TOOL_PARSERS: dict[str, Callable[[], ToolParser]] = {
    "deepseek_v3": DeepSeekV3ToolParser,
    "deepseek_v31": DeepSeekV31ToolParser,
    "deepseek_v32": lambda: DSMLToolParser(V32_BLOCK),
    "deepseek_v4": lambda: DSMLToolParser(V4_BLOCK),
    "hermes": HermesToolParser,
}


def detect_tool_format(model_type: str | None, chat_template: str | None) -> str:
    """The key in TOOL_PARSERS for this model."""
    if model_type in ("deepseek_v32", "deepseek_v4"):
        return model_type
    template = chat_template or ""
    if HERMES_START in template:
        return "hermes"
    if CALL_BEGIN in template:
        after_sep = template[template.find(SEP, template.find(CALL_BEGIN)) :]
        return "deepseek_v3" if "```json" in after_sep[:200] else "deepseek_v31"
    if (model_type or "").startswith("deepseek"):
        return "deepseek_v3"
    return "hermes"


def make_tool_parser(tool_format: str) -> ToolParser:
    """A fresh parser (one per generated sequence: it holds the stream's state)."""
    return TOOL_PARSERS[tool_format]()
