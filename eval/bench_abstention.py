"""Does spanqa say "the document doesn't say" when asked about the wrong document?

    python -m eval.bench_abstention [--reader PATH] [--per-article 150]

Documents: the shared dev articles and the bundled article. Each answerable question is
asked twice through ``DocumentQA`` (retrieval + reader), the way users ask:

* of its own document: F1 with the reader's calibrated rule, and had it never refused (its
  best candidate taken instead: the difference is what abstention costs on answerable
  questions);
* of another document (the next one in the list, so dev questions also go to the bundled
  article and its questions to a dev article): how often spanqa abstains;
* of another paragraph of its own article that holds none of its gold answers (the reader
  reads that paragraph alone): how often the reader abstains on an on-topic passage that
  does not answer.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qa.metrics import normalize_answer, score
from qa.pipeline import DEFAULT_DOCUMENT, DocumentQA, shared_reader
from qa.squad import article_document, load_squad, shared_data

DEV = str(shared_data("qa", "dev", "squad_dev_5_articles.json"))
ARTICLE_SET = str(Path(__file__).resolve().parent / "questions" / "us_weapons_in_russia.json")


def other_paragraph_cases(articles, per_article: int, rng: random.Random):
    """(question, a paragraph of its own article holding none of its gold answers)."""
    cases = []
    for art in articles:
        norm = [normalize_answer(p) for p in art.paragraphs]
        qs = [q for q in art.questions if q.answers]
        for q in rng.sample(qs, min(per_article, len(qs))):
            golds = [normalize_answer(g) for g in q.gold_texts]
            others = [i for i, p in enumerate(norm)
                      if i != q.paragraph and not any(g and g in p for g in golds)]
            if others:
                cases.append((q.question, art.paragraphs[rng.choice(others)]))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", default=DEV)
    ap.add_argument("--article-set", default=ARTICLE_SET)
    ap.add_argument("--reader", default=None)
    ap.add_argument("--per-article", type=int, default=150, help="answerable questions per document")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    reader = shared_reader(args.reader)
    reader.warm_up()
    cal = reader.config.calibration
    rng = random.Random(args.seed)
    docs, question_sets = [], []
    for ai, art in enumerate(load_squad(args.dev)):
        doc, _ = article_document(art, f"dev{ai}")
        docs.append(DocumentQA.from_documents([doc], reader=reader))
        qs = [q for q in art.questions if q.answers]
        question_sets.append(rng.sample(qs, min(args.per_article, len(qs))))
    docs.append(DocumentQA.from_files([DEFAULT_DOCUMENT], reader=reader))
    question_sets.append([q for a in load_squad(args.article_set) for q in a.questions if q.answers])

    right_f1_t, right_f1_0, wrong_abst = [], [], []
    n = len(docs)
    for i in tqdm(range(n), desc="documents"):
        qs = question_sets[i]
        texts = [q.question for q in qs]
        own = docs[i].ask_many(texts)
        for q, a in zip(qs, own):
            right_f1_0.append(score(a.best_guess().text, q.gold_texts)[1])
            right_f1_t.append(score(a.text, q.gold_texts)[1])
        other = docs[(i + 1) % n].ask_many(texts)
        wrong_abst += [a.abstained for a in other]
    cases = other_paragraph_cases(load_squad(args.dev), args.per_article, rng)
    other_par = []
    for i in tqdm(range(0, len(cases), 16), desc="other paragraph"):
        batch = cases[i:i + 16]
        other_par += [r.abstained for r in reader.predict_many([q for q, _ in batch],
                                                               [[p] for _, p in batch])]
    res = {"threshold": cal.threshold, "refusal_margin": cal.refusal_margin,
           "answerable_questions": len(right_f1_0),
           "other_paragraph_questions": len(other_par),
           "other_paragraph_abstain_rate": 100 * float(np.mean(other_par)),
           "wrong_document_questions": len(wrong_abst),
           "wrong_document_abstain_rate": 100 * float(np.mean(wrong_abst)),
           "right_document_f1_no_threshold": 100 * float(np.mean(right_f1_0)),
           "right_document_f1_at_threshold": 100 * float(np.mean(right_f1_t))}
    res["f1_cost"] = res["right_document_f1_no_threshold"] - res["right_document_f1_at_threshold"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
