"""A SearxNG stand-in on loopback: `/search?q=...&format=json` answers results whose URLs point at
pages it serves itself, and it remembers every query it was sent."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGES = {
    "/pages/ups": (
        "UPS maintenance guide",
        "<html><body><nav>Home | Docs</nav><h1>UPS maintenance</h1><p>Replace the UPS batteries every "
        "four years.</p><p>The UPS self-test runs every Sunday at 02:00 and takes ten minutes.</p>"
        "<script>track()</script></body></html>",
    ),
    "/pages/cooling": (
        "Data centre cooling",
        "<html><body><h1>Cooling</h1><p>ASHRAE recommends inlet temperatures between 18 and 27 degrees "
        "Celsius.</p></body></html>",
    ),
}


class FakeSearxng:
    def __init__(self) -> None:
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/search":
                    fake.queries.append(parse_qs(url.query)["q"][0])
                    results = [
                        {"url": f"{fake.base_url}{path}", "title": title, "content": title}
                        for path, (title, _) in PAGES.items()
                    ]
                    self._send("application/json", json.dumps({"results": results}).encode())
                elif url.path in PAGES:
                    self._send("text/html; charset=utf-8", PAGES[url.path][1].encode())
                else:
                    self.send_error(404)

            def _send(self, kind: str, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeSearxng]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
