"""Where kernel tests run: on CUDA, or on the CPU through Triton's interpreter, which
tests/conftest.py turns on where there is no GPU and which gets bfloat16 arithmetic wrong."""

from __future__ import annotations

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BF16_TILES = "Triton's CPU interpreter multiplies bfloat16 tiles wrongly; float32 covers the indexing"
