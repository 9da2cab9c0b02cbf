"""The chat page over a real server on a free localhost port, driven through gradio_client
(the named API) and, when Debian's chromium is installed, a real browser (Playwright)."""
import re
import shutil
import socket
from pathlib import Path

import pytest

from qa.batcher import AskBatcher
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
def feedback_log(tmp_path_factory):
    return tmp_path_factory.mktemp("feedback") / "feedback.jsonl"


@pytest.fixture(scope="module")
def server(tiny_reader_dir, embedder, feedback_log):
    qa = DocumentQA.default(reader=str(tiny_reader_dir))
    qa.warm_up()
    url, demo = _serve(qa, feedback_log=feedback_log, batcher=AskBatcher(max_batch=8, max_wait=0.05))
    yield url
    demo.close()


class SlowQA(DocumentQA):
    """Reads for 1.5 s, so a browser can see what the page does while an answer is pending."""

    def read(self, *args, **kwargs):
        import time

        time.sleep(1.5)
        return super().read(*args, **kwargs)


@pytest.fixture(scope="module")
def slow_server(tiny_reader_dir, embedder):
    base = DocumentQA.default(reader=str(tiny_reader_dir))
    qa = SlowQA(base.store, base.reader)
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


def test_concurrent_api_calls_are_answered_together_and_each_gets_its_own(server, tiny_reader_dir):
    import threading

    from gradio_client import Client

    questions = ["Who is the NATO Secretary General?", "Who is the Kremlin spokesperson?",
                 "Which city is the focus of the fighting?", "What did Putin warn about?"] * 2
    got = [None] * len(questions)

    def one(i):
        got[i] = Client(server, verbose=False).predict(questions[i], 3, 0.0, api_name="/ask")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [a["question"] for a in got] == questions
    alone = DocumentQA.default(reader=str(tiny_reader_dir))
    for a in got[:4]:
        assert a["text"] == alone.ask(a["question"], passages=3, threshold=0.0).text


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


def test_the_threshold_slider_left_alone_means_the_readers_calibrated_rule():
    """The slider starts at the calibrated threshold; there it stands for the whole calibrated
    rule (None), which may also refuse by the reader's margin; moved, it is a plain threshold."""
    from types import SimpleNamespace

    from qa.calibration import Calibration
    from ui.app import Handlers

    cal = Calibration(threshold=0.3549, refusal_margin=-3.0)
    h = Handlers(SimpleNamespace(reader=SimpleNamespace(config=SimpleNamespace(calibration=cal))), [])
    assert h.default_threshold == 0.355
    assert h.threshold(0.355) is None and h.threshold("0.355") is None
    assert h.threshold(0.36) == 0.36 and h.threshold(0) == 0.0


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
    assert "Who is British Museum?" not in suggest_questions(document_from_text(
        "The British Museum opened. The British Museum is large. Visit the British Museum."))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _open_page(pw, server, viewport=(1100, 900), permissions=()):
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"])
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  permissions=list(permissions))
    page = context.new_page()
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


def _needs_chromium(f):
    return pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed "
                              "(.ci/run installs it)")(f)


@_needs_chromium
def test_browser_shows_the_question_at_once_and_queues_the_next(slow_server):
    from playwright.sync_api import sync_playwright

    ART.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser, page = _open_page(pw, slow_server)
        box = page.locator("#question textarea")
        box.fill("Who is the NATO Secretary General?")
        box.press("Enter")
        chat = page.locator("#chat")
        chat.get_by_text("Who is the NATO Secretary General?").wait_for(timeout=5_000)
        chat.get_by_text("Thinking…").first.wait_for(timeout=5_000)
        page.screenshot(path=str(ART / "pending.png"), full_page=True)
        box.fill("Who is the Kremlin spokesperson?")  # a second question while the first is pending
        box.press("Enter")
        chat.get_by_text("Who is the Kremlin spokesperson?").wait_for(timeout=5_000)
        page.wait_for_function("document.querySelector('#question textarea').value === ''")
        assert chat.get_by_text("Thinking…").count() >= 1
        box.fill("a draft I am still typing")
        page.locator("#chat mark.spanqa-answer").nth(1).wait_for(timeout=60_000)
        assert chat.get_by_text("Thinking…").count() == 0
        assert box.input_value() == "a draft I am still typing"  # the answers did not wipe it
        text = chat.inner_text()
        assert text.index("NATO Secretary General?") < text.index("Kremlin spokesperson?")
        browser.close()


@_needs_chromium
def test_browser_example_click_asks_it(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        example = page.locator("#examples button").first
        asked = example.inner_text().strip().rstrip(".").rstrip("…")
        example.click()
        page.locator("#chat mark.spanqa-answer").first.wait_for(timeout=60_000)
        assert asked[:40] in page.locator("#chat").inner_text()
        page.screenshot(path=str(ART / "example-click.png"), full_page=True)
        browser.close()


@_needs_chromium
def test_browser_upload_shows_progress_a_divider_and_back_keeps_the_chat(server, tmp_path):
    from playwright.sync_api import sync_playwright

    doc = tmp_path / "harbour.md"
    doc.write_text("# Harbour log\n\n" + "\n\n".join(
        f"Ship number {i} docked at pier {i % 7} carrying {i * 3} tonnes of grain for Anna Berg."
        for i in range(1600)))  # ~200 passages: a few seconds of indexing to watch
    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        _ask(page, "Who is the NATO Secretary General?", 0)
        page.locator("#upload-panel").get_by_text("Use your own document").first.click()
        page.locator("#upload input[type=file]").set_input_files(str(doc))
        progress = page.get_by_text(re.compile(r"indexing \d+/\d+ passages")).first
        progress.wait_for(timeout=30_000)
        page.screenshot(path=str(ART / "upload-progress.png"), full_page=True)
        page.locator("#upload-status").get_by_text("Loaded").wait_for(timeout=120_000)
        chat = page.locator("#chat")
        assert chat.get_by_text("New document").first.is_visible()
        assert "Harbour log" in page.locator("#doc-info").inner_text()
        _ask(page, "Who gets the grain?", 1)
        page.locator("#back").click()
        chat.get_by_text("Back to the bundled document").first.wait_for(timeout=10_000)
        # the chat was not wiped: both questions are still there
        assert "NATO Secretary General?" in chat.inner_text() and "grain?" in chat.inner_text()
        assert "Biden" in page.locator("#doc-info").inner_text()
        page.screenshot(path=str(ART / "upload-back.png"), full_page=True)
        browser.close()


@_needs_chromium
def test_browser_phone_layout_keeps_the_answer_and_its_confidence_in_view(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server, viewport=(390, 844))
        _ask(page, "Who is the NATO Secretary General?", 0)
        page.wait_for_timeout(500)
        for sel in ("#chat mark.spanqa-answer", "#chat .spanqa-conf"):
            box = page.locator(sel).first.bounding_box()
            assert box and 0 <= box["x"] and box["x"] + box["width"] <= 390 + 1, (sel, box)
            assert 0 <= box["y"] and box["y"] + box["height"] <= 844, (sel, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scroll
        page.screenshot(path=str(ART / "phone.png"))
        browser.close()


@_needs_chromium
def test_browser_controls_have_names_for_screen_readers_and_a_welcome(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        assert page.get_by_role("textbox", name="Question").count() == 1
        assert "spanqa answers questions about a document" in page.locator("#chat").inner_text()
        for name in ("Ask", "Copy answer", "Show the answer in the document", "Clear chat"):
            assert page.get_by_role("button", name=name).count() >= 1, name
        _ask(page, "Who is the NATO Secretary General?", 0)
        for name in ("Retry", "Undo", "Like", "Dislike"):  # the chat's icon buttons
            assert page.locator("#chat").get_by_role("button", name=name).count() >= 1, name
        browser.close()


@_needs_chromium
def test_browser_copy_gives_plain_text_and_the_document_view_shows_the_answer(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server, permissions=["clipboard-read", "clipboard-write"])
        _ask(page, "Who is the NATO Secretary General?", 0)
        answer = page.locator("#chat mark.spanqa-answer").first.inner_text()
        page.locator("#copy").click()
        page.get_by_text("Copied the answer").first.wait_for(timeout=10_000)
        copied = ""
        for _ in range(50):
            copied = page.evaluate("navigator.clipboard.readText()")
            if copied:
                break
            page.wait_for_timeout(200)
        assert answer in copied and "Source: Biden Greenlights" in copied
        assert "<" not in copied and "&#" not in copied
        page.locator("#show-in-doc").click()
        mark = page.locator("#doc-view #doc-answer")
        mark.wait_for(timeout=10_000)
        page.wait_for_timeout(600)  # the scroll
        view = page.locator("#doc-view").bounding_box()
        box = mark.bounding_box()
        assert mark.inner_text() == answer
        assert view["y"] <= box["y"] and box["y"] + box["height"] <= view["y"] + view["height"]
        page.screenshot(path=str(ART / "copy-and-document.png"), full_page=True)
        browser.close()


@_needs_chromium
def test_browser_undo_retry_and_like_act_on_the_last_answer(server, feedback_log):
    import json

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser, page = _open_page(pw, server)
        _ask(page, "Who is the NATO Secretary General?", 0)
        chat = page.locator("#chat")
        chat.get_by_role("button", name="Like").last.click()
        page.get_by_text("feedback was saved").first.wait_for(timeout=10_000)
        rec = json.loads(feedback_log.read_text().splitlines()[-1])
        assert rec["liked"] is True and rec["question"] == "Who is the NATO Secretary General?"
        chat.get_by_role("button", name="Retry").last.click()
        page.wait_for_timeout(1500)
        assert chat.inner_text().count("Who is the NATO Secretary General?") == 1
        assert chat.locator("mark.spanqa-answer").count() == 1
        chat.get_by_role("button", name="Undo").last.click()
        page.wait_for_function("document.querySelectorAll('#chat mark.spanqa-answer').length == 0",
                               timeout=10_000)
        assert page.locator("#question textarea").input_value() == "Who is the NATO Secretary General?"
        browser.close()
