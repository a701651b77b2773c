"""SSE events of the common streamed chunk, written straight to bytes.

Every streamed token costs one event. Building the pydantic chunk models and dumping them took about
a sixth of the server's CPU per token (benchmarks/results/server_overhead_cpu.json); here the parts
that never change within a request (id, created, model, field names) are encoded once, and an event
only encodes its text and finish reason. The bytes are those of the models' `model_dump_json` with
the `data: ` frame around them (tests/server/test_chunks.py compares the two on many texts).
Events with logprobs, tool calls, a legacy function_call or usage still go through the models.
"""

from __future__ import annotations

import msgspec

_encode = msgspec.json.Encoder().encode
_FRAME_END = b"\n\n"


def _head(request_id: str, object_name: str, created: int, model: str) -> bytes:
    return (
        b'data: {"id":'
        + _encode(request_id)
        + b',"object":"'
        + object_name.encode()
        + b'","created":'
        + str(int(created)).encode()
        + b',"model":'
        + _encode(model)
        + b',"choices":[{"index":'
    )


class ChatChunkEncoder:
    """`ChatCompletionChunk` with one choice whose delta is text only (content and/or reasoning)."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self._head = _head(request_id, "chat.completion.chunk", created, model)

    def text_delta(self, index: int, content: str | None, reasoning: str | None, finish_reason: str | None) -> bytes:
        return b"".join(
            (
                self._head,
                str(index).encode(),
                b',"delta":{"role":null,"content":',
                _encode(content),
                b',"reasoning_content":',
                _encode(reasoning),
                b',"tool_calls":null,"function_call":null},"logprobs":null,"finish_reason":',
                _encode(finish_reason),
                b'}],"usage":null}',
                _FRAME_END,
            )
        )


class CompletionChunkEncoder:
    """`CompletionResponse` with one choice and no logprobs, as a streamed chunk."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self._head = _head(request_id, "text_completion", created, model)

    def text(self, index: int, text: str, finish_reason: str | None, stop_reason: int | str | None) -> bytes:
        return b"".join(
            (
                self._head,
                str(index).encode(),
                b',"text":',
                _encode(text),
                b',"logprobs":null,"finish_reason":',
                _encode(finish_reason),
                b',"stop_reason":',
                _encode(stop_reason),
                b'}],"usage":null,"system_fingerprint":null}',
                _FRAME_END,
            )
        )
