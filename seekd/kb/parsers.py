"""Documents to text sections: txt, md, html, pdf (pypdf) and docx (python-docx).

A document becomes a list of `Section`s (heading path + body), so chunking can keep a chunk inside
one heading and every chunk can say where it came from. HTML goes through the standard library's
parser (script, style, nav, header, footer and forms dropped); the same cleaner serves fetched web
pages.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from seekd.errors import APIError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Section:
    heading: str  # "Title > Subtitle"; "" before the first heading
    text: str


def unsupported(name: str) -> APIError:
    return APIError(
        415, f"cannot read {name!r}: supported types are {', '.join(SUFFIXES)}", code="unsupported_document_type"
    )


def parse_document(name: str, data: bytes) -> list[Section]:
    """Sections of a document, by its file name's suffix. Raises APIError (415) for other types and
    (400) for a file its parser cannot read."""
    suffix = PurePath(name).suffix.lower()
    try:
        if suffix in (".txt",):
            return _plain(_decode(data))
        if suffix in (".md", ".markdown"):
            return parse_markdown(_decode(data))
        if suffix in (".html", ".htm"):
            return parse_html(_decode(data))
        if suffix == ".pdf":
            return _pdf(data)
        if suffix == ".docx":
            return _docx(data)
    except APIError:
        raise
    except Exception as e:  # each parser has its own error types; all mean "not a readable file"
        raise APIError(400, f"cannot parse {name!r}: {e}", code="unreadable_document") from e
    raise unsupported(name)


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):  # GB18030: Chinese files that are not UTF-8
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _plain(text: str) -> list[Section]:
    return [Section("", text)] if text.strip() else []


class _Headed:
    """Collects text under the current heading path."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.lines: list[str] = []

    def heading(self, level: int, title: str) -> None:
        self.flush()
        self.path = [(lvl, t) for lvl, t in self.path if lvl < level] + [(level, title.strip())]

    def add(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        text = "\n".join(self.lines).strip()
        if text:
            self.sections.append(Section(" > ".join(t for _, t in self.path), text))
        self.lines = []

    def done(self) -> list[Section]:
        self.flush()
        return self.sections


def parse_markdown(text: str) -> list[Section]:
    out = _Headed()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _MD_HEADING.match(line)
        if match:
            out.heading(len(match.group(1)), match.group(2))
        else:
            out.add(line)
    return out.done()


_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "nav", "header", "footer", "form", "svg", "template"})
_BLOCK_TAGS = frozenset({"p", "div", "li", "br", "tr", "section", "article", "blockquote", "pre", "table", "dd", "dt"})


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = _Headed()
        self.skip_depth = 0
        self.heading_level: int | None = None
        self.buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._line()
            self.heading_level = int(tag[1])
        elif tag in _BLOCK_TAGS:
            self._line()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading_level is not None:
            self.out.heading(self.heading_level, " ".join("".join(self.buf).split()))
            self.buf, self.heading_level = [], None
        elif tag in _BLOCK_TAGS:
            self._line()

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.buf.append(data)

    def _line(self) -> None:
        if self.heading_level is not None:
            return
        line = " ".join("".join(self.buf).split())
        if line:
            self.out.add(line)
        self.buf = []


def parse_html(text: str) -> list[Section]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._line()
    return parser.out.done()


def html_to_text(text: str) -> str:
    return "\n".join(s.text for s in parse_html(text))


def _pdf(data: bytes) -> list[Section]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return [
        Section(f"page {i}", text.strip()) for i, page in enumerate(reader.pages, 1) if (text := page.extract_text())
    ]


def _docx(data: bytes) -> list[Section]:
    import docx

    out = _Headed()
    for para in docx.Document(io.BytesIO(data)).paragraphs:
        style = para.style.name if para.style is not None else ""
        match = re.fullmatch(r"Heading (\d)", style or "")
        if match:
            out.heading(int(match.group(1)), para.text)
        elif style == "Title":
            out.heading(1, para.text)
        else:
            out.add(para.text)
    return out.done()
