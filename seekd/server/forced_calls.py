"""The JSON of a forced tool call, read as it is generated.

With tool_choice "required" or a named function the grammar constrains the whole answer to JSON:
a named call's output is its arguments object, a required call's is `[{"name": ..., "arguments":
{...}}, ...]`. Clients show arguments as they are written (as with "auto", whose markup parsers
stream them), so this reader releases each call's name as soon as it is complete and its arguments
text character by character as it arrives, never waiting for the value to close.

Arguments are the model's own text of the value, unchanged (no re-serialization): the pieces of a
call concatenate to exactly its final `arguments`, streamed or not. Whitespace around a value
belongs to no call. The reader only needs the JSON to be well formed where the grammar makes it so;
a generation cut off mid-call (max_tokens) leaves the name and the arguments so far.
"""

from __future__ import annotations

import json

from seekd.text.tool_parsers import ToolCallDelta

_BLANK = " \t\r\n"


class _ValueEnd:
    """Where one JSON value ends, told one character at a time: strings (with escapes), nesting,
    and scalars, which end at the first character that is not theirs."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False

    def take(self, ch: str) -> bool:
        """Whether `ch` is part of the value; `done` turns True at its last character (or, for a
        scalar, at the first character after it, which is then not part of it)."""
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
                self.done = self.depth == 0
            return True
        if ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]" or (ch in "," + _BLANK and self.depth == 0):
            if self.depth == 0:
                self.done = True
                return False
            self.depth -= 1
            self.done = self.depth == 0
        return True


class _Call:
    """One element of a required call's array while it is read: its name may come after (part
    of) its arguments, which are then held until the name is known."""

    def __init__(self) -> None:
        self.index: int | None = None
        self.held = ""


class ForcedCallReader:
    """Forced-call JSON -> ToolCallDelta pieces (name first, then arguments text), chunk by chunk."""

    def __init__(self, named: str | None) -> None:
        """`named`: the function a named tool_choice forces (the whole output is its arguments);
        None: tool_choice "required" (an array of calls)."""
        self.named = named
        self.started = False  # any output read (or the name of a named call given)
        self._state = "value" if named is not None else "array"
        self._value: _ValueEnd | None = None
        self._key = ""  # JSON text of the key of the member being read
        self._member = "arguments" if named is not None else ""  # that key, decoded
        self._name = ""  # JSON text of the current element's name value
        self._call = _Call()
        self._num_calls = 0
        self._out: list[ToolCallDelta] = []

    def feed(self, text: str) -> list[ToolCallDelta]:
        if not self.started:
            self.started = True
            if self.named is not None:
                self._call.index = 0
                self._num_calls = 1
                self._out.append(ToolCallDelta(0, name=self.named))
        for ch in text:
            self._step(ch)
        out, self._out = self._out, []
        return out

    def _step(self, ch: str) -> None:
        state = self._state
        if state == "array":  # required: before '['
            if ch == "[":
                self._state = "element"
        elif state == "element":  # before an element, or the end of the array
            if ch == "{":
                self._call = _Call()
                self._state = "member"
            elif ch == "]":
                self._state = "done"
        elif state == "member":  # before a member's key, or the end of the object
            if ch == '"':
                self._key, self._value = '"', _ValueEnd()
                self._value.take(ch)
                self._state = "key"
            elif ch == "}":
                self._state = "element"
        elif state == "key":
            self._key += ch
            self._value.take(ch)
            if self._value.done:
                self._member = _decoded(self._key)
                self._state = "colon"
        elif state == "colon":
            if ch == ":":
                self._value = None
                self._state = "value"
        elif state == "value":
            self._value_char(ch)

    def _value_char(self, ch: str) -> None:
        if self._value is None:  # blanks before the value
            if ch in _BLANK:
                return
            self._value = _ValueEnd()
        if self._value.take(ch):
            self._emit_value(ch)
            if self._value.done:
                self._end_value()
        else:  # a scalar ended at `ch`, which belongs to what follows
            self._end_value()
            self._step(ch)

    def _emit_value(self, ch: str) -> None:
        if self._member == "arguments":
            self._arguments(ch)
        elif self._member == "name":
            self._name += ch

    def _end_value(self) -> None:
        if self.named is not None:
            self._state = "done"
            return
        if self._member == "name" and self._call.index is None:
            self._start_call()
        self._key, self._member, self._name, self._value = "", "", "", None
        self._state = "member"

    def _start_call(self) -> None:
        name = _decoded(self._name)
        if not name:
            return
        self._call.index = self._num_calls
        self._num_calls += 1
        self._out.append(ToolCallDelta(self._call.index, name=name, arguments=self._call.held))
        self._call.held = ""

    def _arguments(self, text: str) -> None:
        call = self._call
        if call.index is None:
            call.held += text
            return
        last = self._out[-1] if self._out else None
        if last is not None and last.index == call.index:
            last.arguments += text
        else:
            self._out.append(ToolCallDelta(call.index, arguments=text))


def _decoded(text: str) -> str:
    """A JSON string's value ("" for anything else)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return ""
    return value if isinstance(value, str) else ""
