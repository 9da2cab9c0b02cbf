"""The Gradio chat page: ``spanqa serve``.

One ``DocumentQA`` over the start-up document(s) is shared by every visitor; a visitor who
uploads a document gets a ``DocumentQA`` of their own in their session state (never seen by
anyone else), built on the same shared embedder and reader, so models load once. Requests
are queued with a concurrency limit. Every handler turns errors into a message in the chat or
a ``gr.Error`` for API callers; nothing a visitor sends can stop the server.

Named API endpoints (``gradio_client``): ``/ask`` (question, passages, threshold → answer as
JSON) and ``/upload`` (file → status); both act on the caller's session.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import gradio as gr

from index.documents import SUPPORTED_SUFFIXES, Document, load_file
from index.store import DocumentStore
from qa.errors import SpanQAError
from qa.pipeline import DEFAULT_DOCUMENT, DocumentQA
from ui.render import CSS, answer_messages, safe_text

log = logging.getLogger("spanqa.ui")

MAX_UPLOAD_MB = 10
MAX_TEXT_CHARS = 1_000_000  # ~150k words: indexing stays under a minute on 2 cores
UPLOAD_PDF_SECONDS = 20.0  # a visitor's PDF gets less extraction time than the CLI's 60 s
DEFAULT_EXAMPLES = [
    "Who authorized Ukraine to use US weapons against targets in Russia?",
    "Which city is the focus of the fighting near the border?",
    "Who is the NATO Secretary General?",
    "What did Vladimir Putin warn about?",
    "What is the population of Kharkiv?",
]


_NOT_NAMES = {"The", "A", "An", "As", "In", "On", "At", "While", "However", "This", "That", "It",
              "He", "She", "They", "We", "But", "And", "For", "With", "After", "Before", "When", "Key"}
_TITLES = {"President", "Secretary", "General", "Minister", "Prime", "Dr", "Mr", "Mrs", "Ms",
           "Professor", "Prof", "Senator", "Governor", "King", "Queen", "Chancellor", "State",
           "Defense", "Defence", "Adviser", "National", "Security"}


def suggest_questions(doc: Document, n: int = 4) -> list[str]:
    """Example questions that fit a document: about its most frequent names and years.
    Headings (short lines without a full stop) are skipped; titles such as "President" are
    dropped from names."""
    names = Counter()
    for line in doc.text.split("\n"):
        if len(line.split()) <= 15 and not line.rstrip().endswith((".", "?", "!", '"')):
            continue  # a heading: capitalised words there are not names
        for m in re.finditer(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", line):
            words = m.group(0).split()
            while words and (words[0] in _TITLES or words[0] in _NOT_NAMES):
                words = words[1:]
            if len(words) >= 2:
                names[" ".join(words)] += 1
    years = Counter(re.findall(r"\b(1[5-9]\d\d|20\d\d)\b", doc.text))
    qs = []
    for name, _ in names.most_common(n):
        qs.append(f"Who is {name}?" if len(name.split()) in (2, 3) else f"What is {name}?")
    for year, _ in years.most_common(2):
        qs.append(f"What happened in {year}?")
    return qs[:n] or ["What is this document about?"]


def describe(qa: DocumentQA) -> str:
    docs = list(qa.store.documents.values())
    names = ", ".join(f"**{safe_text(d.title, False)}**" for d in docs[:3]) + (f" and {len(docs) - 3} more" if len(docs) > 3 else "")
    return f"Asking: {names} · {len(qa.store)} passages"


def build_upload(path: str, base: DocumentQA, progress=None) -> DocumentQA:
    """A new ``DocumentQA`` over one uploaded file, sharing ``base``'s models. Type, size
    (checked before the file is read) and encoding are ``load_file``'s checks; raises
    ``SpanQAError`` with a message for the visitor when the file is refused."""
    if not path:
        raise SpanQAError("No file was received.")
    if progress:
        progress(0.05, desc="reading")
    doc = load_file(path, max_bytes=MAX_UPLOAD_MB * 1024 * 1024, max_chars=MAX_TEXT_CHARS,
                    pdf_seconds=UPLOAD_PDF_SECONDS)
    store = DocumentStore(base.store.embedder, base.store.chunk_size, base.store.overlap,
                          base.store.factory)

    def on_batch(done, total):
        if progress:
            progress(0.1 + 0.9 * done / total, desc=f"indexing {done}/{total} passages")

    store.add([doc], on_batch=on_batch)
    return DocumentQA(store, base.reader, base.retriever.top_k)


def create_app(base: DocumentQA, examples: list[str] | None = None) -> gr.Blocks:
    docs = list(base.store.documents.values())
    if examples is None:
        bundled = len(docs) == 1 and docs[0].source == str(DEFAULT_DOCUMENT)
        examples = DEFAULT_EXAMPLES if bundled else suggest_questions(docs[0])
    base_examples = examples
    default_threshold = float(base.reader.config.calibration.threshold) if base.reader.config else 0.5

    def current(session) -> DocumentQA:
        return session or base

    def ask_api(question, passages, threshold, session):
        try:
            a = current(session).ask(question or "", passages=int(passages), threshold=float(threshold))
            return a.to_dict()
        except SpanQAError as exc:
            raise gr.Error(str(exc)) from None
        except Exception:
            log.exception("ask failed")
            raise gr.Error("Something went wrong while answering; please try again.") from None

    def on_chat(question, history, session, conv, passages, threshold):
        history = list(history or [])
        if not (question or "").strip():
            gr.Warning("Please type a question first.")
            return history, question, conv
        history.append({"role": "user", "content": question})
        qa = current(session)
        if conv is None or conv.qa is not qa:  # a new visitor, or a new document took over
            conv = qa.chat()
        try:
            a = conv.ask(question, passages=int(passages), threshold=float(threshold))
            history.extend(answer_messages(a))
        except SpanQAError as exc:
            history.append({"role": "assistant", "content": f"⚠️ {safe_text(str(exc), False)}"})
        except Exception:
            log.exception("chat failed")
            history.append({"role": "assistant", "content": "⚠️ Something went wrong; please try again."})
        return history, "", conv

    def load_upload(path, progress) -> tuple[DocumentQA, str]:
        """The visitor's new DocumentQA and a status line; SpanQAError when refused (and the
        refused file is deleted from the upload folder at once)."""
        try:
            qa = build_upload(path, base, progress)
        except Exception as exc:
            if path:
                Path(path).unlink(missing_ok=True)
            if isinstance(exc, SpanQAError):
                raise
            log.exception("upload failed")
            raise SpanQAError("the file could not be read.") from None
        doc = next(iter(qa.store.documents.values()))
        return qa, (f"✅ Loaded **{safe_text(doc.title, False)}** ({len(qa.store)} passages). "
                    "Questions now go to this document.")

    def on_upload(path, session, progress=gr.Progress()):
        try:
            qa, status = load_upload(path, progress)
        except SpanQAError as exc:
            return session, gr.update(), f"⚠️ Not loaded: {safe_text(str(exc), False)}", gr.update()
        doc = next(iter(qa.store.documents.values()))
        return qa, describe(qa), status, gr.update(samples=[[q] for q in suggest_questions(doc)])

    def upload_api(path, session, progress=gr.Progress()):
        try:
            return load_upload(path, progress)
        except SpanQAError as exc:
            raise gr.Error(f"Not loaded: {exc}") from None

    def on_reset():
        return None, describe(base), "Back to the bundled document.", gr.update(samples=[[q] for q in base_examples]), []

    with gr.Blocks(title="spanqa") as demo:
        gr.HTML(f"<style>{CSS}</style>", visible=True, elem_id="spanqa-style", padding=False)
        session = gr.State(None)
        conversation = gr.State(None)  # this visitor's Conversation (follow-ups read in context)
        gr.Markdown("## spanqa · answers copied from your document")
        info = gr.Markdown(describe(base), elem_id="doc-info")
        chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chat", sanitize_html=True)
        with gr.Row():
            question = gr.Textbox(placeholder="Ask about the document…", show_label=False,
                                  scale=6, elem_id="question", max_lines=4)
            send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        example_set = gr.Dataset(components=[question], samples=[[q] for q in base_examples],
                                 label="Example questions")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            passages = gr.Slider(1, 10, value=base.retriever.top_k, step=1, label="Passages to read",
                                 elem_id="passages")
            threshold = gr.Slider(0.0, 1.0, value=round(default_threshold, 3), step=0.01,
                                  label="Say “the document doesn't say” below this confidence",
                                  elem_id="threshold")
        with gr.Accordion("Use your own document", open=False):
            file = gr.File(label=f"Upload {' '.join(SUPPORTED_SUFFIXES)} (max {MAX_UPLOAD_MB} MB)",
                           file_types=list(SUPPORTED_SUFFIXES), type="filepath", elem_id="upload")
            status = gr.Markdown(elem_id="upload-status")
            back = gr.Button("Back to the bundled document", size="sm")
        clear = gr.ClearButton([chatbot, question], value="Clear chat")
        clear.click(lambda: None, None, conversation, api_visibility="private")

        example_set.click(lambda s: s[0], example_set, question, api_visibility="private")
        for trigger in (send.click, question.submit):
            trigger(on_chat, [question, chatbot, session, conversation, passages, threshold],
                    [chatbot, question, conversation], api_visibility="private")
        file.upload(on_upload, [file, session], [session, info, status, example_set],
                    api_visibility="private")
        back.click(on_reset, None, [session, info, status, example_set, chatbot], api_visibility="private")

        # The named API endpoints, for gradio_client.
        api_q = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        api_file = gr.File(visible=False, type="filepath")
        api_status = gr.Markdown(visible=False)
        api_q.submit(ask_api, [api_q, passages, threshold, session], api_out, api_name="ask")
        api_file.upload(upload_api, [api_file, session], [session, api_status], api_name="upload")
    return demo


def serve(index=None, docs=None, reader=None, host="127.0.0.1", port=7860, concurrency=2,
          block=True):
    """Load models, warm them with one question, and start the page. ``index`` is a saved
    index's folder or an already loaded ``DocumentStore``."""
    if isinstance(index, DocumentStore):
        base = DocumentQA(index, reader=reader)
    elif index:
        base = DocumentQA.load(index, reader=reader)
    elif docs:
        base = DocumentQA.from_files(docs, reader=reader)
    else:
        base = DocumentQA.default(reader=reader)
    base.warm_up()
    base.ask(DEFAULT_EXAMPLES[0])  # the first visitor should not pay for the first forward pass
    demo = create_app(base)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    demo.launch(server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb",
                prevent_thread_lock=not block, show_error=True, footer_links=["api"])
    return demo
