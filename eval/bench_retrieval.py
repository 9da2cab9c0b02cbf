"""Retrieval benchmark: how often the passage holding a gold answer is in the top k.

    python -m eval.bench_retrieval [DATA.json] [--modes dense hybrid]

One index per article (the chatbot's one-document setting); prints recall@1/3/5/10 and MRR
per retrieval mode. No reader involved, so it runs in about a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from eval.runner import article_document, gold_spans
from index.store import DocumentStore
from qa.retriever import Retriever
from qa.squad import load_squad

DEFAULT_DATA = "../shared/data/qa/dev/squad_dev_5_articles.json"


def gold_ranks(data: str, mode: str) -> list[int | None]:
    ranks = []
    for ai, art in enumerate(load_squad(data)):
        doc, starts = article_document(art, f"a{ai}")
        store = DocumentStore()
        store.add([doc])
        qs = [q for q in art.questions if q.answers]
        found = Retriever(store, top_k=10, mode=mode).retrieve_many([q.question for q in qs])
        for q, passages in zip(qs, found):
            golds = gold_spans(q, starts[q.paragraph])
            ranks.append(next((p.rank for p in passages if any(
                p.chunk.start <= s and e <= p.chunk.end for s, e in golds)), None))
    return ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", default=DEFAULT_DATA)
    ap.add_argument("--modes", nargs="+", default=["dense", "hybrid"])
    args = ap.parse_args()
    print(f"{'mode':<8}" + "".join(f"{'R@' + str(k):>8}" for k in (1, 3, 5, 10)) + f"{'MRR':>8}{'n':>6}{'s':>6}")
    for mode in args.modes:
        t = time.time()
        ranks = gold_ranks(args.data, mode)
        rec = [100 * np.mean([r is not None and r <= k for r in ranks]) for k in (1, 3, 5, 10)]
        mrr = np.mean([1 / r if r else 0 for r in ranks])
        print(f"{mode:<8}" + "".join(f"{v:>8.1f}" for v in rec) + f"{mrr:>8.3f}{len(ranks):>6}{time.time() - t:>6.0f}")


if __name__ == "__main__":
    main()
