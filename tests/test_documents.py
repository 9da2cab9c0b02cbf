import pytest

from index.documents import (
    MAX_FILE_BYTES,
    document_from_text,
    html_to_text,
    load_bytes,
    load_file,
    normalize_text,
)
from index.errors import DocumentError
from tests.conftest import make_pdf


def test_normalize_collapses_whitespace_and_unicode():
    raw = "Ｆｕｌｌ\u00a0width\r\n\r\n\r\n\tline   two\x07 "
    assert normalize_text(raw) == "Full width\n\nline two"


def test_text_document_has_stable_id_title_and_source():
    a = document_from_text("Title line\nBody text.")
    b = document_from_text("Title line\nBody text.")
    assert a.id == b.id and a.id.startswith("text-")
    assert a.title == "Title line" and a.source == "<text>"
    assert document_from_text("x y", id="mine").id == "mine"


def test_txt_and_md_files(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha beta.\nGamma.", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Heading\n\nSome *text*.", encoding="utf-8")
    a = load_file(tmp_path / "a.txt")
    assert a.id == "a.txt" and a.text == "Alpha beta.\nGamma."
    b = load_file(tmp_path / "b.md")
    assert b.title == "Heading" and "Some *text*." in b.text


def test_html_keeps_only_visible_text():
    html = ("<html><head><title>Page T</title><style>p{color:red}</style></head><body>"
            "<script>var secret = 1;</script><h1>Head</h1><p>Visible &amp; kept.</p>"
            "<div>Second <b>block</b></div></body></html>")
    text, title = html_to_text(html)
    assert title == "Page T"
    assert "secret" not in text and "color" not in text
    doc = load_bytes(html.encode(), "page.html")
    assert doc.title == "Page T"
    assert doc.text == "Head\n\nVisible & kept.\n\nSecond block" or doc.text.split() == [
        "Head", "Visible", "&", "kept.", "Second", "block"]


def test_pdf_keeps_page_numbers():
    data = make_pdf(["First page words.", "The treaty was signed in Oslo.", "Third page."])
    doc = load_bytes(data, "report.pdf")
    at = doc.text.index("Oslo")
    assert doc.page_at(at) == 2
    assert doc.page_at(0) == 1
    assert doc.page_at(doc.text.index("Third")) == 3


@pytest.mark.parametrize("data,name,message", [
    (b"", "empty.txt", "empty"),
    (b"   \n\t ", "blank.txt", "empty"),
    (b"\x00\x01\x02binary", "x.txt", "binary"),
    (b"caf\xe9 latin-1", "x.txt", "not UTF-8"),
    (b"hello", "x.pptx", "unsupported file type"),
    (b"not a pdf", "x.pdf", "not a PDF"),
    (b"%PDF-1.4 garbage", "y.pdf", "not a readable PDF"),
])
def test_bad_documents_raise_clear_errors(data, name, message):
    with pytest.raises(DocumentError, match=message):
        load_bytes(data, name)


def test_too_large_file_is_refused(tmp_path):
    p = tmp_path / "big.txt"
    p.write_bytes(b"a" * 2048)
    with pytest.raises(DocumentError, match="limit"):
        load_file(p, max_bytes=1024)
    assert MAX_FILE_BYTES >= 1_000_000


def test_missing_file(tmp_path):
    with pytest.raises(DocumentError, match="No file"):
        load_file(tmp_path / "nope.txt")


def make_docx() -> bytes:
    import io

    import docx

    d = docx.Document()
    d.add_heading("Harbour report", 0)
    d.add_paragraph("The port handled ships all year.")
    d.add_heading("Finance", 1)
    d.add_paragraph("Revenue grew by 12 percent in 2023.")
    t = d.add_table(rows=1, cols=2)
    t.rows[0].cells[0].text, t.rows[0].cells[1].text = "Berths", "14"
    d.add_heading("Staff", 1)
    d.add_paragraph("The harbour master is Olu Bankole.")
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def test_docx_loads_with_headings_as_sections(tmp_path):
    from index.documents import load_file

    (tmp_path / "report.docx").write_bytes(make_docx())
    doc = load_file(tmp_path / "report.docx")
    assert doc.title == "Harbour report" and "Berths | 14" in doc.text
    at = doc.text.index("Olu Bankole")
    assert doc.section_at(at) == "Staff" and doc.section_at(doc.text.index("Revenue")) == "Finance"


def test_docx_answers_cite_their_section(tmp_path, tiny_reader_dir):
    from qa import DocumentQA

    (tmp_path / "report.docx").write_bytes(make_docx())
    qa = DocumentQA.from_files([tmp_path / "report.docx"], reader=str(tiny_reader_dir))
    a = qa.ask("Who is the harbour master?", threshold=0.0)
    doc = qa.store.documents[a.doc_id]
    assert a.section == doc.section_at(a.start) and a.section in {"Harbour report", "Finance", "Staff"}
    qa.save(tmp_path / "idx")
    assert DocumentQA.load(tmp_path / "idx").store.documents[a.doc_id].sections == doc.sections


@pytest.mark.parametrize("data", [b"PK\x03\x04 not a zip", b"plain text", b""])
def test_corrupt_docx_is_refused_cleanly(data):
    with pytest.raises(DocumentError, match="docx|empty"):
        load_bytes(data, "broken.docx")


def test_markdown_headings_are_sections():
    doc = load_bytes(b"# Guide\n\nIntro text.\n\n## Setup\n\nRun the installer.", "guide.md")
    assert doc.section_at(doc.text.index("Run")) == "Setup"
