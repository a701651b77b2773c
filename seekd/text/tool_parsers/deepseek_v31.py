"""DeepSeek-V3.1 tool calls: the V3 special tokens without the type and the code fence,

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(V3.1's chat template chains several calls with no separator; blanks between them are allowed).
"""

from __future__ import annotations

import re

from seekd.text.tool_parsers.base import ParsedOutput, StreamedArguments, ToolCall, split_blocks
from seekd.text.tool_parsers.deepseek_v3 import CALL_BEGIN, CALL_END, CALLS_END, SEP, SpecialTokenCallsParser

_CALL = re.compile(
    re.escape(CALL_BEGIN) + r"(?P<name>.*?)" + re.escape(SEP) + r"(?P<args>.*?)" + re.escape(CALL_END), re.DOTALL
)


def settle_plain(raw: str, final: bool) -> str:
    return raw.strip()


class DeepSeekV31ToolParser(SpecialTokenCallsParser):
    def parse(self, text: str) -> ParsedOutput:
        content, blocks = split_blocks(text, self.start_tags, CALLS_END, keep=(CALL_BEGIN,))
        calls = [ToolCall(m["name"].strip(), m["args"].strip()) for block in blocks for m in _CALL.finditer(block)]
        return ParsedOutput(content, calls)

    def _step_header(self, buf: str, final: bool) -> bool:
        at = buf.find(SEP)
        if at == -1:
            return False
        self._new_call(buf[:at].strip())
        self._buf = buf[at + len(SEP) :]
        self._args = StreamedArguments(settle_plain)
        self._state = "args"
        return True
