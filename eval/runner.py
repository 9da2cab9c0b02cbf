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
    best = answer.candidates[0] if answer.abstained and answer.candidates else answer
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


def evaluate(cfg: EvalConfig, progress: bool = True) -> tuple[list[EvalRow], dict]:
    """Per-question records and run facts (timings, peak memory)."""
    articles = load_squad(cfg.data)
    questions = [(ai, q) for ai, a in enumerate(articles) for q in a.questions]
    if cfg.limit:
        questions = questions[:cfg.limit]
    cascade = cfg.reader == "cascade"
    if cascade and cfg.reader_only:
        raise OptionError("--reader cascade needs retrieval; drop --reader-only")
    reader = shared_reader(cascade_spec()["then"] if cascade else cfg.reader)
    reader.warm_up()
    use = "cascade" if cascade else reader  # what each DocumentQA reads with
    rows: list[EvalRow] = []
    bar = tqdm(total=len(questions), desc="questions", file=sys.stderr, disable=not progress,
               mininterval=2)
    t0 = time.perf_counter()
    index_seconds = 0.0
    if cfg.reader_only:
        for chunk, res, ms in read_gold_paragraphs(reader, [q for _, q in questions],
                                                   cfg.threshold, cfg.batch_size):
            for q, r in zip(chunk, res):
                rows.append(_record(q, _reader_answer(q.question, r), ms))
            bar.update(len(chunk))
    else:
        groups: list[tuple[DocumentQA, list[tuple[int, SquadQuestion]], dict]] = []
        ti = time.perf_counter()
        docs, starts = [], {}
        for ai, art in enumerate(articles):
            doc, st = article_document(art, f"a{ai}:{art.title}")
            docs.append(doc)
            starts[ai] = (doc.id, st)
        if cfg.scope == "corpus":
            qa = DocumentQA.from_documents(docs, reader=use, passages=cfg.passages, progress=progress)
            groups.append((qa, questions))
        else:
            by_article: dict[int, list] = {}
            for ai, q in questions:
                by_article.setdefault(ai, []).append((ai, q))
            for ai, qs in by_article.items():
                groups.append((DocumentQA.from_documents([docs[ai]], reader=use,
                                                         passages=cfg.passages, progress=False), qs))
        index_seconds = time.perf_counter() - ti
        for qa, qs in groups:
            for i in range(0, len(qs), cfg.batch_size):
                chunk = qs[i:i + cfg.batch_size]
                t = time.perf_counter()
                answers = qa.ask_many([q.question for _, q in chunk], top_k=3,
                                      threshold=cfg.threshold, batch_size=cfg.batch_size)
                ms = (time.perf_counter() - t) * 1000 / len(chunk)
                rankings = qa.retriever.retrieve_many([q.question for _, q in chunk], RANK_DEPTH)
                for (ai, q), a, ranking in zip(chunk, answers, rankings):
                    doc_id, st = starts[ai]
                    golds = [(doc_id, s, e) for s, e in gold_spans(q, st[q.paragraph])]
                    rows.append(_record(q, a, ms, golds, ranking))
                bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    facts = {"seconds": seconds, "index_seconds": index_seconds,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "reader": reader.model_name, "reader_config": reader.config.to_dict()}
    return rows, facts


def single_question_latency(cfg: EvalConfig, n: int = 50) -> list[float]:
    """Milliseconds of one warm ``ask()`` at a time (what a chat user waits), on the first
    article's questions."""
    articles = load_squad(cfg.data)
    art = articles[0]
    doc, _ = article_document(art, "a0")
    reader = "cascade" if cfg.reader == "cascade" else shared_reader(cfg.reader)
    qa = DocumentQA.from_documents([doc], reader=reader, passages=cfg.passages)
    qa.ask(art.questions[0].question)  # warm
    out = []
    for q in art.questions[:n]:
        t = time.perf_counter()
        qa.ask(q.question, threshold=cfg.threshold)
        out.append((time.perf_counter() - t) * 1000)
    return out
