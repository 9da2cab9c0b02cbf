"""``DocumentQA``: the one facade over store, retriever and reader.

    qa = DocumentQA.from_files(["report.pdf"])        # or .from_texts([...]), .load(dir), .default()
    answer = qa.ask("Who approved the change?")
    answer.text, answer.score, answer.title, answer.start, answer.end, answer.passage_text

Models load once, lazily, and are shared by every ``DocumentQA`` in the process.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from index.documents import Document, document_from_text, load_file
from index.store import DocumentStore
from qa.errors import EmptyQuestionError
from qa.reader import ExtractiveReader, ReaderResult
from qa.retriever import DEFAULT_TOP_K, Retriever
from qa.types import Answer, Passage

DEFAULT_DOCUMENT = Path(__file__).resolve().parent / "data" / "us-weapons-in-russia.txt"
MAX_QUESTION_CHARS = 1000

_READERS: dict[tuple[str, str], ExtractiveReader] = {}
_READERS_LOCK = threading.Lock()


def shared_reader(model: str | Path | None = "default", device: str = "cpu") -> ExtractiveReader:
    """One reader per (model, device) in this process."""
    key = (str(model or "default"), device)
    with _READERS_LOCK:
        if key not in _READERS:
            _READERS[key] = ExtractiveReader(key[0], device=device)
        return _READERS[key]


def check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise EmptyQuestionError("Please ask a question: it is empty.")
    q = " ".join(question.split())
    if len(q) > MAX_QUESTION_CHARS:
        from qa.errors import QuestionTooLongError

        raise QuestionTooLongError(
            f"The question is {len(q)} characters long; the limit is {MAX_QUESTION_CHARS}.")
    return q


class DocumentQA:
    """Ask questions of a set of documents; every answer is a span copied from one of them."""

    def __init__(self, store: DocumentStore, reader: ExtractiveReader | str | None = None,
                 passages: int = DEFAULT_TOP_K):
        self.store = store
        self.reader = reader if isinstance(reader, ExtractiveReader) else shared_reader(reader)
        self.retriever = Retriever(store, top_k=passages)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_documents(cls, docs: list[Document], reader=None, passages: int = DEFAULT_TOP_K,
                       progress: bool | None = None, **store_options) -> "DocumentQA":
        store = DocumentStore(**store_options)
        store.add(docs, progress=progress)
        return cls(store, reader, passages)

    @classmethod
    def from_files(cls, paths, reader=None, passages: int = DEFAULT_TOP_K, **store_options):
        return cls.from_documents([load_file(p) for p in paths], reader, passages, **store_options)

    @classmethod
    def from_texts(cls, texts: list[str], ids: list[str] | None = None,
                   titles: list[str] | None = None, reader=None, passages: int = DEFAULT_TOP_K,
                   **store_options) -> "DocumentQA":
        ids = ids or [None] * len(texts)
        titles = titles or [None] * len(texts)
        docs = [document_from_text(t, id=i, title=n) for t, i, n in zip(texts, ids, titles)]
        return cls.from_documents(docs, reader, passages, **store_options)

    @classmethod
    def default(cls, reader=None, passages: int = DEFAULT_TOP_K) -> "DocumentQA":
        """Over the bundled article (US weapons used against targets in Russia)."""
        return cls.from_files([DEFAULT_DOCUMENT], reader, passages)

    @classmethod
    def load(cls, directory, reader=None, passages: int = DEFAULT_TOP_K) -> "DocumentQA":
        return cls(DocumentStore.load(directory), reader, passages)

    def save(self, directory) -> Path:
        return self.store.save(directory)

    def add_files(self, paths) -> list[str]:
        return self.store.add([load_file(p) for p in paths])

    def add_texts(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        ids = ids or [None] * len(texts)
        return self.store.add([document_from_text(t, id=i) for t, i in zip(texts, ids)])

    def remove(self, doc_id: str) -> None:
        self.store.remove(doc_id)

    def warm_up(self) -> None:
        """Load the embedder and the reader now rather than on the first question."""
        self.store.embedder.warm_up()
        self.reader.warm_up()

    def to_dict(self) -> dict:
        return {"type": "DocumentQA", "retriever": self.retriever.to_dict(),
                "reader": self.reader.to_dict()}

    # ---- asking ---------------------------------------------------------------------------
    def ask(self, question: str, top_k: int = 3, passages: int | None = None,
            threshold: float | None = None) -> Answer:
        """The best answer (``top_k - 1`` runner-ups in ``candidates``), or an abstention."""
        return self.ask_many([question], top_k, passages, threshold)[0]

    def ask_many(self, questions: list[str], top_k: int = 3, passages: int | None = None,
                 threshold: float | None = None, batch_size: int = 16) -> list[Answer]:
        """Answer many questions: retrieval and reading are batched ``batch_size`` at a time."""
        clean = [check_question(q) for q in questions]
        out: list[Answer] = []
        for i in range(0, len(clean), batch_size):
            t0 = time.perf_counter()
            qs = clean[i:i + batch_size]
            retrieved = self.retriever.retrieve_many(qs, passages)
            results = self.reader.predict_many(
                qs, [[p.chunk.text for p in ps] for ps in retrieved], top_k=max(top_k, 1),
                threshold=threshold, relevance=[[p.score for p in ps] for ps in retrieved],
                relevance_model=self.store.embedder.name)
            ms = (time.perf_counter() - t0) * 1000 / len(qs)
            for q, ps, r in zip(qs, retrieved, results):
                a = self._answer(q, ps, r)
                a.latency_ms = ms
                out.append(a)
        return out

    def _answer(self, question: str, passages: list[Passage], result: ReaderResult) -> Answer:
        spans = []
        for s in result.spans:
            p = passages[s.passage]
            c = p.chunk
            spans.append(Answer(
                question=question, text=s.text, score=s.score, abstained=False,
                no_answer_score=result.no_answer_score, doc_id=c.doc_id, title=p.title,
                passage_id=c.id, passage_text=c.text, start=c.start + s.char_start,
                end=c.start + s.char_end, passage_start=s.char_start, passage_end=s.char_end,
                page=self.store.documents[c.doc_id].page_at(c.start + s.char_start)))
        if result.abstained or not spans:
            return Answer(question=question, text="", score=0.0, abstained=True,
                          no_answer_score=result.no_answer_score, candidates=spans,
                          passages=passages)
        best = spans[0]
        best.candidates = spans[1:]
        best.passages = passages
        return best
