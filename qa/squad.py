"""Reading SQuAD-format question sets (v1.1, and v2.0 with unanswerable questions)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from index.documents import Document, document_from_text, normalize_text
from qa.errors import SpanQAError

DATA_ENV = "SPANQA_DATA"


def shared_data(*parts: str) -> Path:
    """A path under the shared question sets: ``$SPANQA_DATA`` if set, else ``shared/data``
    beside the repository checkout (where the benchmarks and training scripts expect it),
    whatever the working directory."""
    root = os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(root).joinpath(*parts)


@dataclass
class SquadQuestion:
    """One question with its paragraph; ``answers`` empty means unanswerable."""

    id: str
    question: str
    context: str
    title: str
    paragraph: int  # index of the paragraph in its article
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, char start)

    @property
    def is_impossible(self) -> bool:
        return not self.answers

    @property
    def gold_texts(self) -> list[str]:
        return [a for a, _ in self.answers]


@dataclass
class SquadArticle:
    title: str
    paragraphs: list[str]
    questions: list[SquadQuestion]


def load_squad(path: str | Path) -> list[SquadArticle]:
    """Articles of a SQuAD json file, questions in file order. Raises ``SpanQAError`` with the
    reason when the file is not SQuAD-shaped."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        data = raw["data"]
    except FileNotFoundError:
        raise SpanQAError(f"No question set at {path}.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SpanQAError(f"{path} is not a SQuAD json file ({exc}).") from None
    articles = []
    for a_i, art in enumerate(data):
        title = str(art.get("title") or f"article-{a_i}")
        paras, qs = [], []
        for p_i, para in enumerate(art.get("paragraphs", [])):
            ctx = para["context"]
            paras.append(ctx)
            for qa in para.get("qas", []):
                answers = [] if qa.get("is_impossible") else [
                    (a["text"], int(a["answer_start"])) for a in qa.get("answers", [])]
                qs.append(SquadQuestion(str(qa["id"]), qa["question"], ctx, title, p_i, answers))
        articles.append(SquadArticle(title, paras, qs))
    return articles


def questions_of(articles: list[SquadArticle]) -> list[SquadQuestion]:
    return [q for a in articles for q in a.questions]


def paragraphs_by_title(questions: list[SquadQuestion]) -> dict[str, list[str]]:
    """Each article's distinct paragraphs, as ``questions`` name them, in first-seen order."""
    out: dict[str, list[str]] = {}
    for q in questions:
        ctxs = out.setdefault(q.title, [])
        if q.context not in ctxs:
            ctxs.append(q.context)
    return out


def article_document(art: SquadArticle, doc_id: str) -> tuple[Document, list[int]]:
    """The article as one clean document, and where each paragraph starts in it."""
    paras = [normalize_text(p) for p in art.paragraphs]
    starts, pos = [], 0
    for p in paras:
        starts.append(pos)
        pos += len(p) + 2
    return document_from_text("\n\n".join(paras), id=doc_id, title=art.title), starts


def gold_spans(q: SquadQuestion, para_start: int) -> list[tuple[int, int]]:
    """Character spans of the gold answers in the article document (after normalisation,
    which can shift offsets: each answer is found again near its original place)."""
    para = normalize_text(q.context)
    spans = []
    for text, start in q.answers:
        t = normalize_text(text)
        if not t:
            continue
        hits, i = [], para.find(t)
        while i != -1:
            hits.append(i)
            i = para.find(t, i + 1)
        if hits:
            best = min(hits, key=lambda h: abs(h - start))
            spans.append((para_start + best, para_start + best + len(t)))
    return spans


def read_gold_paragraphs(reader, questions: list[SquadQuestion], threshold: float | None = None,
                         batch_size: int = 64):
    """The standard SQuAD reader evaluation, the one place it is written: each question read
    with its own paragraph, its best span kept (``top_k=1``), abstaining below ``threshold``
    (0: always answer). Yields ``(questions, results, ms per question)`` batch by batch, so
    callers can time and show progress; ``spanqa eval --reader-only``, training's dev
    evaluation and the benchmarks use it."""
    import time

    from qa.pipeline import check_question

    for i in range(0, len(questions), batch_size):
        chunk = questions[i:i + batch_size]
        t = time.perf_counter()
        res = reader.predict_many([check_question(q.question) for q in chunk],
                                  [[q.context] for q in chunk], top_k=1, threshold=threshold)
        yield chunk, res, (time.perf_counter() - t) * 1000 / max(1, len(chunk))
