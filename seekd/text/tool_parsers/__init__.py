"""Tool-call parsers: one module per format a served model writes its calls in, and a registry
that picks the format from the model's family and chat template."""

from seekd.text.tool_parsers.base import ParsedOutput, ToolCall, ToolCallDelta, ToolParser, ToolStreamDelta
from seekd.text.tool_parsers.registry import TOOL_PARSERS, detect_tool_format, make_tool_parser

__all__ = [
    "TOOL_PARSERS",
    "ParsedOutput",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "ToolStreamDelta",
    "detect_tool_format",
    "make_tool_parser",
]
