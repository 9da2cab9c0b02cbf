"""The Gradio chat page: ``spanqa serve``.

One ``DocumentQA`` over the start-up document(s) is shared by every visitor; a visitor who
uploads a document gets a ``DocumentQA`` of their own in their session
(:class:`ui.session.ChatSession`, never seen by anyone else), built on the same shared
embedder and reader, so models load once. A question shows at once with a placeholder and is
answered in turn; follow-ups are read in the light of the conversation. Requests are queued
with a concurrency limit. Every handler turns errors into a message in the chat or a
``gr.Error`` for API callers; nothing a visitor sends can stop the server.

Named API endpoints (``gradio_client``): ``/ask`` (question, passages, threshold → answer as
JSON; a threshold at the slider's starting value means the reader's calibrated rule) and
``/upload`` (file → status); both act on the caller's session.
"""
from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from index.documents import SUPPORTED_SUFFIXES, Document, load_file
from index.store import DocumentStore, cached_store
from qa.batcher import AskBatcher
from qa.errors import SpanQAError
from qa.pipeline import DEFAULT_DOCUMENT, DocumentQA
from ui.render import CSS, WELCOME, safe_text
from ui.session import ChatSession
from ui.suggest import answerable_examples, candidate_questions

log = logging.getLogger("spanqa.ui")

MAX_UPLOAD_MB = 10
MAX_TEXT_CHARS = 1_000_000  # ~150k words: indexing stays under a minute on 2 cores
UPLOAD_PDF_SECONDS = 20.0  # a visitor's PDF gets less extraction time than the CLI's 60 s
DEFAULT_EXAMPLES = [
    "Who authorized Ukraine to use US weapons against targets in Russia?",
    "Which city is the focus of the fighting near the border?",
    "Who is the NATO Secretary General?",
    "What did Vladimir Putin warn about?",
    "Who is the Kremlin spokesperson?",
]


def suggest_questions(doc: Document, n: int = 4) -> list[str]:
    """Candidate example questions for ``doc`` (unchecked; see :mod:`ui.suggest`)."""
    return candidate_questions(doc, n)


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
    if progress is not None:  # not "if progress": a gr.Progress has a length, 0 at first
        progress(0.05, desc="reading")
    doc = load_file(path, max_bytes=MAX_UPLOAD_MB * 1024 * 1024, max_chars=MAX_TEXT_CHARS,
                    pdf_seconds=UPLOAD_PDF_SECONDS)
    store = DocumentStore(base.store.embedder, base.store.chunk_size, base.store.overlap,
                          base.store.factory)

    def on_batch(done, total):
        if progress is not None:
            progress(0.1 + 0.9 * done / total, desc=f"indexing {done}/{total} passages")

    store.add([doc], on_batch=on_batch)
    return DocumentQA(store, base.reader, base.retriever.top_k)


class Handlers:
    """What the page's events do, one short method each; the page wiring is in
    :func:`create_app`. Per-visitor state is a :class:`ui.session.ChatSession`."""

    def __init__(self, base: DocumentQA, examples: list[str], feedback_log=None,
                 batcher: AskBatcher | None = None):
        self.base, self.examples, self.feedback_log = base, examples, feedback_log
        self.batcher = batcher
        self.default_threshold = slider_start(base)

    def threshold(self, value) -> float | None:
        """The threshold slider's value as ``ask`` takes it: at its starting value, None (the
        reader's whole calibrated rule, which may also refuse by the reader's no-answer margin:
        see :mod:`qa.calibration`); moved, a plain confidence threshold."""
        value = float(value)
        return None if abs(value - self.default_threshold) < 1e-9 else value

    def session(self, chat: ChatSession | None) -> ChatSession:
        return chat if chat is not None else ChatSession(self.base, self.feedback_log)

    # the chat
    def submit(self, question, chat):
        chat = self.session(chat)
        if not chat.submit(question):
            gr.Warning("Please type a question first.")
            return chat, list(chat.messages), question
        return chat, list(chat.messages), ""

    def answer(self, chat, passages, threshold):
        chat = self.session(chat)
        chat.answer_pending(int(passages), self.threshold(threshold))
        return list(chat.messages)

    def retry(self, chat, passages, threshold):
        chat = self.session(chat)
        chat.retry(int(passages), self.threshold(threshold))
        return list(chat.messages)

    def undo(self, chat):
        chat = self.session(chat)
        question = chat.undo()
        return list(chat.messages), question

    def clear(self, chat):
        chat = self.session(chat)
        chat.clear()
        return chat, []

    def like(self, chat, data: gr.LikeData):
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        if chat is not None and chat.feedback(int(index), data.liked) is not None:
            gr.Info("Thanks: your feedback was saved.")

    def copy(self, chat):
        text = chat.copy_text() if chat is not None else ""
        if text:
            gr.Info("Copied the answer and its citation.")
        else:
            gr.Info("Ask a question first: there is no answer to copy yet.")
        return text

    def show_document(self, chat):
        html = chat.document_html() if chat is not None else ""
        if not html:
            gr.Info("No answer to show yet: ask a question first.")
            return gr.update(), gr.update()
        return html, gr.Accordion(open=True)

    # documents
    def upload(self, path, chat, progress=gr.Progress()):
        chat = self.session(chat)
        chat.loading = Path(path).name if path else None
        try:
            qa = load_upload(path, self.base, progress)
        except SpanQAError as exc:
            chat.loading = None
            return (chat, list(chat.messages), gr.update(),
                    f"⚠️ Not loaded: {safe_text(str(exc), False)}", gr.update())
        doc = next(iter(qa.store.documents.values()))
        progress(0.97, desc="choosing example questions")
        try:
            examples = answerable_examples(qa, doc)
        except Exception:  # noqa: BLE001 - examples are a nicety; the document is loaded
            log.exception("example questions failed")
            examples = []
        chat.use(qa)
        return (chat, list(chat.messages), describe(qa), loaded_status(qa),
                gr.update(samples=[[q] for q in examples], visible=bool(examples)))

    def back(self, chat):
        chat = self.session(chat)
        if chat.uploaded:
            chat.use(self.base)
        return (chat, list(chat.messages), describe(self.base), "Back to the bundled document.",
                gr.update(samples=[[q] for q in self.examples], visible=True), None)

    # the named API (gradio_client)
    def ask_api(self, question, passages, threshold, chat):
        qa = chat.qa if chat is not None else self.base
        ask = self.batcher.ask if self.batcher else (lambda qa, *a, **kw: qa.ask(*a, **kw))
        try:
            return ask(qa, question or "", passages=int(passages),
                       threshold=self.threshold(threshold)).to_dict()
        except SpanQAError as exc:
            raise gr.Error(str(exc)) from None
        except Exception:
            log.exception("ask failed")
            raise gr.Error("Something went wrong while answering; please try again.") from None

    def upload_api(self, path, chat, progress=gr.Progress()):
        chat = self.session(chat)
        try:
            qa = load_upload(path, self.base, progress)
        except SpanQAError as exc:
            raise gr.Error(f"Not loaded: {exc}") from None
        chat.use(qa)
        return chat, loaded_status(qa)


def loaded_status(qa: DocumentQA) -> str:
    doc = next(iter(qa.store.documents.values()))
    return (f"✅ Loaded **{safe_text(doc.title, False)}** ({len(qa.store)} passages). "
            "Questions now go to this document.")


def load_upload(path, base: DocumentQA, progress=None) -> DocumentQA:
    """The visitor's new DocumentQA; SpanQAError when refused (and the refused file is
    deleted from the upload folder at once). Behind ``serve --ray`` (``base`` a
    ``qa.cluster.RemoteQA``) a replica indexes the file."""
    try:
        if not isinstance(base, DocumentQA):
            if not path:
                raise SpanQAError("No file was received.")
            return base.upload(path, MAX_UPLOAD_MB * 1024 * 1024, MAX_TEXT_CHARS,
                               UPLOAD_PDF_SECONDS, progress)
        return build_upload(path, base, progress)
    except Exception as exc:
        if path:
            Path(path).unlink(missing_ok=True)
        if isinstance(exc, SpanQAError):
            raise
        log.exception("upload failed")
        raise SpanQAError("the file could not be read.") from None


# On a phone the page scrolls to the question box; bring the new answer's first line (answer
# and confidence) to the top and its highlight into view inside the quote.
_SHOW_ANSWER_JS = """() => { if (!window.matchMedia('(max-width: 640px)').matches) return;
  setTimeout(() => { const m = [...document.querySelectorAll('#chat mark.spanqa-answer')].pop();
    const b = [...document.querySelectorAll('#chat .spanqa-conf')].pop();
    if (m) m.scrollIntoView({block: 'nearest'});
    if (b) b.scrollIntoView({block: 'start'}); }, 100); }"""
_COPY_JS = "(text) => { if (text) navigator.clipboard.writeText(text); }"
_SCROLL_JS = ("() => { setTimeout(() => document.getElementById('doc-answer')"
              "?.scrollIntoView({block: 'center'}), 150); }")


def create_app(base: DocumentQA, examples: list[str] | None = None,
               feedback_log: str | Path | None = None,
               batcher: AskBatcher | None = None) -> gr.Blocks:
    """The page over ``base``. ``feedback_log``: a JSONL file that likes and dislikes of
    answers are appended to (off by default; ``spanqa serve --feedback-log``). ``batcher``:
    concurrent ``/ask`` calls are answered together (``spanqa serve`` uses one)."""
    docs = list(base.store.documents.values())
    if examples is None:
        bundled = len(docs) == 1 and docs[0].source == str(DEFAULT_DOCUMENT)
        examples = DEFAULT_EXAMPLES if bundled else answerable_examples(base, docs[0])
    h = Handlers(base, examples, feedback_log, batcher)
    with gr.Blocks(title="spanqa") as demo:
        ui = _layout(base, examples, feedback_log)
        _wire(h, ui)
    return demo


def slider_start(base: DocumentQA) -> float:
    """Where the threshold slider starts: the reader's calibrated threshold, as the slider
    shows it."""
    cfg = base.reader.config
    return round(float(cfg.calibration.threshold) if cfg else 0.5, 3)


def _layout(base: DocumentQA, examples: list[str], feedback_log) -> dict:
    """The page's components, by name."""
    gr.HTML(f"<style>{CSS}</style>", visible=True, elem_id="spanqa-style", padding=False)
    ui = {"chat": gr.State(None)}
    gr.Markdown("## spanqa · answers copied from your document")
    ui["info"] = gr.Markdown(describe(base), elem_id="doc-info")
    ui["chatbot"] = gr.Chatbot(
        label="Chat", height=520, elem_id="chat", sanitize_html=True, placeholder=WELCOME,
        # no built-in copy button: it copies markup; "Copy answer" gives plain text
        group_consecutive_messages=False, buttons=[])
    with gr.Row():
        ui["question"] = gr.Textbox(label="Question", show_label=False, scale=6, max_lines=4,
                                    placeholder="Ask about the document…", elem_id="question")
        ui["send"] = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
    ui["examples"] = gr.Dataset(components=[ui["question"]], samples=[[q] for q in examples],
                                label="Example questions (click to ask)", elem_id="examples")
    with gr.Row():
        ui["copy"] = gr.Button("Copy answer", size="sm", elem_id="copy")
        ui["show_doc"] = gr.Button("Show the answer in the document", size="sm", elem_id="show-in-doc")
        ui["clear"] = gr.Button("Clear chat", size="sm", elem_id="clear")
    ui["copy_text"] = gr.Textbox(visible=False, elem_id="copy-text")
    with gr.Accordion("Whole document", open=False, elem_id="doc-accordion") as acc:
        ui["doc_view"] = gr.HTML(elem_id="doc-view")
    ui["doc_accordion"] = acc
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        ui["passages"] = gr.Slider(1, 10, value=base.retriever.top_k, step=1,
                                   label="Passages to read", elem_id="passages",
                                   info="More passages find more answers and take longer.")
        ui["threshold"] = gr.Slider(
            0.0, 1.0, value=slider_start(base), step=0.01, elem_id="threshold",
            label="Say “the document doesn't say” below this confidence",
            info="In the same units as the answers' confidence: 0.20 means an answer shown at "
                 "under 20% becomes “the document doesn't say” (with the best guess shown as a guess). "
                 "Left where it starts, the reader's calibrated rule decides, which also refuses "
                 "answers the reader itself rates below “no answer”.")
    with gr.Accordion("Use your own document", open=False, elem_id="upload-panel"):
        ui["file"] = gr.File(label=f"Upload {' '.join(SUPPORTED_SUFFIXES)} (max {MAX_UPLOAD_MB} MB)",
                             file_types=list(SUPPORTED_SUFFIXES), type="filepath", elem_id="upload")
        ui["status"] = gr.Markdown(elem_id="upload-status")
        ui["back"] = gr.Button("Back to the bundled document", size="sm", elem_id="back")
    # the named API endpoints, for gradio_client
    ui["api_q"], ui["api_out"] = gr.Textbox(visible=False), gr.JSON(visible=False)
    ui["api_file"], ui["api_status"] = gr.File(visible=False, type="filepath"), gr.Markdown(visible=False)
    return ui


def _wire(h: Handlers, ui: dict) -> None:
    """Connect the page's events to the handlers."""
    chat, chatbot, question = ui["chat"], ui["chatbot"], ui["question"]
    settings = [ui["passages"], ui["threshold"]]
    private = {"api_visibility": "private"}
    # the named API first: the page's own (private) events would otherwise take these names
    # with a batcher, up to a batch of /ask calls wait in it together instead of in the queue
    ui["api_q"].submit(h.ask_api, [ui["api_q"], *settings, chat], ui["api_out"], api_name="ask",
                       concurrency_limit=h.batcher.max_batch if h.batcher else "default")
    ui["api_file"].upload(h.upload_api, [ui["api_file"], chat], [chat, ui["api_status"]],
                          api_name="upload")

    def ask(event):  # show the question at once, then answer in turn
        event(h.submit, [question, chat], [chat, chatbot, question], queue=False, **private).then(
            h.answer, [chat, *settings], chatbot, **private).then(
            None, None, None, js=_SHOW_ANSWER_JS, **private)

    ask(ui["send"].click)
    ask(question.submit)
    ask(ui["examples"].click(lambda s: s[0], ui["examples"], question, queue=False, **private).then)
    chatbot.retry(h.retry, [chat, *settings], chatbot, **private)
    chatbot.undo(h.undo, chat, [chatbot, question], **private)
    if h.feedback_log:  # like/dislike shows only when it is recorded
        chatbot.like(h.like, chat, None, **private)
    for clear in (ui["clear"].click, chatbot.clear):
        clear(h.clear, chat, [chat, chatbot], **private)
    ui["copy"].click(h.copy, chat, ui["copy_text"], **private).then(
        None, ui["copy_text"], None, js=_COPY_JS, **private)
    ui["show_doc"].click(h.show_document, chat, [ui["doc_view"], ui["doc_accordion"]], **private).then(
        None, None, None, js=_SCROLL_JS, **private)
    doc_outputs = [chat, chatbot, ui["info"], ui["status"], ui["examples"]]
    ui["file"].upload(h.upload, [ui["file"], chat], doc_outputs,
                      show_progress_on=[chatbot, ui["status"]], **private)
    for back in (ui["back"].click, ui["file"].clear):
        back(h.back, chat, [*doc_outputs, ui["file"]], **private)


def serve(index=None, docs=None, reader=None, host="127.0.0.1", port=7860, concurrency=2,
          block=True, feedback_log=None):
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
    return launch(create_app(base, feedback_log=feedback_log, batcher=AskBatcher()), host, port,
                  concurrency, block)


def launch(demo: gr.Blocks, host: str, port: int, concurrency: int, block: bool) -> gr.Blocks:
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    demo.launch(server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb",
                prevent_thread_lock=not block, show_error=True, footer_links=["api"])
    return demo


def serve_ray(index=None, docs=None, reader=None, address="auto", replicas=2, shared_dir=None,
              cpus_per_replica=1.0, host="127.0.0.1", port=7860, concurrency=16, block=True,
              feedback_log=None):
    """The same page with the answering pipeline on a Ray cluster (:mod:`qa.cluster`):
    ``replicas`` copies of the models, Serve batching the questions. ``index`` is a store's
    folder that every node can read; without one, the start-up documents are indexed here and
    saved under ``shared_dir``, where visitors' uploads are written too (on a cluster: a
    folder every node mounts)."""
    from qa.cluster import RemoteQA, call, connect, deploy

    shared = Path(shared_dir) if shared_dir else Path.home() / ".cache" / "spanqa" / "ray"
    (shared / "uploads").mkdir(parents=True, exist_ok=True)
    if isinstance(index, DocumentStore):
        store = index
        index = None
    elif index:
        store = DocumentStore.load(index)
    elif docs:
        store = DocumentStore()
        store.add([load_file(p) for p in docs])
    else:
        store = cached_store([DEFAULT_DOCUMENT])
    if index is None:  # where the replicas can read it: named by what it holds
        import hashlib

        key = hashlib.sha256("".join(sorted(d.sha256 for d in store.documents.values()))
                             .encode()).hexdigest()[:16]
        index = shared / f"index-{key}"
        store.save(index)
    connect(address)
    handle = deploy(str(index), reader, replicas, str(shared / "uploads"),
                    cpus_per_replica=cpus_per_replica)
    info = call(handle.describe)
    base = RemoteQA(handle, store, None, info["reader_config"], info["passages"], info["reader"],
                    shared / "uploads")
    base.ask(DEFAULT_EXAMPLES[0])
    return launch(create_app(base, feedback_log=feedback_log), host, port, concurrency, block)
