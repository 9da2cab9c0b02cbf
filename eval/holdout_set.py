"""Write the held-out SQuAD train set that end-to-end figures on training-side data use.

``python -m eval.holdout_set --out runs/holdout_train.json [--questions 1000] [--seed 5]``

The articles are those no reader or retriever trains on (:func:`qa.training.retriever.is_holdout`:
every 20th article of ``squad_train_v1.1.json``). Every paragraph of each article is kept, so a
one-index-per-article evaluation searches the whole article; the questions are a random sample
(seeded) spread over all of them, so a run's ``--limit`` is not needed and a small sample is not
one article's.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from qa.squad import shared_data
from qa.training.retriever import is_holdout


def holdout_sample(path: Path, questions: int, seed: int) -> dict:
    """SQuAD json of the held-out articles of ``path`` with ``questions`` of their questions."""
    data = json.loads(path.read_text())["data"]
    arts = [a for i, a in enumerate(data) if is_holdout(str(path), i, a["title"])]
    ids = [qa["id"] for a in arts for p in a["paragraphs"] for qa in p["qas"]]
    keep = set(random.Random(seed).sample(ids, min(questions, len(ids))))
    out = []
    for a in arts:
        paras = [dict(p, qas=[qa for qa in p["qas"] if qa["id"] in keep]) for p in a["paragraphs"]]
        if any(p["qas"] for p in paras):
            out.append(dict(a, paragraphs=paras))
    return {"version": "spanqa-holdout", "source": path.name, "seed": seed, "data": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.holdout_set", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the SQuAD json")
    ap.add_argument("--source", default=None,
                    help="squad_train_v1.1.json (default: the one in ../shared/data/qa/train)")
    ap.add_argument("--questions", type=int, default=1000, help="questions to sample (default 1000)")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args(argv)
    src = Path(a.source) if a.source else shared_data("qa/train/squad_train_v1.1.json")
    if not src.is_file():
        ap.error(f"no such file: {src}")
    if a.questions < 1:
        ap.error("--questions must be at least 1")
    out = holdout_sample(src, a.questions, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out))
    n = sum(len(p["qas"]) for x in out["data"] for p in x["paragraphs"])
    print(f"{n} questions of {len(out['data'])} held-out articles -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
