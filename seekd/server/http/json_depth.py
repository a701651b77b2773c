"""Nesting depth of a JSON body, measured before it is parsed.

Python's json parser recurses per nesting level: a body of 100,000 `[` raises RecursionError, which
frameworks turn into a 500. Counting brackets outside strings is linear and runs in numpy, so even
a body at the size limit costs milliseconds.
"""

from __future__ import annotations

import re

import numpy as np

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays and objects (0 for a scalar). Malformed JSON gets some number; the
    parser that runs afterwards reports it."""
    outside = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    opens = (outside == ord("[")) | (outside == ord("{"))
    closes = (outside == ord("]")) | (outside == ord("}"))
    return int(np.cumsum(opens.astype(np.int32) - closes.astype(np.int32)).max(initial=0))


def deeper_than(body: bytes, limit: int) -> bool:
    """Cheap first: a body with at most `limit` opening brackets cannot nest deeper."""
    return body.count(b"[") + body.count(b"{") > limit and json_depth(body) > limit
