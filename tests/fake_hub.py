"""A model hub on 127.0.0.1 for the pull tests: the endpoints seekd's client uses, as the real hubs
answer them, plus faults a test switches on (a connection cut mid-file, corrupted bytes, a gate).

Hugging Face: GET /api/models/<repo>/revision/<rev>?blobs=true, GET /<repo>/resolve/<rev>/<path>
(LFS files redirect to /cdn/<sha256>), Range on both. ModelScope: GET
/api/v1/models/<repo>/repo/files?Revision=&Recursive=true and /api/v1/models/<repo>/repo?FilePath=.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_FROM = 1024  # files this big or bigger are LFS files (their sha256 listed), as on the hub


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]]
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token that opens it
    listed_sizes: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, path) -> a size to claim
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before cutting (once)
    corrupt_once: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def __enter__(self) -> FakeHub:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self, path: str) -> list[Seen]:
        """The GETs that sent bytes of `path` (resolve, CDN or ModelScope file)."""
        data = next(files[path] for files in self.repos.values() if path in files)
        sha = hashlib.sha256(data).hexdigest()
        direct = len(data) < LFS_FROM  # else the resolve only redirects to the CDN
        return [
            s
            for s in self.seen
            if sha in s.path or f"FilePath={path}" in s.path or (direct and s.path.endswith("/" + path))
        ]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _gate(self, repo: str) -> bool:
            token = hub.gated.get(repo)
            if token is None or self.headers.get("Authorization") == f"Bearer {token}":
                return True
            status = 403 if self.headers.get("Authorization") else 401
            message = f"Access to model {repo} is restricted. You must have access to it and be authenticated."
            self._json(status, {"error": message}, {"X-Error-Code": "GatedRepo"})
            return False

        def _bytes(self, path: str, data: bytes) -> None:
            start = 0
            if (asked := self.headers.get("Range")) is not None:
                start = int(asked.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            if path in hub.corrupt_once:
                hub.corrupt_once.discard(path)
                body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = hub.cut_after.pop(path, None)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            hub.seen.append(Seen("GET", self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                return self._hf_listing("/".join(parts[2:4]))
            if parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo", "files"]:
                return self._modelscope_listing("/".join(parts[3:5]))
            if parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo"]:
                repo = "/".join(parts[3:5])
                if self._gate(repo):
                    self._bytes(query["FilePath"], hub.repos[repo][query["FilePath"]])
                return None
            if parts[0] == "cdn":
                path = query["name"]
                return self._bytes(path, next(f[path] for f in hub.repos.values() if path in f))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), "/".join(parts[4:]))
            return self._json(404, {"error": "not found"})

        def _resolve(self, repo: str, path: str) -> None:
            if repo not in hub.repos or path not in hub.repos[repo]:
                return self._json(404, {"error": "Entry not found"})
            if not self._gate(repo):
                return None
            data = hub.repos[repo][path]
            if len(data) < LFS_FROM:
                return self._bytes(path, data)
            self.send_response(302)
            self.send_header("Location", f"/cdn/{hashlib.sha256(data).hexdigest()}?name={path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None

        def _hf_listing(self, repo: str) -> None:
            if repo not in hub.repos:
                return self._json(404, {"error": "Repository not found"})
            if not self._gate(repo):
                return None
            siblings = []
            for path, data in hub.repos[repo].items():
                size = hub.listed_sizes.get((repo, path), len(data))
                entry = {"rfilename": path, "size": size, "blobId": git_blob_id(data)}
                if len(data) >= LFS_FROM:
                    entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
                siblings.append(entry)
            return self._json(200, {"id": repo, "sha": hub.commit(repo), "siblings": siblings})

        def _modelscope_listing(self, repo: str) -> None:
            if repo not in hub.repos:
                return self._json(404, {"Code": 404, "Message": "model not found"})
            if not self._gate(repo):
                return None
            files = [
                {"Path": "docs", "Name": "docs", "Size": 0, "Sha256": "", "Type": "tree", "Revision": hub.commit(repo)}
            ]
            for path, data in hub.repos[repo].items():
                entry = {"Path": path, "Name": path.rsplit("/", 1)[-1], "Size": len(data), "Type": "blob"}
                files.append(entry | {"Sha256": hashlib.sha256(data).hexdigest(), "Revision": hub.commit(repo)})
            return self._json(200, {"Code": 200, "Data": {"Files": files}})

    return Handler
