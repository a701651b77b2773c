"""DeepSeek-V3.1 tool calls: the V3 special tokens without the type and the code fence,

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(V3.1's chat template chains several calls with no separator; blanks between them are allowed).
"""

from __future__ import annotations

import re

from seekd.text.tool_parsers.base import ParsedOutput, StreamedArguments, ToolCall, ToolParser, split_blocks
from seekd.text.tool_parsers.deepseek_v3 import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP

_CALL = re.compile(
    re.escape(CALL_BEGIN) + r"(?P<name>.*?)" + re.escape(SEP) + r"(?P<args>.*?)" + re.escape(CALL_END), re.DOTALL
)


def settle_plain(raw: str, final: bool) -> str:
    return raw.strip()


class DeepSeekV31ToolParser(ToolParser):
    start_tags = (CALLS_BEGIN, CALL_BEGIN)

    def parse(self, text: str) -> ParsedOutput:
        content, blocks = split_blocks(text, self.start_tags, CALLS_END, keep=(CALL_BEGIN,))
        calls = [
            ToolCall(m["name"].strip(), m["args"].strip()) for block in blocks for m in _CALL.finditer(block)
        ]
        return ParsedOutput(content, calls)

    def _open_block(self, tag: str) -> None:
        self._state = "between" if tag == CALLS_BEGIN else "name"

    def _step(self, final: bool) -> bool:
        buf = self._buf
        if self._state == "between":
            buf = self._buf = buf.lstrip()
            for tag, state in ((CALL_BEGIN, "name"), (CALLS_END, None)):
                if buf.startswith(tag):
                    self._buf = buf[len(tag) :]
                    if state is None:
                        self._end_block()
                    else:
                        self._state = state
                    return True
            if not final and (CALL_BEGIN.startswith(buf) or CALLS_END.startswith(buf)):
                return False
            self._end_block()
            return True
        if self._state == "name":
            at = buf.find(SEP)
            if at == -1:
                return False
            self._new_call(buf[:at].strip())
            self._buf = buf[at + len(SEP) :]
            self._args = StreamedArguments(settle_plain)
            self._state = "args"
            return True
        at = buf.find(CALL_END)
        if at == -1:
            self._arguments(self._args.progress(buf, CALL_END))
            return False
        self._arguments(self._args.complete(buf[:at]))
        self._buf = buf[at + len(CALL_END) :]
        self._state = "between"
        return True

    def _close_unfinished(self) -> None:
        if self._state == "args":
            self._arguments(self._args.complete(self._buf))
