"""DSML tool calls of DeepSeek-V3.2 (`function_calls` block) and V4 (`tool_calls` block):

    <｜DSML｜function_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜function_calls>

As DeepSeek's own decoder reads it: `string="true"` values are taken verbatim as strings, the others
as JSON (a value that is not JSON is kept as a string rather than failing the request), and the
arguments are the JSON object of all parameters (`json.dumps(..., ensure_ascii=False)`, so the
streamed pieces — a string value character by character — concatenate to exactly that text).

Calls inside reasoning: DeepSeek's decoder ends the reasoning at the first of `</think>` and the
call block's opening tag, then rejects output whose block came first. We keep its split (the
reasoning is the text before the block; the block is the call) instead of failing the request.
"""

from __future__ import annotations

import json
import re

from seekd.text.tool_parsers.base import ParsedOutput, ToolCall, ToolParser, json_string_body, partial_suffix

DSML = "｜DSML｜"
V32_BLOCK = "function_calls"
V4_BLOCK = "tool_calls"

_INVOKE_OPEN = re.compile(r"<" + DSML + r'invoke\s+name="(?P<name>[^"]*)"\s*>')
_PARAM_OPEN = re.compile(r"<" + DSML + r'parameter\s+name="(?P<name>[^"]*)"\s+string="(?P<string>true|false)"\s*>')
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_CLOSE = f"</{DSML}parameter>"
_INVOKE = re.compile(_INVOKE_OPEN.pattern + r"(?P<body>.*?)" + re.escape(INVOKE_CLOSE), re.DOTALL)
_PARAM = re.compile(_PARAM_OPEN.pattern + r"(?P<value>.*?)" + re.escape(PARAM_CLOSE), re.DOTALL)


def decode_value(value: str, is_string: bool) -> object:
    if is_string:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class DSMLToolParser(ToolParser):
    def __init__(self, block: str = V4_BLOCK) -> None:
        super().__init__()
        self.block_open = f"<{DSML}{block}>"
        self.block_close = f"</{DSML}{block}>"
        self.start_tags = (self.block_open,)

    def parse(self, text: str) -> ParsedOutput:
        content, blocks = "", []
        while (at := text.find(self.block_open)) != -1:
            content += text[:at].rstrip()
            rest = text[at + len(self.block_open) :]
            close = rest.find(self.block_close)
            blocks.append(rest if close == -1 else rest[:close])
            text = "" if close == -1 else rest[close + len(self.block_close) :].lstrip()
        calls = []
        for block in blocks:
            for invoke in _INVOKE.finditer(block):
                args = {
                    p["name"]: decode_value(p["value"], p["string"] == "true") for p in _PARAM.finditer(invoke["body"])
                }
                calls.append(ToolCall(invoke["name"], json.dumps(args, ensure_ascii=False)))
        return ParsedOutput(content + text, calls)

    def _open_block(self, tag: str) -> None:
        self._state = "between"

    def _open_tag(self, pattern: re.Pattern[str]) -> re.Match[str] | bool | None:
        """The complete opening tag at the start of _buf; False while it may still be arriving."""
        close = self._buf.find(">")
        if close == -1:
            return False
        return pattern.match(self._buf[: close + 1])

    def _step(self, final: bool) -> bool:
        if self._state == "value":
            return self._step_value()
        buf = self._buf = self._buf.lstrip()
        if self._state == "between":
            opener, closer = f"<{DSML}invoke", self.block_close
        else:
            opener, closer = f"<{DSML}parameter", INVOKE_CLOSE
        if buf.startswith(opener):
            m = self._open_tag(_INVOKE_OPEN if self._state == "between" else _PARAM_OPEN)
            if m is False:
                return False
            if m is None:  # a malformed tag: not a call we can read
                self._end_block()
                return True
            self._buf = buf[m.end() :]
            if self._state == "between":
                self._new_call(m["name"])
                self._num_params = 0
                self._state = "params"
            else:
                self._arguments(
                    ("{" if self._num_params == 0 else ", ")
                    + json.dumps(m["name"], ensure_ascii=False)
                    + ": "
                    + ('"' if m["string"] == "true" else "")
                )
                self._num_params += 1
                self._is_string = m["string"] == "true"
                self._value_sent = 0
                self._state = "value"
            return True
        if buf.startswith(closer):
            self._buf = buf[len(closer) :]
            if self._state == "between":
                self._end_block()
            else:
                self._arguments("}" if self._num_params else "{}")
                self._state = "between"
            return True
        if not final and (opener.startswith(buf) or closer.startswith(buf)):
            return False
        self._end_block()
        return True

    def _step_value(self) -> bool:
        buf = self._buf
        at = buf.find(PARAM_CLOSE)
        if at == -1:
            if self._is_string:
                safe = len(buf) - partial_suffix(buf, PARAM_CLOSE)
                self._arguments(json_string_body(buf[self._value_sent : safe]))
                self._value_sent = max(self._value_sent, safe)
            return False
        value = buf[:at]
        if self._is_string:
            self._arguments(json_string_body(value[self._value_sent :]) + '"')
        else:
            self._arguments(json.dumps(decode_value(value, False), ensure_ascii=False))
        self._buf = buf[at + len(PARAM_CLOSE) :]
        self._state = "params"
        return True

    def _close_unfinished(self) -> None:
        if self._state == "value" and self._is_string:
            self._arguments(json_string_body(self._buf[self._value_sent :]))
