"""Fit a reader's confidence and abstention threshold on held-out data:
``spanqa calibrate-reader --reader DIR --data SQUAD.json [--titles T ...]``.

Three kinds of held-out question, each read the way the pipeline reads (the question with
three passages: the gold paragraph and the two paragraphs of the same article most similar
to the question, by the embedder):

* answerable: the reader should find the gold answer;
* unanswerable (SQuAD 2.0 ``is_impossible``): it should abstain;
* wrong document: an answerable question read with the three most similar paragraphs of
  *another* article: it should abstain.

Confidence is fitted by Platt scaling on the answerable questions (target: exact match), see
:mod:`qa.calibration`. The threshold is the lowest one at which at least ``--wrong-doc-target``
(default 95%) of the wrong-document questions are abstained on, so it costs as little F1 on
answerable questions as that goal allows. Both are written into the model folder's
``spanqa_reader.json``, with the figures, so the folder stays self-describing.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from qa.calibration import Calibration, expected_calibration_error, fit_platt
from qa.metrics import score
from qa.reader import READER_CONFIG_FILE, ExtractiveReader
from qa.squad import SquadArticle, load_squad


def build_cases(articles: list[SquadArticle], embedder, rng: random.Random, limit: int):
    """(kind, question, passages, golds) for answerable, unanswerable and wrong-document cases."""
    para_vecs = {a.title: embedder.embed(a.paragraphs, progress=False) for a in articles}
    qs = [q for a in articles for q in a.questions]
    rng.shuffle(qs)
    qs = qs[:limit]
    q_vecs = embedder.embed([q.question for q in qs], progress=True)
    by_title = {a.title: a for a in articles}
    cases = []
    for q, v in zip(qs, q_vecs):
        art = by_title[q.title]
        sims = para_vecs[q.title] @ v
        others = [i for i in np.argsort(-sims) if i != q.paragraph][:2]
        passages = [q.context] + [art.paragraphs[i] for i in others]
        cases.append(("unanswerable" if q.is_impossible else "answerable", q.question, passages,
                      q.gold_texts))
        if not q.is_impossible and len(articles) > 1:
            other = rng.choice([a for a in articles if a.title != q.title])
            top = np.argsort(-(para_vecs[other.title] @ v))[:3]
            cases.append(("wrong_document", q.question, [other.paragraphs[i] for i in top], []))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spanqa calibrate-reader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", required=True, help="model folder to calibrate (updated in place)")
    ap.add_argument("--data", required=True, help="held-out SQuAD json (2.0 for unanswerables)")
    ap.add_argument("--titles", nargs="*", help="only these articles of --data")
    ap.add_argument("--holdout-json", help="a training run's holdout.json (gives --data/--titles)")
    ap.add_argument("--limit", type=int, default=2000, help="questions at most")
    ap.add_argument("--wrong-doc-target", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--report", help="write the figures here too (json)")
    args = ap.parse_args(argv)

    from index.embedder import shared_embedder

    titles = args.titles
    if args.holdout_json:
        h = json.loads(Path(args.holdout_json).read_text())
        titles = h["titles"]
    articles = [a for a in load_squad(args.data) if not titles or a.title in titles]
    rng = random.Random(args.seed)
    cases = build_cases(articles, shared_embedder(), rng, args.limit)

    reader = ExtractiveReader(args.reader)
    reader.warm_up()
    rows = []
    from tqdm import tqdm

    for i in tqdm(range(0, len(cases), 16), desc="reading", file=sys.stdout, mininterval=10):
        chunk = cases[i:i + 16]
        res = reader.predict_many([c[1] for c in chunk], [c[2] for c in chunk], top_k=1)
        for (kind, _q, _p, golds), r in zip(chunk, res):
            s = r.spans[0] if r.spans else None
            em, f1 = score(s.text, golds) if (s and golds) else (0.0, 0.0)
            rows.append({"kind": kind, "logit": s.logit if s else -1e4,
                         "null": s.null_logit if s else 0.0, "em": em, "f1": f1})

    ans = [r for r in rows if r["kind"] == "answerable"]
    sw, mw, b = fit_platt([(r["logit"], r["logit"] - r["null"]) for r in ans],
                          [r["em"] == 1.0 for r in ans])
    cal = Calibration(span_weight=sw, margin_weight=mw, bias=b)
    for r in rows:
        r["conf"] = cal.confidence(r["logit"], r["null"])

    def at(t: float) -> dict:
        kinds = {}
        for k in ("answerable", "unanswerable", "wrong_document"):
            rs = [r for r in rows if r["kind"] == k]
            if not rs:
                continue
            abst = [r["conf"] < t for r in rs]
            kinds[k] = {"n": len(rs), "abstain_rate": float(np.mean(abst))}
            if k == "answerable":
                kinds[k]["f1"] = 100 * float(np.mean([0.0 if a else r["f1"] for a, r in zip(abst, rs)]))
                kinds[k]["em"] = 100 * float(np.mean([0.0 if a else r["em"] for a, r in zip(abst, rs)]))
        return kinds

    grid = [round(x, 3) for x in np.arange(0.0, 1.0, 0.005)]
    chosen = next((t for t in grid if at(t).get("wrong_document", {"abstain_rate": 1})["abstain_rate"]
                   >= args.wrong_doc_target), grid[-1])
    cal.threshold = chosen
    never, final = at(0.0), at(chosen)
    ece = expected_calibration_error([r["conf"] for r in ans], [r["em"] == 1.0 for r in ans])
    report = {"data": args.data, "titles": titles, "cases": len(rows), "ece_answerable": ece,
              "calibration": cal.to_dict(), "never_abstain": never, "at_threshold": final,
              "f1_cost": never["answerable"]["f1"] - final["answerable"]["f1"],
              "curve": [{"threshold": t, **{k: v["abstain_rate"] for k, v in a.items()},
                         "answerable_f1": a["answerable"]["f1"]}
                        for t, a in ((t, at(t)) for t in grid[::4])]}
    cfg_path = Path(args.reader) / READER_CONFIG_FILE
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["calibration"] = cal.to_dict()
    cfg["calibration_report"] = {k: report[k] for k in
                                 ("data", "titles", "cases", "ece_answerable", "never_abstain",
                                  "at_threshold", "f1_cost")}
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("cases", "ece_answerable", "calibration",
                                             "never_abstain", "at_threshold", "f1_cost")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
