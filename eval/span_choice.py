"""Which span a calibration picks among every passage's candidates, measured without reading
again: read questions once with their retrieved passages and keep every raw span, then score
any number of calibrations on those rows (held-out *training* articles, never dev, for
choosing; the reader's model card has the figures).

    python -m eval.span_choice read runs/holdout_train.json --out runs/spans-ho.jsonl --limit 600
    python -m eval.span_choice compare runs/spans-ho.jsonl qa/models/reader/spanqa_reader.json OTHER.json

``read`` answers each answerable question of a SQuAD file over its own article's index
(default settings: the default reader reads all ``--passages`` retrieved passages, no staged
reading) and writes one row per question: every span's logit, no-answer logit, passage
similarity, place in the ranking, EM and F1. ``compare`` prints, per calibration config
(a ``spanqa_reader.json``), EM and F1 of the span it ranks first, never abstaining and at its
threshold, reading the first 1..N passages.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np


def read(args) -> int:
    from tqdm import tqdm

    from qa.metrics import score
    from qa.pipeline import DocumentQA, shared_reader
    from qa.scoring import has_word
    from qa.squad import article_document, load_squad

    arts = load_squad(args.data)
    qs = [(ai, q) for ai, a in enumerate(arts) for q in a.questions if not q.is_impossible]
    random.Random(args.seed).shuffle(qs)
    qs = qs[:args.limit]
    reader = shared_reader(args.reader)
    by_art: dict[int, list] = {}
    for ai, q in qs:
        by_art.setdefault(ai, []).append(q)
    with open(args.out, "w") as f, tqdm(total=len(qs), desc="questions", file=sys.stdout,
                                        mininterval=10) as bar:
        for ai, aqs in by_art.items():
            doc, _ = article_document(arts[ai], f"a{ai}")
            qa = DocumentQA.from_documents([doc], reader=reader, progress=False)
            for i in range(0, len(aqs), 16):
                batch = aqs[i:i + 16]
                found = qa.retriever.retrieve_many([q.question for q in batch], args.passages)
                raw = reader.read_spans([q.question for q in batch],
                                        [[p.chunk.text for p in ps] for ps in found])
                for q, ps, spans in zip(batch, found, raw):
                    row = {"id": q.id, "title": arts[ai].title, "spans": []}
                    for s in spans:
                        em, f1 = score(s.text, q.gold_texts)
                        row["spans"].append({
                            "logit": s.logit, "null": s.null_logit, "relevance": ps[s.passage].score,
                            "place": s.passage + 1, "alnum": has_word(s.text),
                            "em": em, "f1": f1})
                    f.write(json.dumps(row) + "\n")
                bar.update(len(batch))
    return 0


def pick(spans: list[dict], cal) -> tuple[dict | None, float]:
    """The span ``cal`` ranks first (as :func:`qa.scoring.score_spans` does: never a span
    without a letter or digit) and its confidence."""
    spans = [s for s in spans if s["alnum"]]
    if not spans:
        return None, 0.0
    conf = [cal.confidence(s["logit"], s["null"], s["relevance"], s["place"]) for s in spans]
    i = max(range(len(spans)), key=lambda j: (conf[j], spans[j]["logit"]))
    return spans[i], conf[i]


def compare(args) -> int:
    from qa.calibration import Calibration

    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
    most = max((s["place"] for r in rows for s in r["spans"]), default=1)
    for path in args.configs:
        cal = Calibration.from_dict(json.loads(Path(path).read_text())["calibration"])
        print(f"{path} (threshold {cal.threshold}), {len(rows)} questions")
        for k in range(1, most + 1):
            em, f1, em_t, f1_t, abst = [], [], [], [], []
            for r in rows:
                best, conf = pick([s for s in r["spans"] if s["place"] <= k], cal)
                e, f = (best["em"], best["f1"]) if best else (0.0, 0.0)
                keep = best is not None and not cal.refuses(conf, best["logit"], best["null"],
                                                            probe=best.get("probe"))
                em.append(e), f1.append(f), em_t.append(e * keep), f1_t.append(f * keep)
                abst.append(not keep)
            print(f"  first {k} passages: never abstaining EM {100 * np.mean(em):.2f} "
                  f"F1 {100 * np.mean(f1):.2f}; at the threshold EM {100 * np.mean(em_t):.2f} "
                  f"F1 {100 * np.mean(f1_t):.2f}, abstains {100 * np.mean(abst):.1f}%")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.span_choice",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("read", help="read questions once, keep every span")
    r.add_argument("data", help="SQuAD json (held-out training articles)")
    r.add_argument("--out", required=True)
    r.add_argument("--limit", type=int, default=600)
    r.add_argument("--passages", type=int, default=5)
    r.add_argument("--reader", default="default")
    r.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="score calibrations on the rows")
    c.add_argument("rows")
    c.add_argument("configs", nargs="+", help="spanqa_reader.json files")
    args = ap.parse_args(argv)
    return read(args) if args.cmd == "read" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
