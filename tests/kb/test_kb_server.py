"""Knowledge bases on a real `seekd serve` (the random-weight demo model) with API keys for two
tenants and a fake SearxNG on loopback: the document API, a chat whose citations point at passages
that exist, tenant isolation, and web search (cited, allowed for tenant A only, audited)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import docx
import httpx
import pytest
from live_server import ServerHandle, running_server

from seekd.ops.audit import verify
from seekd.ops.keys import KeyStore

from .corpus import LEAVE, PASSWORDS, SERVER_ROOM
from .fake_searxng import FakeSearxng

pytestmark = pytest.mark.slow

MODEL = "seekd-demo-random"


@pytest.fixture(scope="module")
def searxng() -> FakeSearxng:
    with FakeSearxng().running() as fake:
        yield fake


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("kb-server-data")
    store = KeyStore.in_data_dir(data_dir)
    return data_dir, {tenant: store.create(tenant)[0] for tenant in ("team-a", "team-b")}


@pytest.fixture(scope="module")
def server(keys, searxng, tmp_path_factory) -> ServerHandle:
    data_dir, _ = keys
    log = tmp_path_factory.mktemp("kb-server-log") / "server.log"
    flags = ["--web-search-endpoint", searxng.base_url, "--web-search-tenants", "team-a", "--web-search-results", "2"]
    with running_server(data_dir, log, *flags) as handle:
        yield handle
        assert "Traceback" not in handle.log(), handle.log()[-4000:]


def call(server: ServerHandle, key: str, method: str, path: str, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{server.api_url}{path}", headers=headers, timeout=120, **kw)


def chat(server: ServerHandle, key: str, question: str, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 8, **fields}
    return call(server, key, "POST", "/chat/completions", json=body)


def docx_bytes(paragraphs: list[tuple[str, str | None]]) -> bytes:
    document = docx.Document()
    for text, style in paragraphs:
        document.add_paragraph(text, style=style)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of text (Helvetica), built by hand: no PDF writer needed."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_documents_api_and_cited_chat(server: ServerHandle, keys) -> None:
    _, key = keys
    a = key["team-a"]
    assert call(server, a, "POST", "/knowledge_bases", json={"name": "handbook"}).status_code == 200
    assert call(server, a, "POST", "/knowledge_bases", json={"name": "handbook"}).status_code == 409
    sources = {
        "leave.md": {"text": LEAVE},
        "server-room.html": {"text": SERVER_ROOM},
        "passwords.txt": {"text": PASSWORDS},
        "lockers.docx": {
            "content_base64": base64.b64encode(
                docx_bytes([("Lockers", "Heading 1"), ("Each employee gets a locker on the second floor.", None)])
            ).decode()
        },
        "fire-drill.pdf": {"content_base64": base64.b64encode(minimal_pdf("Fire drills happen every March.")).decode()},
    }
    for name, body in sources.items():
        response = call(server, a, "POST", "/knowledge_bases/handbook/documents", json={"name": name, **body})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "added" and response.json()["chunks"] >= 1
    again = call(server, a, "POST", "/knowledge_bases/handbook/documents", json={"name": "leave.md", "text": LEAVE})
    assert again.json()["status"] == "unchanged"
    bad = call(server, a, "POST", "/knowledge_bases/handbook/documents", json={"name": "x.exe", "text": "MZ"})
    assert bad.status_code == 415
    listing = {d["name"]: d for d in call(server, a, "GET", "/knowledge_bases/handbook/documents").json()["data"]}
    assert set(listing) == set(sources)

    found = call(server, a, "POST", "/knowledge_bases/handbook/search", json={"query": "Where is my locker?", "k": 2})
    assert found.json()["data"][0]["document"] == "lockers.docx"
    pdf = call(server, a, "POST", "/knowledge_bases/handbook/search", json={"query": "When are fire drills?", "k": 1})
    assert pdf.json()["data"][0]["document"] == "fire-drill.pdf"

    response = chat(server, a, "机房温度要求是多少？", knowledge_bases=["handbook"])
    assert response.status_code == 200, response.text
    body = response.json()
    citations = body["citations"]
    assert citations and [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    texts = {"leave.md": LEAVE, "server-room.html": SERVER_ROOM, "passwords.txt": PASSWORDS}
    for c in citations:  # each cited passage exists: in a document of this knowledge base, at a valid position
        assert c["source"] == "knowledge_base" and c["knowledge_base"] == "handbook"
        assert 0 <= c["chunk"] < listing[c["document"]]["chunks"]
        if c["document"] in texts:
            assert all(part in texts[c["document"]] for part in c["text"].split())
    assert citations[0]["document"] == "server-room.html"
    assert "十八到二十七摄氏度" in citations[0]["text"]
    answer = body["choices"][0]["message"]["content"]
    assert "References:\n[1] handbook/server-room.html, chunk" in answer

    streamed = chat(server, a, "How often must passwords change?", knowledge_bases=["handbook"], stream=True)
    first = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))
    assert first["citations"][0]["document"] == "passwords.txt"

    removed = call(server, a, "DELETE", "/knowledge_bases/handbook/documents/passwords.txt")
    assert removed.status_code == 200 and "passwords.txt" not in {d["name"] for d in removed.json()["data"]}
    after = chat(server, a, "How often must passwords change?", knowledge_bases=["handbook"]).json()
    assert all(c["document"] != "passwords.txt" for c in after["citations"])


def test_tenant_b_cannot_search_or_cite_tenant_a(server: ServerHandle, keys) -> None:
    _, key = keys
    a, b = key["team-a"], key["team-b"]
    if call(server, a, "GET", "/knowledge_bases").json()["data"] == []:
        call(server, a, "POST", "/knowledge_bases", json={"name": "handbook"})
        call(server, a, "POST", "/knowledge_bases/handbook/documents", json={"name": "leave.md", "text": LEAVE})
    assert call(server, b, "GET", "/knowledge_bases").json()["data"] == []
    assert call(server, b, "POST", "/knowledge_bases/handbook/search", json={"query": "年假"}).status_code == 404
    assert chat(server, b, "年假有多少天？", knowledge_bases=["handbook"]).status_code == 404
    assert call(server, b, "GET", "/knowledge_bases/handbook/documents").status_code == 404
    assert call(server, b, "DELETE", "/knowledge_bases/handbook").status_code == 404

    # B's own knowledge base of the same name is a different one: only B's document comes back.
    assert call(server, b, "POST", "/knowledge_bases", json={"name": "handbook"}).status_code == 200
    own = "# B handbook\nTeam B gets twenty days of annual leave. 年假二十天。"
    call(server, b, "POST", "/knowledge_bases/handbook/documents", json={"name": "b-leave.md", "text": own})
    hits = call(server, b, "POST", "/knowledge_bases/handbook/search", json={"query": "年假有多少天", "k": 10}).json()
    assert {h["document"] for h in hits["data"]} == {"b-leave.md"}
    cited = chat(server, b, "年假有多少天？", knowledge_bases=["handbook"]).json()["citations"]
    assert {c["document"] for c in cited} == {"b-leave.md"}
    assert "leave.md" in {
        d["name"] for d in call(server, a, "GET", "/knowledge_bases/handbook/documents").json()["data"]
    }


def test_web_search_cited_policy_enforced_and_audited(server: ServerHandle, keys, searxng: FakeSearxng) -> None:
    data_dir, key = keys
    sent = len(searxng.queries)
    response = chat(server, key["team-a"], "How often should UPS batteries be replaced?", web_search=True)
    assert response.status_code == 200, response.text
    web = [c for c in response.json()["citations"] if c["source"] == "web"]
    assert {c["url"] for c in web} == {f"{searxng.base_url}/pages/ups", f"{searxng.base_url}/pages/cooling"}
    ups = next(c for c in web if c["url"].endswith("/ups"))
    assert "four years" in ups["text"] and "track()" not in ups["text"] and "Home | Docs" not in ups["text"]
    assert searxng.queries[sent:] == ["How often should UPS batteries be replaced?"]

    forbidden = chat(server, key["team-b"], "How often should UPS batteries be replaced?", web_search=True)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "web_search_forbidden"
    assert len(searxng.queries) == sent + 1  # nothing left the building for team-b

    audit = data_dir / "audit.jsonl"
    assert verify(audit).ok
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    searches = [r for r in records if r.get("event", "").startswith("web_search")]
    assert [r["event"] for r in searches] == ["web_search", "web_search_results"]
    assert all(r["tenant"] == "team-a" and r["endpoint"] == searxng.base_url for r in searches)
    assert len(searches[1]["urls"]) == 2
