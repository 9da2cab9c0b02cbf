"""The chat page over a real server on a free localhost port, driven through gradio_client
(the named API) and, when Debian's chromium is installed, a real browser (Playwright)."""
import shutil
import socket
from pathlib import Path

import pytest

from qa.pipeline import DocumentQA
from qa.types import Answer
from ui.app import create_app, suggest_questions
from ui.render import answer_messages

ART = Path(__file__).resolve().parent / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(qa: DocumentQA, **app_options):
    """The page over ``qa`` on a free localhost port: (url, demo)."""
    demo = create_app(qa, **app_options)
    demo.queue(default_concurrency_limit=2, max_size=16)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                max_file_size="10mb", quiet=True)
    return f"http://127.0.0.1:{port}/", demo


@pytest.fixture(scope="module")
def server(tiny_reader_dir, embedder):
    qa = DocumentQA.default(reader=str(tiny_reader_dir))
    qa.warm_up()
    url, demo = _serve(qa)
    yield url
    demo.close()


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_api_answers_with_a_span_of_the_article(client):
    a = client.predict("Who is the NATO Secretary General?", 3, 0.0, api_name="/ask")
    assert not a["abstained"] and a["text"]
    assert a["passage_text"][a["passage_start"]:a["passage_end"]] == a["text"]
    assert a["title"].startswith("Biden Greenlights")


def test_api_abstains_above_every_confidence(client):
    a = client.predict("Who is the NATO Secretary General?", 3, 1.0, api_name="/ask")
    assert a["abstained"] and a["text"] == "" and a["passages"]


def test_upload_is_private_to_its_session(client, server, tmp_path):
    from gradio_client import Client, handle_file

    doc = tmp_path / "fox.md"
    doc.write_text("# Fox report\n\nThe red fox was seen by Anna Berg in the valley in 2019.")
    status = client.predict(handle_file(str(doc)), api_name="/upload")
    assert "Loaded" in status and "Fox report" in status
    mine = client.predict("Who saw the fox?", 3, 0.0, api_name="/ask")
    assert mine["doc_id"] == "fox.md" and mine["text"] in doc.read_text()
    other = Client(server, verbose=False).predict("Who saw the fox?", 3, 0.0, api_name="/ask")
    assert other["doc_id"] == "us-weapons-in-russia.txt"


@pytest.mark.parametrize("name,data,why", [
    ("bin.txt", b"\x00\x01\x02 binary", "binary"),
    ("slides.pptx", b"PK\x03\x04", "reads"),
    ("fake.pdf", b"%PDF-1.7 not really", "PDF"),
    ("empty.md", b"   ", "empty"),
])
def test_refused_uploads_say_why_and_the_server_lives_on(client, tmp_path, name, data, why):
    from gradio_client import handle_file

    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(Exception, match=why):
        client.predict(handle_file(str(p)), api_name="/upload")
    a = client.predict("Who is the NATO Secretary General?", 3, 0.0, api_name="/ask")
    assert a["doc_id"] == "us-weapons-in-russia.txt"  # the session still has the article


def test_empty_question_is_an_error_not_a_crash(client):
    with pytest.raises(Exception, match="empty"):
        client.predict("   ", 3, 0.5, api_name="/ask")


def test_rendering_escapes_document_markup():
    a = Answer(question="q", text="<b>x</b>", score=0.9, abstained=False, no_answer_score=0.1,
               doc_id="d", title="<script>alert(1)</script>", passage_text="before <b>x</b> after",
               start=7, end=15, passage_start=7, passage_end=15)
    html = answer_messages(a)[0]["content"]
    assert "<script>" not in html and "&#60;script&#62;" in html
    assert '<mark class="spanqa-answer">&#60;b&#62;x&#60;/b&#62;</mark>' in html


def test_suggested_questions_fit_the_document():
    from index.documents import document_from_text

    doc = document_from_text("Marie Curie won in 1903. Marie Curie later won again in 1911.")
    qs = suggest_questions(doc)
    assert "Who is Marie Curie?" in qs and any("1903" in q or "1911" in q for q in qs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _open_page(pw, server):
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#question textarea").wait_for(timeout=60_000)
    # Settings: threshold 0 so the random tiny reader always answers.
    page.locator("#settings").get_by_text("Settings").first.click()
    slider = page.locator("#threshold input[type=number]")
    slider.fill("0")
    slider.press("Enter")
    return browser, page


def _ask(page, question: str, nth: int) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    page.locator("#chat mark.spanqa-answer").nth(nth).wait_for(timeout=60_000)


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_reads_a_follow_up_as_a_follow_up(server):
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        _ask(page, "Who is the Kremlin spokesperson?", 0)
        _ask(page, "What did he accuse the US and NATO of?", 1)
        note = page.locator("#chat").get_by_text("Read as:").first
        assert note.is_visible() and " he " not in note.inner_text()
        page.screenshot(path=str(ART / "follow-up.png"), full_page=True)
        browser.close()


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_asks_and_sees_the_highlighted_answer(server):
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        page.locator("#question textarea").fill("Who is the NATO Secretary General?")
        page.locator("#ask").click()
        mark = page.locator("#chat mark.spanqa-answer").first
        mark.wait_for(timeout=60_000)
        answer = mark.inner_text()
        assert answer and answer in Path(DocumentQA.default().store.documents[
            "us-weapons-in-russia.txt"].source).read_text(encoding="utf-8")
        assert page.locator("#chat").get_by_text("confidence").first.is_visible()
        page.screenshot(path=str(ART / "chat.png"), full_page=True)
        browser.close()


HOSTILE = ("# Big heading\n\nThe **vault code** is `ZQ-99` and the curator is [Ines Rask](http://127.0.0.1:9/x)."
           " ![tracker](http://127.0.0.1:9/pixel.png) <img src=x onerror=alert(1)> _under_ ~~gone~~")


@pytest.fixture(scope="module")
def hostile_server(tiny_reader_dir, embedder):
    qa = DocumentQA.from_texts([HOSTILE], ids=["hostile.md"], reader=str(tiny_reader_dir))
    url, demo = _serve(qa, examples=["What is the vault code?"])
    yield url
    demo.close()


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_shows_a_documents_markup_as_text_and_loads_nothing_remote(hostile_server):
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, hostile_server)
        remote = []
        page.on("request", lambda r: remote.append(r.url) if ":9/" in r.url else None)
        _ask(page, "What is the vault code?", 0)
        chat = page.locator("#chat")
        assert chat.locator("img").count() == 0 and chat.locator("a[href*=':9/']").count() == 0
        assert chat.locator("h1, code, del").count() == 0  # no heading, code or strike-through
        assert "**vault code**" in chat.inner_text() or "**" in chat.inner_text()
        page.screenshot(path=str(ART / "hostile-markup.png"), full_page=True)
        assert not remote
        browser.close()


def _contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two CSS rgb()/rgba() colours."""
    import re

    def lum(c):
        r, g, b = (int(x) / 255 for x in re.findall(r"[\d.]+", c)[:3])
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (r, g, b)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_browser_answer_highlight_and_confidence_are_readable(server, theme):
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server + f"?__theme={theme}")
        _ask(page, "Who is the NATO Secretary General?", 0)
        mark = page.locator("#chat mark.spanqa-answer").first
        fg, bg = mark.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
        assert _contrast(fg, bg) >= 4.5, (fg, bg)
        badge = page.locator("#chat .spanqa-conf").first
        word = badge.inner_text()
        assert word.split()[0] in {"high", "medium", "low"}
        color = badge.evaluate("e => getComputedStyle(e).color")
        bubble = badge.evaluate("""e => { let n = e; while (n) { const c = getComputedStyle(n)
            .backgroundColor; if (c && !c.endsWith(', 0)') && c !== 'transparent') return c;
            n = n.parentElement; } return 'rgb(255, 255, 255)'; }""")
        assert _contrast(color, bubble) >= 4.5, (theme, color, bubble)
        page.screenshot(path=str(ART / f"contrast-{theme}.png"), full_page=True)
        browser.close()
