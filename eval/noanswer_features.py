"""Can anything beyond the reader's own scores tell an unanswerable question from an answerable one?

A feature study for the reader's abstention. Each held-out SQuAD 2.0 question reads its own
paragraph (the SQuAD 2.0 protocol: no retrieval), then the sentence holding the best span is
read again on its own. Features of what the reader found (its span and no-answer logits, the
gap to the next span, the sentence's re-read, the question's words and names the sentence
lacks, a negation in the question, a second reader's logits) are combined by a logistic
regression *cross-fitted by article* (fitted on three articles, scored on the fourth), and each
combination is judged by what abstention is for: the share of unanswerable questions refused
while the answerable ones lose at most ``budget`` F1 points against never abstaining.

    python -m eval.noanswer_features --reader default --second-reader fast --save-rows runs/nf.jsonl
    python -m eval.noanswer_features --from-rows runs/nf.jsonl      # refit without reading again

Results and what they mean: ``qa/models/reader/README.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from index.chunking import sentence_spans
from qa.calibration import threshold_outcome
from qa.errors import SpanQAError
from qa.metrics import score
from qa.squad import load_squad, shared_data
from qa.training.calibrate import fit_platt
from qa.training.retriever import CALIBRATION_TITLES

BUDGETS = (1.0, 2.0, 3.0, 5.0)
_STOP = frozenset("the a an of in on at to for by with from and or is was were are be been what "
                  "which who whom whose when where why how did do does that this these those it "
                  "its as than".split())
_NEGATION = re.compile(r"\b(?:not|never|no)\b|n't\b")
# base features, then the combinations compared (names are the table's rows)
FEATURE_SETS = {
    "span logit, margin over no-answer": ("logit", "margin"),
    "+ gap to the next span": ("logit", "margin", "gap"),
    "+ the span's sentence read alone": ("logit", "margin", "s_logit", "s_margin", "s_same"),
    "+ words and names the sentence lacks, negation": ("logit", "margin", "coverage", "missing",
                                                       "negation"),
    "all of the above": ("logit", "margin", "gap", "s_logit", "s_margin", "s_same", "coverage",
                         "missing", "negation"),
    "+ second reader's logit and margin": ("logit", "margin", "b_logit", "b_margin"),
    "+ second reader, and whether both agree": ("logit", "margin", "b_logit", "b_margin", "agree"),
}


def refused_within(scores, f1, answerable, budget: float) -> tuple[float, float]:
    """``(share of unanswerables refused, threshold)`` at the threshold that refuses the most of
    them while the answerable questions' mean F1 (0-100, abstaining scores 0) stays within
    ``budget`` points of answering everything. A question is refused when its score is below
    the threshold; ``f1`` (0-1) is what each answer would score."""
    scores, f1 = np.asarray(scores, float), np.asarray(f1, float)
    answerable = np.asarray(answerable, bool)
    if not answerable.any() or answerable.all():
        raise ValueError("need both answerable and unanswerable questions")
    sa, fa, su = scores[answerable].tolist(), f1[answerable].tolist(), scores[~answerable].tolist()
    refused_scores_0 = [0.0] * len(sa)  # an answerable question refused scores 0
    unscored = [0.0] * len(su)  # of the unanswerables only the refusal rate is read
    full = 100 * float(np.mean(fa))
    best = (0.0, float(scores.min()))
    for t in np.unique(scores).tolist():
        kept, _ = threshold_outcome(sa, fa, refused_scores_0, t)
        if full - 100 * kept <= budget + 1e-9:
            _, refused = threshold_outcome(su, unscored, unscored, t)
            if refused > best[0]:
                best = (refused, t)
    return best


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _stem(word: str) -> str:
    return word[:5]  # crude, and enough to match "invaded" with "invasion"


def sentence_of(text: str, start: int, end: int) -> str:
    """The sentences of ``text`` that the span ``[start, end)`` touches."""
    hit = [(s, e) for s, e in sentence_spans(text) if s < end and e > start]
    return text[hit[0][0]:hit[-1][1]] if hit else text


def features(row: dict) -> dict[str, float]:
    """Named features of one read (a row of :func:`read_rows`)."""
    q_words = [w for w in _words(row["question"]) if w not in _STOP]
    sent = {_stem(w) for w in _words(row["sentence"])}
    names = re.findall(r"\b(?:[A-Z][a-z]+|\d+)\b", row["question"])[1:]  # not the first word
    logits = row["logits"]
    out = {"logit": logits[0], "margin": logits[0] - row["null"],
           "gap": logits[0] - logits[1] if len(logits) > 1 else 10.0,
           "s_logit": row["s_logit"], "s_margin": row["s_logit"] - row["s_null"],
           "s_same": float(row["s_same"]),
           "coverage": float(np.mean([_stem(w) in sent for w in q_words])) if q_words else 1.0,
           "missing": float(sum(_stem(n.lower()) not in sent for n in names)),
           "negation": float(bool(_NEGATION.search(row["question"].lower())))}
    if "b_logit" in row:
        out.update(b_logit=row["b_logit"], b_margin=row["b_logit"] - row["b_null"],
                   agree=float(row["b_text"] == row["text"]))
    return out


def _best(spans):
    return max(spans, key=lambda s: s.logit) if spans else None


def read_rows(reader, questions, second=None, batch: int = 32) -> list[dict]:
    """Each question read on its gold paragraph, then on its best span's sentence alone (and by
    ``second``, another reader, on the paragraph): the logits the features are made of."""
    rows = []
    for i in range(0, len(questions), batch):
        part = questions[i:i + batch]
        texts = [q.question for q in part]
        found = reader.read_spans(texts, [[q.context] for q in part])
        new = []
        for q, spans in zip(part, found):
            ranked = sorted(spans, key=lambda s: -s.logit)
            top = ranked[0] if ranked else None
            golds = [t for t, _ in q.answers]
            new.append({"title": q.title, "question": q.question, "answerable": bool(golds),
                        "text": top.text if top else "",
                        "f1": score(top.text, golds)[1] if top and golds else 0.0,
                        "logits": [s.logit for s in ranked[:5]] or [-20.0],
                        "null": top.null_logit if top else 20.0,
                        "sentence": sentence_of(q.context, top.char_start, top.char_end)
                        if top else q.context})
        again = reader.read_spans(texts, [[r["sentence"]] for r in new])
        for r, spans in zip(new, again):
            top = _best(spans)
            r.update(s_logit=top.logit if top else -20.0, s_null=top.null_logit if top else 20.0,
                     s_same=bool(top) and top.text == r["text"])
        if second is not None:
            for r, spans in zip(new, second.read_spans(texts, [[q.context] for q in part])):
                top = _best(spans)
                r.update(b_text=top.text if top else "", b_logit=top.logit if top else -20.0,
                         b_null=top.null_logit if top else 20.0)
        rows.extend(new)
        print(f"read {len(rows)}/{len(questions)}", file=sys.stderr, flush=True)
    return rows


def cross_fitted(x: np.ndarray, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's logistic score from a fit on the other groups' rows only."""
    out = np.zeros(len(x))
    for g in np.unique(groups):
        held = groups == g
        *w, b = fit_platt(x[~held].tolist(), target[~held].tolist())
        out[held] = 1 / (1 + np.exp(-(x[held] @ np.asarray(w) + b)))
    return out


def study(rows: list[dict], budgets=BUDGETS) -> list[dict]:
    """One result per feature set: unanswerables refused within each F1 budget. The logistic
    target is "the span is right" (F1 ≥ 0.5 on an answerable question), so it ranks what the
    threshold has to keep."""
    feats = [features(r) for r in rows]
    f1 = np.array([r["f1"] for r in rows])
    answerable = np.array([r["answerable"] for r in rows])
    target = (f1 >= 0.5) & answerable
    groups = np.array([r["title"] for r in rows])
    results = [{"features": "margin alone, no fit",
                "refused": [refused_within([f["margin"] for f in feats], f1, answerable, b)[0]
                            for b in budgets]}]
    for name, keys in FEATURE_SETS.items():
        if not all(k in feats[0] for k in keys):
            continue  # second-reader sets without a second reader
        x = np.array([[f[k] for k in keys] for f in feats])
        s = cross_fitted(x, target, groups)
        results.append({"features": name,
                        "refused": [refused_within(s, f1, answerable, b)[0] for b in budgets]})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", default="default")
    ap.add_argument("--second-reader", help="another reader whose logits join the features")
    ap.add_argument("--data", default=str(shared_data("qa", "train", "squad_dev_35_articles.json")))
    ap.add_argument("--titles", nargs="+", default=list(CALIBRATION_TITLES),
                    help="articles to read (default: the calibration articles no reader trains on)")
    ap.add_argument("--save-rows", help="write what was read (JSON lines) for --from-rows")
    ap.add_argument("--from-rows", help="refit from rows an earlier run saved")
    args = ap.parse_args(argv)
    try:
        if args.from_rows:
            rows = [json.loads(line) for line in Path(args.from_rows).read_text().splitlines()]
        else:
            from qa.reader import ExtractiveReader
            qs = [q for a in load_squad(args.data) if a.title in args.titles for q in a.questions]
            if not qs:
                raise SpanQAError(f"No questions of {args.titles} in {args.data}.")
            second = ExtractiveReader(args.second_reader) if args.second_reader else None
            rows = read_rows(ExtractiveReader(args.reader), qs, second)
            if args.save_rows:
                Path(args.save_rows).write_text("".join(json.dumps(r) + "\n" for r in rows))
    except (SpanQAError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_ans = sum(r["answerable"] for r in rows)
    has_f1 = 100 * np.mean([r["f1"] for r in rows if r["answerable"]])
    print(f"{len(rows)} questions ({n_ans} answerable, HasAns F1 {has_f1:.2f} never abstaining, "
          f"{len(rows) - n_ans} unanswerable), cross-fitted by article")
    print("| features | " + " | ".join(f"refused within {b:g} F1" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for r in study(rows):
        print(f"| {r['features']} | " + " | ".join(f"{100 * x:.1f}%" for x in r["refused"]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
