"""Run spanqa over a SQuAD-format question set, the way users run it.

* ``scope="article"``: one index per article (its paragraphs joined as one document), the
  chatbot's one-document setting; ``scope="corpus"``: one index over every article.
* ``reader_only=True``: the reader reads the gold paragraph itself (standard SQuAD reader
  evaluation), so reader errors can be told from retrieval errors.

Questions go through the public API (``DocumentQA.ask_many`` or ``ExtractiveReader``) in
batches, with a progress bar.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from eval.metrics import EvalRow
from qa.errors import OptionError
from qa.metrics import score
from qa.pipeline import DocumentQA, cascade_spec, shared_reader
from qa.retriever import DEFAULT_TOP_K
from qa.squad import SquadQuestion, article_document, gold_spans, load_squad, read_gold_paragraphs
from qa.types import Answer


@dataclass
class EvalConfig:
    data: str
    reader: str | None = None
    scope: str = "article"
    passages: int = DEFAULT_TOP_K
    reader_only: bool = False
    threshold: float | None = None
    batch_size: int = 16
    limit: int | None = None
    embedder: str | None = None  # for the indexes the run builds (None: spanqa's default)

    def store_options(self) -> dict:
        """How the run's indexes are built (``DocumentQA.from_documents``'s store options)."""
        from index.embedder import shared_embedder

        return {"embedder": shared_embedder(self.embedder)} if self.embedder else {}


def _reader_answer(question: str, r) -> Answer:
    """An ``Answer`` from a reader result (reader-only runs read no store)."""
    s = r.spans[0] if r.spans else None
    best = Answer(question=question, text=s.text, score=s.score, abstained=False,
                  no_answer_score=r.no_answer_score) if s else None
    if best is None or r.abstained:
        return Answer(question=question, text="", score=0.0, abstained=True,
                      no_answer_score=r.no_answer_score, candidates=[best] if best else [])
    return best


RANK_DEPTH = 10  # passages ranked per question for recall@k, whatever the reader reads


def gold_rank(passages, golds_in_doc) -> int | None:
    """Rank of the first passage that holds a whole gold span ``(doc_id, start, end)``."""
    for p in passages:
        if any(p.chunk.doc_id == d and p.chunk.start <= s and e <= p.chunk.end
               for d, s, e in golds_in_doc):
            return p.rank
    return None


def _record(q: SquadQuestion, answer, latency_ms: float, golds_in_doc=None,
            ranking=None) -> EvalRow:
    best = answer.best_guess()
    pred = "" if answer.abstained else answer.text
    em, f1 = score(pred, q.gold_texts)
    row: EvalRow = {"id": q.id, "title": q.title, "question": q.question, "golds": q.gold_texts,
                    "prediction": pred, "score": answer.score, "abstained": answer.abstained,
                    "best_text": best.text, "best_score": best.score,
                    "em": em, "f1": f1, "latency_ms": latency_ms}
    if answer.reader:
        row["reader"] = answer.reader
    if golds_in_doc is not None:
        row["retrieved"] = [p.chunk.id for p in answer.passages]
        row["gold_rank"] = gold_rank(answer.passages, golds_in_doc)
        if ranking is not None:
            row["retrieval_rank"] = gold_rank(ranking, golds_in_doc)
    return row


class Evaluation:
    """One run's questions cut into units of work: a batch of questions for ``reader_only``
    and scope ``corpus``, one article's questions for scope ``article``. Each unit is answered
    the same way (the same batches) wherever it runs, here or on a Ray actor
    (:mod:`eval.distributed`), so the predictions are the same."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.articles = load_squad(cfg.data)
        qs = [(ai, q) for ai, a in enumerate(self.articles) for q in a.questions]
        self.questions = qs[:cfg.limit] if cfg.limit else qs
        if cfg.reader == "cascade" and cfg.reader_only:
            raise OptionError("--reader cascade needs retrieval; drop --reader-only")
        self.reader = None
        self.corpus: DocumentQA | None = None
        self.index_seconds = 0.0

    def units(self) -> list[list[int]]:
        """Question indices, unit by unit, in the order the rows are written."""
        n, bs = len(self.questions), self.cfg.batch_size
        if self.cfg.reader_only or self.cfg.scope == "corpus":
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        by_article: dict[int, list[int]] = {}
        for i, (ai, _) in enumerate(self.questions):
            by_article.setdefault(ai, []).append(i)
        return list(by_article.values())

    def warm_up(self, progress: bool = False) -> None:
        """Load the reader (and build the corpus index for scope ``corpus``)."""
        cascade = self.cfg.reader == "cascade"
        self.reader = shared_reader(cascade_spec()["then"] if cascade else self.cfg.reader)
        self.reader.warm_up()
        if not self.cfg.reader_only:
            self.docs, self.starts = [], {}
            for ai, art in enumerate(self.articles):
                doc, st = article_document(art, f"a{ai}:{art.title}")
                self.docs.append(doc)
                self.starts[ai] = (doc.id, st)
            if self.cfg.scope == "corpus":
                t = time.perf_counter()
                self.corpus = DocumentQA.from_documents(self.docs, reader=self._use(),
                                                        passages=self.cfg.passages,
                                                        progress=progress,
                                                        **self.cfg.store_options())
                self.index_seconds += time.perf_counter() - t

    def _use(self):
        return "cascade" if self.cfg.reader == "cascade" else self.reader

    def run_unit(self, unit: list[int]) -> list[EvalRow]:
        cfg, rows = self.cfg, []
        if cfg.reader_only:
            qs = [self.questions[i][1] for i in unit]
            for chunk, res, ms in read_gold_paragraphs(self.reader, qs, cfg.threshold, len(qs)):
                rows.extend(_record(q, _reader_answer(q.question, r), ms) for q, r in zip(chunk, res))
            return rows
        qa = self.corpus
        if qa is None:  # scope article: this unit is one article's questions
            t = time.perf_counter()
            qa = DocumentQA.from_documents([self.docs[self.questions[unit[0]][0]]],
                                           reader=self._use(), passages=cfg.passages,
                                           progress=False, **cfg.store_options())
            self.index_seconds += time.perf_counter() - t
        for i in range(0, len(unit), cfg.batch_size):
            chunk = [self.questions[j] for j in unit[i:i + cfg.batch_size]]
            t = time.perf_counter()
            answers = qa.ask_many([q.question for _, q in chunk], top_k=3,
                                  threshold=cfg.threshold, batch_size=cfg.batch_size)
            ms = (time.perf_counter() - t) * 1000 / len(chunk)
            rankings = qa.retriever.retrieve_many([q.question for _, q in chunk], RANK_DEPTH)
            for (ai, q), a, ranking in zip(chunk, answers, rankings):
                doc_id, st = self.starts[ai]
                golds = [(doc_id, s, e) for s, e in gold_spans(q, st[q.paragraph])]
                rows.append(_record(q, a, ms, golds, ranking))
        return rows

    def facts(self, seconds: float) -> dict:
        return {"seconds": seconds, "index_seconds": self.index_seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "reader": self.reader.model_name, "reader_config": self.reader.config.to_dict()}


def evaluate(cfg: EvalConfig, progress: bool = True) -> tuple[list[EvalRow], dict]:
    """Per-question records and run facts (timings, peak memory), in this process."""
    ev = Evaluation(cfg)
    ev.warm_up(progress)
    rows: list[EvalRow] = []
    t0 = time.perf_counter()
    with tqdm(total=len(ev.questions), desc="questions", file=sys.stderr, disable=not progress,
              mininterval=2) as bar:
        for unit in ev.units():
            rows.extend(ev.run_unit(unit))
            bar.update(len(unit))
    return rows, ev.facts(time.perf_counter() - t0)


def single_question_latency(cfg: EvalConfig, n: int = 50) -> list[float]:
    """Milliseconds of one warm ``ask()`` at a time (what a chat user waits), on the first
    article's questions."""
    articles = load_squad(cfg.data)
    art = articles[0]
    doc, _ = article_document(art, "a0")
    reader = "cascade" if cfg.reader == "cascade" else shared_reader(cfg.reader)
    qa = DocumentQA.from_documents([doc], reader=reader, passages=cfg.passages,
                                   **cfg.store_options())
    qa.ask(art.questions[0].question)  # warm
    out = []
    for q in art.questions[:n]:
        t = time.perf_counter()
        qa.ask(q.question, threshold=cfg.threshold)
        out.append((time.perf_counter() - t) * 1000)
    return out
