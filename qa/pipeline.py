"""``DocumentQA``: the one facade over store, retriever and reader.

    qa = DocumentQA.from_files(["report.pdf"])        # or .from_texts([...]), .load(dir), .default()
    answer = qa.ask("Who approved the change?")
    answer.text, answer.score, answer.title, answer.start, answer.end, answer.passage_text

Models load once, lazily, and are shared by every ``DocumentQA`` in the process.
"""
from __future__ import annotations

import os
import threading
import time
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from index.documents import Document, document_from_text, load_file, replace_surrogates
from index.store import DocumentStore, cached_store
from qa.calibration import Calibration
from qa.errors import DocumentError, EmptyQuestionError, OptionError
from qa.reader import READ_ALL_ENV, RUNTIME_ENV, ExtractiveReader
from qa.retriever import DEFAULT_TOP_K, Retriever
from qa.scoring import ReaderResult, score_spans
from qa.types import Answer, Passage

if TYPE_CHECKING:
    from qa.conversation import Conversation

DEFAULT_DOCUMENT = Path(__file__).resolve().parent / "data" / "us-weapons-in-russia.txt"
MAX_QUESTION_CHARS = 1000
MAX_PASSAGES = 20  # passages one question may read (each costs a reader window or more)
MAX_ANSWERS = 20


def check_count(value, name: str, maximum: int) -> int:
    """An integer option in ``1..maximum``, else ``OptionError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 1 <= value <= maximum:
        raise OptionError(f"{name} must be a whole number from 1 to {maximum}, not {value!r}.")
    return int(value)


def check_threshold(value) -> float | None:
    """``None`` (the reader's calibrated threshold) or a number in [0, 1], else ``OptionError``."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"threshold must be a number from 0 to 1, not {value!r}.") from None
    if isinstance(value, bool) or not 0.0 <= t <= 1.0:  # NaN fails this too
        raise OptionError(f"threshold must be a number from 0 to 1, not {value!r}.")
    return t

_READERS: dict[tuple[str, str, str, str], ExtractiveReader] = {}
_READERS_LOCK = threading.Lock()


def shared_reader(model: str | Path | None = "default", device: str = "cpu") -> ExtractiveReader:
    """One reader per (model, device, ``$SPANQA_RUNTIME``, ``$SPANQA_READ_ALL``) in this
    process."""
    key = (str(model or "default"), device, os.environ.get(RUNTIME_ENV) or "",
           os.environ.get(READ_ALL_ENV) or "")
    with _READERS_LOCK:
        if key not in _READERS:
            _READERS[key] = ExtractiveReader(key[0], device=device)
        return _READERS[key]


def check_question(question) -> str:
    """The question as the reader gets it, or a typed error. Undecodable characters (lone
    surrogates) become U+FFFD, invisible ones (zero-width spaces, byte-order marks, control
    and format characters) are dropped, whitespace is collapsed; a question with no visible
    letter or digit is empty."""
    if isinstance(question, bytes):
        question = question.decode("utf-8", errors="replace")
    if not isinstance(question, str):
        raise EmptyQuestionError(f"A question must be text, not {type(question).__name__}.")
    q = " ".join("".join(ch for ch in replace_surrogates(question)
                         if unicodedata.category(ch) not in ("Cc", "Cf") or ch.isspace()).split())
    if not any(ch.isalnum() for ch in q):
        raise EmptyQuestionError("Please ask a question: it is empty.")
    if len(q) > MAX_QUESTION_CHARS:
        from qa.errors import QuestionTooLongError

        raise QuestionTooLongError(
            f"The question is {len(q)} characters long; the limit is {MAX_QUESTION_CHARS}.")
    return q


def _many(items, what: str, method: str) -> list:
    """``items`` as a list; one string or path where a list belongs is a typed error."""
    if isinstance(items, (str, bytes, Path)):
        raise DocumentError(f"{method} takes a list of {what}; wrap a single one in [ ].")
    try:
        return list(items)
    except TypeError:
        raise DocumentError(f"{method} takes a list of {what}, not {type(items).__name__}.") from None


CASCADE_FILE = Path(__file__).resolve().parent / "models" / "cascade.json"


def cascade_spec(path: Path | None = None) -> dict:
    """``--reader cascade``: which reader answers first, which one it hands unsure questions
    to, and the cut (the first reader's calibrated confidence below which it hands over),
    with how the cut was chosen."""
    import json

    path = path or CASCADE_FILE
    try:
        spec = json.loads(path.read_text())
        float(spec["cut"]), str(spec["first"]), str(spec["then"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"The cascade's settings ({path}) are unreadable: {exc}") from None
    return spec


class DocumentQA:
    """Ask questions of a set of documents; every answer is a span copied from one of them.

    ``reader``: a reader, a bundled reader's name (``default``, ``fast``), a model folder, or
    ``"cascade"``: the fast reader answers first and hands a question to the default one when
    its calibrated confidence is below the cut in ``qa/models/cascade.json``."""

    def __init__(self, store: DocumentStore, reader: ExtractiveReader | str | None = None,
                 passages: int = DEFAULT_TOP_K):
        self.store = store
        self.first_reader, self.cascade_cut = None, None
        if reader == "cascade":
            spec = cascade_spec()
            self.first_reader, self.cascade_cut = shared_reader(spec["first"]), float(spec["cut"])
            reader = spec["then"]
        self.reader = reader if isinstance(reader, ExtractiveReader) else shared_reader(reader)
        self.retriever = Retriever(store, top_k=check_count(passages, "passages", MAX_PASSAGES))

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_documents(cls, docs: list[Document], reader=None, passages: int = DEFAULT_TOP_K,
                       progress: bool | None = None, **store_options) -> "DocumentQA":
        store = DocumentStore(**store_options)
        store.add(docs, progress=progress)
        return cls(store, reader, passages)

    @classmethod
    def from_files(cls, paths, reader=None, passages: int = DEFAULT_TOP_K, **store_options):
        return cls.from_documents([load_file(p) for p in _many(paths, "paths", "from_files")],
                                  reader, passages, **store_options)

    @classmethod
    def from_texts(cls, texts: list[str], ids: list[str] | None = None,
                   titles: list[str] | None = None, reader=None, passages: int = DEFAULT_TOP_K,
                   **store_options) -> "DocumentQA":
        texts = _many(texts, "texts", "from_texts")
        ids = ids or [None] * len(texts)
        titles = titles or [None] * len(texts)
        docs = [document_from_text(t, id=i, title=n) for t, i, n in zip(texts, ids, titles)]
        return cls.from_documents(docs, reader, passages, **store_options)

    @classmethod
    def default(cls, reader=None, passages: int = DEFAULT_TOP_K) -> "DocumentQA":
        """Over the bundled article (US weapons used against targets in Russia); its index is
        built once and loaded from spanqa's cache after that (:func:`index.store.cached_store`)."""
        return cls(cached_store([DEFAULT_DOCUMENT]), reader, passages)

    @classmethod
    def load(cls, directory, reader=None, passages: int = DEFAULT_TOP_K) -> "DocumentQA":
        return cls(DocumentStore.load(directory), reader, passages)

    def save(self, directory) -> Path:
        return self.store.save(directory)

    def add_files(self, paths) -> list[str]:
        return self.store.add([load_file(p) for p in _many(paths, "paths", "add_files")])

    def add_texts(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        texts = _many(texts, "texts", "add_texts")
        ids = ids or [None] * len(texts)
        return self.store.add([document_from_text(t, id=i) for t, i in zip(texts, ids)])

    def remove(self, doc_id: str) -> None:
        self.store.remove(doc_id)

    def warm_up(self) -> None:
        """Load the embedder and the reader(s) now rather than on the first question. The
        readers load in a thread while the embedder loads: opening an ONNX session mostly
        waits on memory and releases the GIL, so a cold start's largest costs overlap."""
        failed: list[BaseException] = []

        def load_readers() -> None:
            try:
                for reader in (self.reader, self.first_reader):
                    if reader is not None:
                        reader.warm_up()
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                failed.append(exc)

        worker = threading.Thread(target=load_readers, name="spanqa-warm-up", daemon=True)
        worker.start()
        try:
            self.store.embedder.warm_up()
        finally:
            worker.join()
        if failed:
            raise failed[0]

    def to_dict(self) -> dict:
        d = {"type": "DocumentQA", "retriever": self.retriever.to_dict(),
             "reader": self.reader.to_dict()}
        if self.first_reader is not None:
            d["cascade"] = {"first": self.first_reader.to_dict(), "cut": self.cascade_cut}
        return d

    # ---- asking ---------------------------------------------------------------------------
    def ask(self, question: str, top_k: int = 3, passages: int | None = None,
            threshold: float | None = None) -> Answer:
        """The best answer (``top_k - 1`` runner-ups in ``candidates``), or an abstention."""
        return self.ask_many([question], top_k, passages, threshold)[0]

    def ask_many(self, questions: list[str], top_k: int = 3, passages: int | None = None,
                 threshold: float | None = None, batch_size: int = 16) -> list[Answer]:
        """Answer many questions: retrieval and reading are batched ``batch_size`` at a time."""
        if isinstance(questions, (str, bytes)):
            raise EmptyQuestionError("ask_many takes a list of questions; use ask() for one.")
        top_k = check_count(top_k, "top_k (answers)", MAX_ANSWERS)
        passages = None if passages is None else check_count(passages, "passages", MAX_PASSAGES)
        threshold = check_threshold(threshold)
        clean = [check_question(q) for q in questions]
        out: list[Answer] = []
        for i in range(0, len(clean), batch_size):
            t0 = time.perf_counter()
            qs = clean[i:i + batch_size]
            answers = self.read(qs, self.retriever.retrieve_many(qs, passages), top_k, threshold)
            ms = (time.perf_counter() - t0) * 1000 / len(qs)
            for a in answers:
                a.latency_ms = ms
            out.extend(answers)
        return out

    def ask_follow_up(self, read_as: str, context: str, keep: Passage | None = None,
                      top_k: int = 3, passages: int | None = None,
                      threshold: float | None = None) -> Answer:
        """A conversation's follow-up (see :mod:`qa.conversation`): retrieve with ``context``
        (the rewritten question with the previous turn), always read ``keep`` (the previous
        answer's passage) among them, and answer ``read_as``."""
        k = passages or self.retriever.top_k
        found = self.retriever.retrieve(context, k)
        if keep is not None and all(p.chunk.id != keep.chunk.id for p in found):
            found = [keep] + found[:max(k - 1, 0)]
        return self.read([read_as], [found], top_k, threshold)[0]

    def read(self, questions: list[str], passages: list[list[Passage]], top_k: int = 3,
             threshold: float | None = None) -> list[Answer]:
        """The reader's answers to (already checked) questions over the given passages: the
        step after retrieval, for callers that choose passages themselves (a conversation
        adds the passage of the previous answer)."""
        results = self._score(self.reader if self.first_reader is None else self.first_reader,
                              questions, passages, top_k, threshold)
        by = [(self.first_reader or self.reader).model_name] * len(questions)
        if self.first_reader is not None:  # the cascade: unsure questions go to the big reader
            unsure = [i for i, r in enumerate(results)
                      if r.abstained or r.spans[0].score < self.cascade_cut]
            if unsure:
                again = self._score(self.reader, [questions[i] for i in unsure],
                                    [passages[i] for i in unsure], top_k, threshold)
                for i, r in zip(unsure, again):
                    results[i], by[i] = r, self.reader.model_name
        answers = [self._answer(q, ps, r) for q, ps, r in zip(questions, passages, results)]
        for a, name in zip(answers, by):
            a.reader = name
        return answers

    def _score(self, reader: ExtractiveReader, questions: list[str], passages: list[list[Passage]],
               top_k: int, threshold: float | None):
        """One reader's spans through the scoring step, with its own calibration. With staged
        reading (the reader's ``first_passages``/``first_cut``), the passages after the first
        few are read only for questions whose best confidence is still below the cut (or
        that would be refused); a
        question read in full gets exactly the spans and scores of one read of all its
        passages (spans are found and scored passage by passage)."""
        reader.warm_up()
        cfg = reader.config
        cal = cfg.calibration_for(self.store.embedder.name)
        first = cfg.first_passages
        raw = reader.read_spans(questions, [[p.chunk.text for p in ps[:first or None]]
                                            for ps in passages])
        results = self._calibrate(cal, raw, passages, threshold, top_k)
        if not first:
            return results
        cut = max(cfg.first_cut, cal.threshold if threshold is None else threshold)
        more = [i for i, r in enumerate(results) if len(passages[i]) > first
                and (r.abstained or r.spans[0].score < cut)]
        if more:
            rest = reader.read_spans([questions[i] for i in more],
                                     [[p.chunk.text for p in passages[i][first:]] for i in more])
            for i, spans in zip(more, rest):
                raw[i] = raw[i] + [replace(s, passage=s.passage + first) for s in spans]
            again = self._calibrate(cal, [raw[i] for i in more], [passages[i] for i in more],
                                    threshold, top_k)
            for i, r in zip(more, again):
                results[i] = r
        return results

    def _calibrate(self, cal: Calibration, raw, passages: list[list[Passage]],
                   threshold: float | None, top_k: int):
        # the retriever's similarities count only on the scale the calibration was fitted
        # for (the same embedder); otherwise its default stands in
        relevance = ([[p.score for p in ps] for ps in passages]
                     if cal.accepts_relevance_from(self.store.embedder.name) else None)
        return score_spans(raw, cal, threshold, max(top_k, 1), relevance, ranked=True)

    def chat(self) -> "Conversation":
        """A conversation over these documents: follow-up questions are read in the light of
        the earlier turns (see :mod:`qa.conversation`)."""
        from qa.conversation import Conversation

        return Conversation(self)

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
                page=self.store.documents[c.doc_id].page_at(c.start + s.char_start),
                section=self.store.documents[c.doc_id].section_at(c.start + s.char_start)))
        if result.abstained or not spans:
            return Answer(question=question, text="", score=0.0, abstained=True,
                          no_answer_score=result.no_answer_score, candidates=spans,
                          passages=passages)
        best = spans[0]
        best.candidates = spans[1:]
        best.passages = passages
        return best
