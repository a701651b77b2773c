"""DeepSeek-V3 / R1 tool calls, written with the tokenizer's tool special tokens:

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Paris"}
    ```<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>function<｜tool▁sep｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(the format DeepSeek-V3's and R1's chat templates render past calls in). The word before the
separator is the call type ("function"); the arguments are the model's JSON text, passed on as is.
A model that skips the outer `calls▁begin` token and opens a call directly is read the same way.
"""

from __future__ import annotations

import re

from seekd.text.tool_parsers.base import ParsedOutput, StreamedArguments, ToolCall, ToolParser, split_blocks

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE = "```json"

_CALL = re.compile(
    re.escape(CALL_BEGIN)
    + r"(?P<type>.*?)"
    + re.escape(SEP)
    + r"(?P<name>[^\n]*)\n(?P<args>.*?)"
    + re.escape(CALL_END),
    re.DOTALL,
)


def settle_fenced(raw: str, final: bool) -> str:
    """Arguments between "```json\\n" and "\\n```": blanks and the closing fence are not JSON."""
    text = raw.lstrip()
    if final:
        text = text.rstrip()
        return text[:-3].rstrip() if text.endswith("```") else text
    return text.rstrip(" \t\r\n`")


def strip_fence_open(args: str) -> str:
    args = args.lstrip()
    return args[len(FENCE) :] if args.startswith(FENCE) else args


class SpecialTokenCallsParser(ToolParser):
    """The stream of V3-family calls: between calls, the special tokens; in a call, the states of
    its header (the subclass's); then arguments up to `CALL_END`."""

    start_tags = (CALLS_BEGIN, CALL_BEGIN)
    first_state = "name"  # the state right after CALL_BEGIN

    def _open_block(self, tag: str) -> None:
        self._state = "between" if tag == CALLS_BEGIN else self.first_state

    def _step(self, final: bool) -> bool:
        buf = self._buf
        if self._state == "between":
            buf = self._buf = buf.lstrip()
            for tag, state in ((CALL_BEGIN, self.first_state), (CALLS_END, None)):
                if buf.startswith(tag):
                    self._buf = buf[len(tag) :]
                    if state is None:
                        self._end_block()
                    else:
                        self._state = state
                    return True
            if not final and (CALL_BEGIN.startswith(buf) or CALLS_END.startswith(buf)):
                return False
            self._end_block()  # not markup after all: back to text
            return True
        if self._state != "args":
            return self._step_header(buf, final)
        at = buf.find(CALL_END)
        if at == -1:
            self._arguments(self._args.progress(buf, CALL_END))
            return False
        self._arguments(self._args.complete(buf[:at]))
        self._buf = buf[at + len(CALL_END) :]
        self._state = "between"
        return True

    def _step_header(self, buf: str, final: bool) -> bool:
        """Advance through the call's header; ends by setting `_args` and the state "args"."""
        raise NotImplementedError

    def _close_unfinished(self) -> None:
        if self._state == "args":
            self._arguments(self._args.complete(self._buf))


class DeepSeekV3ToolParser(SpecialTokenCallsParser):
    first_state = "type"

    def parse(self, text: str) -> ParsedOutput:
        content, blocks = split_blocks(text, self.start_tags, CALLS_END, keep=(CALL_BEGIN,))
        calls = [
            ToolCall(m["name"].strip(), settle_fenced(strip_fence_open(m["args"]), final=True))
            for block in blocks
            for m in _CALL.finditer(block)
        ]
        return ParsedOutput(content, calls)

    def _step_header(self, buf: str, final: bool) -> bool:
        if self._state == "type":
            at = buf.find(SEP)
            if at == -1:
                return False
            self._buf = buf[at + len(SEP) :]
            self._state = "name"
            return True
        if self._state == "name":
            at = buf.find("\n")
            if at == -1:
                return False
            self._new_call(buf[:at].strip())
            self._buf = buf[at + 1 :]
            self._state = "fence"
            return True
        head = buf.lstrip()
        if not final and len(head) < len(FENCE) and FENCE.startswith(head):
            return False
        self._buf = strip_fence_open(buf)
        self._args = StreamedArguments(settle_fenced)
        self._state = "args"
        return True
