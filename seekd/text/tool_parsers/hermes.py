"""Hermes / Qwen2.5 tool calls (the format of Qwen2.5's chat template, which the R1-Distill-Qwen
models inherit when served with it): one JSON object per call, each in its own tags,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The arguments are streamed as the model writes them: the text of the "arguments" value, without
the object's closing brace. A call whose keys come in another order is read whole at its end tag
(its arguments re-serialised); one that is not JSON with a name is dropped, with a warning.
"""

from __future__ import annotations

import json
import logging
import re

from seekd.text.tool_parsers.base import ParsedOutput, StreamedArguments, ToolCall, ToolParser, split_blocks

logger = logging.getLogger(__name__)

START = "<tool_call>"
END = "</tool_call>"

_NAME_FIRST = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


def settle_value(raw: str, final: bool) -> str:
    """The "arguments" value: the text up to the object's closing brace."""
    text = raw.rstrip()
    if text.endswith("}"):
        text = text[:-1]
    return text.rstrip()


def read_call(body: str) -> ToolCall | None:
    """One block's call: name-first objects keep their argument text exactly."""
    m = _NAME_FIRST.match(body)
    if m:
        return ToolCall(json.loads(f'"{m[1]}"'), settle_value(body[m.end() :], final=True))
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        logger.warning("dropped a tool call that is not a JSON object with a name: %.200r", body)
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))


class HermesToolParser(ToolParser):
    start_tags = (START,)

    def parse(self, text: str) -> ParsedOutput:
        content, blocks = split_blocks(text, self.start_tags, END)
        return ParsedOutput(content, [call for body in blocks if (call := read_call(body)) is not None])

    def _open_block(self, tag: str) -> None:
        self._named = False
        self._args = StreamedArguments(settle_value)

    def _step(self, final: bool) -> bool:
        buf = self._buf
        if not self._named:
            m = _NAME_FIRST.match(buf)
            if m and m.end() < len(buf):  # the value has begun: the name is complete
                self._new_call(json.loads(f'"{m[1]}"'))
                self._named = True
                self._buf = buf = buf[m.end() :]
        at = buf.find(END)
        if at == -1:
            if self._named:
                self._arguments(self._args.progress(buf, END))
            return False
        if self._named:
            self._arguments(self._args.complete(buf[:at]))
        elif (call := read_call(buf[:at])) is not None:
            self._new_call(call.name)
            self._arguments(call.arguments)
        self._buf = buf[at + len(END) :]
        self._end_block()
        return True

    def _close_unfinished(self) -> None:
        if self._named:
            self._arguments(self._args.complete(self._buf))
