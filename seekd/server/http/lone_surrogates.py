"""Lone UTF-16 surrogates in a JSON body, found before the body reaches any handler.

JSON may escape a surrogate half on its own (`"\\ud800"`) and Python's parser turns it into a str that
cannot be encoded as UTF-8: the tokenizer, stop-string matching, grammar compilation, audit records
and even the 404 for an unknown model then fail with a 500. One check at the door covers them all.
Well-formed bodies pay one regex scan (and a UTF-8 decode when not ASCII); only a body that may hold
a surrogate is parsed here, a second time, to find it exactly.
"""

from __future__ import annotations

import json
import re
from typing import Any

_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\\ud800-\\udfff]")


def _may_hold_surrogates(body: bytes) -> bool:
    if _ESCAPED_SURROGATE.search(body):
        return True
    if body.isascii():
        return False
    try:
        body.decode("utf-8")  # strict UTF-8 has no encoded surrogates
    except UnicodeDecodeError:
        return True
    return False


def lone_surrogate_path(body: bytes) -> str | None:
    """Where a string holding a lone surrogate is ("messages.0.content"; "" for the body itself),
    or None. Surrogates in keys are written as `\\udXXX` escapes, so that the path can be sent
    back. A body that does not parse is left to the parser that runs afterwards."""
    if not _may_hold_surrogates(body):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                key_path = f"{path}.{_escaped(key)}" if path else _escaped(key)
                if _SURROGATE.search(key):
                    return key_path
                stack.append((key_path, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value))
    return None


def _escaped(key: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)
