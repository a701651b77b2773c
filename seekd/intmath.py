"""Integer arithmetic of blocks and tiles, named so that a call says what it computes."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of `b` cover `a` (a, b > 0)."""
    return -(-a // b)


def round_up(a: int, multiple: int) -> int:
    """`a` rounded up to a multiple of `multiple`."""
    return cdiv(a, multiple) * multiple
