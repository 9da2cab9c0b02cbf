"""Choose the retriever's fusion settings on held-out *training* articles (never on dev).

    python -m eval.tune_retrieval [--embedder spanqa-retriever] [--out runs/tune.json]

The articles are the SQuAD train articles that no retriever trains on
(``qa.training.retriever.is_holdout``), one index per article. Each question's dense,
best-sentence and lexical rankings (top 50) are computed once; every (RRF constant, sentence
weight, lexical weight, pool) in the grid then re-fuses them (the dense weight is 1), and the
setting with the best mean of recall@1, @3 and @5 wins (ties: MRR). Prints the best settings
and the figures of each search alone, of the two-search fusion and of the default.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.bench_retrieval import build, summary
from index.embedder import DEFAULT_EMBEDDER
from qa.retriever import TWO_SEARCH_FUSION, FusionConfig, fuse
from qa.squad import load_squad, shared_data
from qa.training.retriever import is_holdout

RRF_KS = (0, 2, 5, 10, 30, 60)
SENTENCE_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)  # 0: the two-search fusion
LEXICAL_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
POOLS = (10, 20, 50)
DEPTH = 50


def holdout_articles(path: Path):
    return [a for i, a in enumerate(load_squad(path)) if is_holdout(str(path), i, a.title)]


def cached_rankings(ix) -> list[tuple[list[int], list[int], list[int], list[int]]]:
    """(dense rows, best-sentence rows, lexical rows, gold rows) per question, computed once."""
    out = []
    for store, qs in zip(ix.stores, ix.questions):
        texts = [q for q, _ in qs]
        vecs = store.embedder.embed(texts, progress=False)
        dense, sentence = store.search(vecs, DEPTH), store.sentence_search(vecs, DEPTH)
        lexical = store.lexical_search(texts, DEPTH)
        for (_, golds), d, st, lx in zip(qs, dense, sentence, lexical):
            gold = [i for i, c in enumerate(store.chunks) if any(
                c.doc_id == doc and c.start <= s and e <= c.end for doc, s, e in golds)]
            out.append(([h.row for h in d], [h.row for h in st], [h.row for h in lx], gold))
    return out


def score(cache, cfg: FusionConfig, k: int = 10, passages: int = 5) -> dict:
    pool = max(cfg.pool, 4 * passages)  # the retriever widens the pool to 4 × passages
    ranks = []
    for dense, sentence, lexical, gold in cache:
        lists, ws = [dense[:pool]], [cfg.dense_weight]  # in the retriever's order (ties)
        if cfg.sentence_weight > 0:
            lists.append(sentence[:pool])
            ws.append(cfg.sentence_weight)
        fused = fuse(lists + [lexical[:pool]], ws + [cfg.lexical_weight], cfg.rrf_k)[:k]
        ranks.append(next((r + 1 for r, row in enumerate(fused) if row in gold), None))
    return summary(ranks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(shared_data("qa", "train", "squad_train_v1.1.json")))
    ap.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    ap.add_argument("--out", help="write the grid's results here (json)")
    args = ap.parse_args(argv)
    articles = holdout_articles(Path(args.data))
    ix = build(articles, args.embedder, "article")
    cache = cached_rankings(ix)
    print(f"{len(articles)} held-out articles, {len(cache)} questions, embedder {args.embedder}")
    results = []
    grid = list(itertools.product(RRF_KS, SENTENCE_WEIGHTS, LEXICAL_WEIGHTS, POOLS))
    for rrf_k, sw, lw, pool in tqdm(grid, desc="grid", unit="setting"):
        cfg = FusionConfig(rrf_k=rrf_k, dense_weight=1.0, lexical_weight=lw, sentence_weight=sw,
                           pool=pool)
        m = score(cache, cfg)
        results.append((np.mean([m["R@1"], m["R@3"], m["R@5"]]), m["MRR"], cfg, m))
    results.sort(key=lambda r: (-r[0], -r[1]))
    only = {"dense only": FusionConfig(lexical_weight=0.0, sentence_weight=0.0),
            "sentence only": FusionConfig(dense_weight=0.0, lexical_weight=0.0),
            "lexical only": FusionConfig(dense_weight=0.0, sentence_weight=0.0),
            "two searches": TWO_SEARCH_FUSION,
            "default": FusionConfig()}
    for label, cfg in only.items():
        m = score(cache, cfg)
        print(f"{label:<14}", {k: round(v, 3) for k, v in m.items()}, flush=True)
    for obj, _, cfg, m in results[:8]:
        print(f"{obj:6.2f}", cfg, {k: round(v, 3) for k, v in m.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(
            [{"objective": o, **vars(c), **m} for o, _, c, m in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
