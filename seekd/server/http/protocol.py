"""uvicorn's HTTP protocol, except that requests it cannot parse get an OpenAI error object.

uvicorn answers a malformed request line, header or chunked body itself, before any ASGI code runs,
with a plain-text 400. Clients and gateways in front of seekd parse every error body as
`{"error": {...}}`; this keeps that true for the few errors the application never sees.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def malformed_http_body(msg: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": f"malformed HTTP request: {msg}",
                "type": "invalid_request_error",
                "param": None,
                "code": "malformed_http",
            }
        }
    ).encode()


class OpenAIErrorHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        body = malformed_http_body(msg)
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
