"""Documents: loading files and strings into clean text with a stable id, a title and a source.

Text is normalised once, here (Unicode NFKC, one kind of newline, no control characters,
runs of spaces collapsed); every character offset anywhere in spanqa refers to this text,
so an answer span always maps back to the exact characters a person sees.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from index.errors import DocumentError

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
DOCX_MAX_UNZIPPED = 200 * 1024 * 1024  # a .docx is a zip: refuse one that inflates past this
MAX_FILE_BYTES = 20 * 1024 * 1024  # a 20 MB text is ~3M words: far beyond any one chat document

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DOCUMENT_CHARS = 5_000_000  # characters of clean text per file (~800k words); overridable
PDF_SECONDS = 60.0  # wall-clock budget for extracting one PDF's text, in a worker process
PDF_PAGE_CHARS = 200_000  # a page with more text than this is a bomb, not a page
_SPACES = re.compile(r"[ \t\u00a0]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def replace_surrogates(text: str) -> str:
    """Lone surrogates (undecodable bytes smuggled in by ``surrogateescape``, broken UTF-16)
    become U+FFFD, so every string spanqa keeps encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def normalize_text(text: str) -> str:
    """NFKC, ``\\n`` newlines, no control characters or lone surrogates, single spaces, at
    most one blank line."""
    text = unicodedata.normalize("NFKC", replace_surrogates(text)).replace("\r\n", "\n").replace("\r", "\n")
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
    # (offset, heading) where each section starts, when the format marks headings (.docx, .md)
    sections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def page_at(self, offset: int) -> int | None:
        """1-based page holding character ``offset``, or None when pages are unknown."""
        if not self.page_starts:
            return None
        return max(1, bisect_right(self.page_starts, offset))

    def section_at(self, offset: int) -> str | None:
        """The heading of the section holding character ``offset``, when headings are known."""
        i = bisect_right([s for s, _ in self.sections], offset)
        return self.sections[i - 1][1] if i else None

    def to_dict(self) -> dict:
        d = {"id": self.id, "title": self.title, "source": self.source,
             "page_starts": self.page_starts, "sha256": self.sha256}
        if self.sections:
            d["sections"] = [[s, h] for s, h in self.sections]
        return d


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


_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def markdown_sections(text: str) -> list[tuple[int, str]]:
    """(offset, heading) of each Markdown ``#`` heading line of clean text."""
    out, pos = [], 0
    for line in text.split("\n"):
        m = _MD_HEADING.match(line)
        if m:
            out.append((pos, m.group(1)[:200]))
        pos += len(line) + 1
    return out


def _docx_blocks(data: bytes, name: str) -> list[tuple[str, bool]]:
    """(text, is_heading) for each paragraph and table row of a .docx, in document order."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if sum(i.file_size for i in z.infolist()) > DOCX_MAX_UNZIPPED:
                raise DocumentError(f"{name} was refused: it unzips to over "
                                    f"{DOCX_MAX_UNZIPPED // 2**20} MiB.")
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        d = docx.Document(io.BytesIO(data))
        blocks = []
        for el in d.element.body.iterchildren():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "p":
                p = Paragraph(el, d)
                style = (p.style.name if p.style is not None else "") or ""
                blocks.append((p.text, style.startswith(("Heading", "Title"))))
            elif tag == "tbl":
                for row in Table(el, d).rows:
                    blocks.append((" | ".join(c.text.strip() for c in row.cells), False))
        return blocks
    except DocumentError:
        raise
    except Exception as exc:  # zipfile, lxml and python-docx raise many kinds on a bad file
        raise DocumentError(f"{name} is not a readable .docx file ({type(exc).__name__}).") from None


def _mb(n: int) -> str:
    """Bytes in MiB with enough digits that a refused size never reads as the limit."""
    return f"{math.ceil(n * 100 / 2**20) / 100:.2f} MiB" if n % 2**20 else f"{n // 2**20} MiB"


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{name} looks binary, not text; spanqa reads {', '.join(SUPPORTED_SUFFIXES)}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name} is not UTF-8 text (byte {exc.start} is invalid).") from None


def _extract_pdf(data: bytes, page_chars: int, max_chars: int) -> tuple[str, object]:
    """("ok", page texts) or ("error", reason): pypdf's extraction under budgets."""
    import io

    try:
        from pypdf import PdfReader

        pages, total = [], 0
        for page in PdfReader(io.BytesIO(data)).pages:
            text = page.extract_text() or ""
            if len(text) > page_chars:
                return "error", f"a page holds over {page_chars:,} characters of text"
            total += len(text)
            if total > max_chars:
                return "error", f"it holds over {max_chars:,} characters of text"
            pages.append(text)
        return "ok", pages
    except MemoryError:
        return "error", "extracting its text needs too much memory"
    except Exception as exc:  # pypdf raises many kinds on a broken file
        return "error", f"not a readable PDF ({type(exc).__name__})"


def _pdf_worker_main() -> None:
    """Entry point of the extraction process: PDF bytes on stdin, JSON on stdout."""
    import json
    import resource
    import sys

    page_chars, max_chars, memory = (int(x) for x in sys.argv[1:4])
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ValueError, OSError):
        pass
    kind, payload = _extract_pdf(sys.stdin.buffer.read(), page_chars, max_chars)
    sys.stdout.write(json.dumps([kind, payload]))


def _pdf_pages(data: bytes, name: str, seconds: float = PDF_SECONDS,
               max_chars: int = MAX_DOCUMENT_CHARS) -> list[str]:
    """Page texts of a PDF, extracted in a separate Python process that is killed when it
    runs past ``seconds`` or 2 GiB of address space: a small file can decompress into
    gigabytes, and a refused upload must stop costing CPU at once."""
    import json
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-c", "from index.documents import _pdf_worker_main as m; m()",
           str(PDF_PAGE_CHARS), str(max_chars), str(2 << 30)]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=seconds, env=env)
        kind, payload = json.loads(done.stdout or b'["error", null]')
        if kind != "ok" and payload is None:
            payload = ("extracting its text needs too much memory" if done.returncode
                       else "its text could not be extracted")
    except subprocess.TimeoutExpired:  # run() has killed the process
        kind, payload = "error", f"reading its text took over {seconds:.0f} s"
    except (OSError, ValueError) as exc:
        kind, payload = "error", f"its text could not be extracted ({type(exc).__name__})"
    if kind != "ok":
        raise DocumentError(f"{name} was refused: {payload}.")
    return payload


def load_bytes(data: bytes, name: str, id: str | None = None, title: str | None = None,
               source: str | None = None, max_bytes: int = MAX_FILE_BYTES,
               max_chars: int = MAX_DOCUMENT_CHARS, pdf_seconds: float = PDF_SECONDS) -> Document:
    """A document from the bytes of a file called ``name`` (its suffix picks the reader).
    Refused (``DocumentError``) past ``max_bytes`` of file or ``max_chars`` of text."""
    if not isinstance(data, (bytes, bytearray)):
        raise DocumentError(f"{name}: expected the file's bytes, got {type(data).__name__}.")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{name}: unsupported file type {suffix or '(none)'}; spanqa reads "
            f"{', '.join(SUPPORTED_SUFFIXES)}.")
    if len(data) > max_bytes:
        raise DocumentError(f"{name} is {_mb(len(data))}; the limit is {_mb(max_bytes)}.")
    doc_id = id or Path(name).name
    source = source or name
    if suffix == ".pdf":
        if not data.startswith(b"%PDF"):
            raise DocumentError(f"{name} is not a PDF (it lacks the %PDF header).")
        pages = [normalize_text(p) for p in _pdf_pages(bytes(data), name, pdf_seconds, max_chars)]
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
    if suffix == ".docx":
        blocks = [(normalize_text(t), h) for t, h in _docx_blocks(bytes(data), name)]
        parts, sections, pos = [], [], 0
        for text, heading in blocks:
            if not text:
                continue
            if heading:
                sections.append((pos, text[:200]))
            parts.append(text)
            pos += len(text) + 1
        text = "\n".join(parts)
        if len(text) > max_chars:
            raise DocumentError(f"{name} holds {len(text):,} characters; the limit is {max_chars:,}.")
        if not text.strip():
            raise DocumentError(f"The document {name} is empty.")
        return Document(id=doc_id, title=title or (sections[0][1] if sections else
                                                   _first_line_title(text, Path(name).stem)),
                        source=source, text=text, sections=sections)
    raw = _decode(bytes(data), name)
    if len(raw) > max_chars:  # cheap check before the expensive ones
        raise DocumentError(f"{name} holds {len(raw):,} characters; the limit is {max_chars:,}.")
    html_title = ""
    if suffix in (".html", ".htm"):
        raw, html_title = html_to_text(raw)
    doc = document_from_text(raw, id=doc_id, title=title or html_title or None, source=source)
    if suffix in (".md", ".markdown"):
        doc.sections = markdown_sections(doc.text)
    return doc


def load_file(path: str | Path, id: str | None = None, title: str | None = None,
              max_bytes: int = MAX_FILE_BYTES, max_chars: int = MAX_DOCUMENT_CHARS,
              pdf_seconds: float = PDF_SECONDS) -> Document:
    """A document from a ``.txt``, ``.md``, ``.html`` or ``.pdf`` file."""
    if not isinstance(path, (str, Path)):
        raise DocumentError(f"Expected a file path, got {type(path).__name__}.")
    p = Path(replace_surrogates(str(path))).expanduser()
    if not p.is_file():
        raise DocumentError(f"No file at {p}.")
    size = p.stat().st_size
    if size > max_bytes:
        raise DocumentError(f"{p.name} is {_mb(size)}; the limit is {_mb(max_bytes)}.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DocumentError(f"{p} could not be read ({exc.strerror or exc}).") from None
    return load_bytes(data, p.name, id=id, title=title, source=str(p.resolve()),
                      max_bytes=max_bytes, max_chars=max_chars, pdf_seconds=pdf_seconds)
