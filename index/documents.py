"""Documents: loading files and strings into clean text with a stable id, a title and a source.

Text is normalised once, here (Unicode NFKC, one kind of newline, no control characters,
runs of spaces collapsed); every character offset anywhere in spanqa refers to this text,
so an answer span always maps back to the exact characters a person sees.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from index.errors import DocumentError

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
MAX_FILE_BYTES = 20 * 1024 * 1024  # a 20 MB text is ~3M words: far beyond any one chat document

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFKC, ``\\n`` newlines, no control characters, single spaces, at most one blank line."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Document:
    """A clean document. ``page_starts[i]`` is the offset where page ``i + 1`` begins (PDFs)."""

    id: str
    title: str
    source: str
    text: str
    page_starts: list[int] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character ``offset``, or None when pages are unknown."""
        if not self.page_starts:
            return None
        return max(1, bisect_right(self.page_starts, offset))

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "source": self.source,
                "page_starts": self.page_starts, "sha256": self.sha256}


def _first_line_title(text: str, fallback: str) -> str:
    for line in text.split("\n"):
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return fallback


def document_from_text(text: str, id: str | None = None, title: str | None = None,
                       source: str = "<text>") -> Document:
    """A document from a Python string. The id defaults to a hash of the clean text, so the
    same text always gets the same id."""
    if not isinstance(text, str):
        raise DocumentError(f"Expected text, got {type(text).__name__}.")
    clean = normalize_text(text)
    if not clean:
        raise DocumentError(f"The document {title or id or source} is empty.")
    doc_id = id or f"text-{sha256_text(clean)[:12]}"
    return Document(id=doc_id, title=title or _first_line_title(clean, doc_id), source=source,
                    text=clean)


class _VisibleText(HTMLParser):
    """Collects the text a browser would show: no script, style, head or template content;
    block elements end a line."""

    HIDDEN = {"script", "style", "head", "title", "template", "noscript", "svg"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr",
             "table", "section", "article", "header", "footer", "blockquote", "pre", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self._hidden += 1
            self._in_title = tag == "title"
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, <title>) of an HTML page."""
    p = _VisibleText()
    p.feed(html)
    p.close()
    text = "".join(p.parts)
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return text, " ".join("".join(p.title_parts).split())


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{name} looks binary, not text; spanqa reads {', '.join(SUPPORTED_SUFFIXES)}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name} is not UTF-8 text (byte {exc.start} is invalid).") from None


def _pdf_pages(data: bytes, name: str) -> list[str]:
    import io

    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        return [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on a broken file
        raise DocumentError(f"{name} is not a readable PDF ({type(exc).__name__}).") from None


def load_bytes(data: bytes, name: str, id: str | None = None, title: str | None = None,
               source: str | None = None, max_bytes: int = MAX_FILE_BYTES) -> Document:
    """A document from the bytes of a file called ``name`` (its suffix picks the reader)."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{name}: unsupported file type {suffix or '(none)'}; spanqa reads "
            f"{', '.join(SUPPORTED_SUFFIXES)}.")
    if len(data) > max_bytes:
        raise DocumentError(f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    doc_id = id or Path(name).name
    source = source or name
    if suffix == ".pdf":
        if not data.startswith(b"%PDF"):
            raise DocumentError(f"{name} is not a PDF (it lacks the %PDF header).")
        pages = [normalize_text(p) for p in _pdf_pages(data, name)]
        starts, parts, pos = [], [], 0
        for p in pages:
            starts.append(pos)
            parts.append(p)
            pos += len(p) + 2  # pages are joined by a blank line
        text = "\n\n".join(parts)
        if not text.strip():
            raise DocumentError(f"{name} has no extractable text (a scanned PDF needs OCR first).")
        return Document(id=doc_id, title=title or _first_line_title(text, Path(name).stem),
                        source=source, text=text, page_starts=starts)
    raw = _decode(data, name)
    html_title = ""
    if suffix in (".html", ".htm"):
        raw, html_title = html_to_text(raw)
    doc = document_from_text(raw, id=doc_id, title=title or html_title or None, source=source)
    return doc


def load_file(path: str | Path, id: str | None = None, title: str | None = None,
              max_bytes: int = MAX_FILE_BYTES) -> Document:
    """A document from a ``.txt``, ``.md``, ``.html`` or ``.pdf`` file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DocumentError(f"No file at {p}.")
    size = p.stat().st_size
    if size > max_bytes:
        raise DocumentError(f"{p.name} is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    return load_bytes(p.read_bytes(), p.name, id=id, title=title, source=str(p.resolve()),
                      max_bytes=max_bytes)
