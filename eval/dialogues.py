"""Follow-up questions measured: a dialogue set asked with its history and without.

    spanqa eval eval/questions/dialogues.json --out runs/dialogues

A dialogue set (``"version": "spanqa-dialogues-1"``) lists, per article, dialogues of a
history (questions asked first, answered by spanqa itself) and a follow-up question with its
gold answers. Each follow-up is asked twice: in a :class:`qa.conversation.Conversation`
after its history, and alone. Articles are the bundled one (``"source": "bundled"``) or an
article of a shared question set, read from ``shared/data/qa/<source>`` at run time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from index.documents import Document, load_file
from qa.errors import SpanQAError
from qa.metrics import score
from qa.pipeline import DEFAULT_DOCUMENT, DocumentQA, shared_reader
from qa.retriever import DEFAULT_TOP_K
from qa.squad import article_document, load_squad, shared_data

FORMAT = "spanqa-dialogues-1"


@dataclass
class Dialogue:
    id: str
    history: list[str]
    question: str
    answers: list[str]


def is_dialogue_set(path: str | Path) -> bool:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("version") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_dialogues(path: str | Path) -> list[tuple[Document, list[Dialogue]]]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for art in raw["articles"]:
        if art["source"] == "bundled":
            doc = load_file(DEFAULT_DOCUMENT)
        else:
            found = [a for a in load_squad(shared_data("qa", art["source"]))
                     if a.title == art["title"]]
            if not found:
                raise SpanQAError(f"No article {art['title']!r} in {art['source']}.")
            doc = article_document(found[0], art["title"])[0]
        out.append((doc, [Dialogue(d["id"], list(d["history"]), d["question"], list(d["answers"]))
                          for d in art["dialogues"]]))
    return out


def evaluate_dialogues(path: str | Path, reader: str | None = None, passages: int = DEFAULT_TOP_K,
                       threshold: float | None = None) -> tuple[list[dict], dict]:
    """Per-dialogue rows and the summary: follow-up EM/F1 with and without history."""
    sets = load_dialogues(path)
    rdr = shared_reader(reader)
    rows = []
    bar = tqdm(total=sum(len(ds) for _, ds in sets), desc="dialogues", mininterval=2)
    for doc, dialogues in sets:
        qa = DocumentQA.from_documents([doc], reader=rdr, passages=passages)
        for d in dialogues:
            conv = qa.chat()
            for h in d.history:
                conv.ask(h, threshold=threshold)
            with_h = conv.ask(d.question, threshold=threshold)
            alone = qa.ask(d.question, threshold=threshold)
            em, f1 = score(with_h.text, d.answers)
            em0, f10 = score(alone.text, d.answers)
            rows.append({"id": d.id, "history": d.history, "question": d.question,
                         "read_as": with_h.read_as, "golds": d.answers,
                         "prediction": with_h.text, "prediction_alone": alone.text,
                         "em": em, "f1": f1, "em_alone": em0, "f1_alone": f10})
            bar.update()
    bar.close()
    n = len(rows)
    metrics = {"n": n, "rewritten": sum(r["read_as"] != r["question"] for r in rows),
               **{k: 100 * sum(r[k] for r in rows) / max(n, 1)
                  for k in ("em", "f1", "em_alone", "f1_alone")}}
    return rows, metrics


def write(out: Path, rows: list[dict], metrics: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_question.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                    for r in rows), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    lines = ["# Follow-up questions", "",
             f"{metrics['n']} dialogues; {metrics['rewritten']} follow-ups rewritten.", "",
             "| | EM | F1 |", "|---|---|---|",
             f"| with history | {metrics['em']:.1f} | {metrics['f1']:.1f} |",
             f"| alone | {metrics['em_alone']:.1f} | {metrics['f1_alone']:.1f} |", "",
             "| question | read as | with history | alone | gold |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r["question"], r["read_as"], r["prediction"] or "(abstained)",
                 r["prediction_alone"] or "(abstained)", " / ".join(r["golds"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
