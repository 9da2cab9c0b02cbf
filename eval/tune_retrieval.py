"""Choose the retriever's fusion settings on held-out *training* articles (never on dev).

    python -m eval.tune_retrieval [--embedder spanqa-retriever] [--out runs/tune.json]

The articles are the SQuAD train articles that no retriever trains on
(``qa.training.retriever.is_holdout``), one index per article. Each question's chunk,
best-sentence, BM25 and best-sentence BM25 scores over every chunk are computed once; every
setting of the grid then re-fuses them: by score (dense, lexical and sentence-lexical
weight, the sentence weight 1) and by reciprocal rank (RRF constant, sentence and lexical
weight, pool; the dense weight 1, no sentence BM25). The setting with the best mean of
recall@1, @3 and @5 wins (ties: MRR). Prints the best settings and the figures of each
search alone, of the two- and three-search fusions and of the default.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.bench_retrieval import build, summary
from index.embedder import DEFAULT_EMBEDDER
from qa.retriever import FUSION_METHODS, THREE_SEARCH_FUSION, TWO_SEARCH_FUSION, FusionConfig, fuse, score_fuse
from qa.squad import load_squad, shared_data
from qa.training.retriever import is_holdout

RRF_KS = (0, 2, 5, 10, 30, 60)
SENTENCE_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)  # 0: the two-search fusion
LEXICAL_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
POOLS = (10, 20, 50)
# method "score": the sentence weight is 1 and the others are relative to it
SCORE_DENSE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCORE_LEXICAL_WEIGHTS = (0.0, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75)
SCORE_SENTENCE_LEXICAL_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4)
DEPTH = 50


def holdout_articles(path: Path):
    return [a for i, a in enumerate(load_squad(path)) if is_holdout(str(path), i, a.title)]


@dataclass
class Cached:
    """One question's scores over every chunk of its article's store, and its gold rows."""

    chunk: np.ndarray
    sentence: np.ndarray
    lexical: np.ndarray
    sentence_lexical: np.ndarray
    gold: set[int]

    def ranking(self, name: str, depth: int = DEPTH) -> list[int]:
        v = getattr(self, name)
        order = np.argsort(-v, kind="stable")[:depth]
        return [int(i) for i in order if "lexical" not in name or v[i] > 0]


def cached_scores(ix) -> list[Cached]:
    """Every question's four score arrays, computed once (exact, as a Flat store searches)."""
    out = []
    for store, qs in zip(ix.stores, ix.questions):
        texts = [q for q, _ in qs]
        vecs = store.embedder.embed(texts, progress=False)
        arrays = zip(store.chunk_scores(vecs), store.sentence_scores(vecs),
                     store.lexical_scores(texts), store.sentence_lexical_scores(texts))
        for (_, golds), (c, st, lx, slx) in zip(qs, arrays):
            gold = {i for i, ch in enumerate(store.chunks) if any(
                ch.doc_id == doc and ch.start <= s and e <= ch.end for doc, s, e in golds)}
            out.append(Cached(c, st, lx, slx, gold))
    return out


def score(cache: list[Cached], cfg: FusionConfig, k: int = 10, passages: int = 5) -> dict:
    ranks = []
    for q in cache:
        if cfg.method == "score":
            fused = score_fuse(q.chunk, q.sentence, q.lexical, cfg, k, q.sentence_lexical)
        else:
            pool = max(cfg.pool, 4 * passages)  # the retriever widens the pool to 4 × passages
            lists, ws = [q.ranking("chunk", pool)], [cfg.dense_weight]  # the retriever's order
            if cfg.sentence_weight > 0:
                lists.append(q.ranking("sentence", pool))
                ws.append(cfg.sentence_weight)
            lists.append(q.ranking("lexical", pool))
            ws.append(cfg.lexical_weight)
            if cfg.sentence_lexical_weight > 0:
                lists.append(q.ranking("sentence_lexical", pool))
                ws.append(cfg.sentence_lexical_weight)
            fused = fuse(lists, ws, cfg.rrf_k)[:k]
        ranks.append(next((r + 1 for r, row in enumerate(fused) if row in q.gold), None))
    return summary(ranks)


def grid(methods=FUSION_METHODS) -> list[FusionConfig]:
    rrf = [FusionConfig(method="rrf", rrf_k=rk, dense_weight=1.0, sentence_weight=sw,
                        lexical_weight=lw, sentence_lexical_weight=0.0, pool=pool)
           for rk, sw, lw, pool in itertools.product(RRF_KS, SENTENCE_WEIGHTS, LEXICAL_WEIGHTS,
                                                     POOLS)]
    by_score = [FusionConfig(method="score", dense_weight=dw, sentence_weight=1.0,
                             lexical_weight=lw, sentence_lexical_weight=slw)
                for dw, lw, slw in itertools.product(SCORE_DENSE_WEIGHTS, SCORE_LEXICAL_WEIGHTS,
                                                     SCORE_SENTENCE_LEXICAL_WEIGHTS)]
    return (rrf if "rrf" in methods else []) + (by_score if "score" in methods else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(shared_data("qa", "train", "squad_train_v1.1.json")))
    ap.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    ap.add_argument("--methods", nargs="+", choices=FUSION_METHODS, default=list(FUSION_METHODS),
                    help="the fusion methods whose grids to search")
    ap.add_argument("--out", help="write the grid's results here (json)")
    args = ap.parse_args(argv)
    articles = holdout_articles(Path(args.data))
    ix = build(articles, args.embedder, "article")
    cache = cached_scores(ix)
    print(f"{len(articles)} held-out articles, {len(cache)} questions, embedder {args.embedder}")
    results = []
    for cfg in tqdm(grid(args.methods), desc="grid", unit="setting"):
        m = score(cache, cfg)
        results.append((np.mean([m["R@1"], m["R@3"], m["R@5"]]), m["MRR"], cfg, m))
    results.sort(key=lambda r: (-r[0], -r[1]))
    alone = FusionConfig(dense_weight=0.0, sentence_weight=0.0, lexical_weight=0.0,
                         sentence_lexical_weight=0.0)
    only = {"dense only": replace(alone, dense_weight=1.0),
            "sentence only": replace(alone, sentence_weight=1.0),
            "lexical only": replace(alone, lexical_weight=1.0),
            "sentence BM25": replace(alone, sentence_lexical_weight=1.0),
            "two searches": TWO_SEARCH_FUSION,
            "three searches": THREE_SEARCH_FUSION,
            "default": FusionConfig()}
    for label, cfg in only.items():
        m = score(cache, cfg)
        print(f"{label:<15}", {k: round(v, 3) for k, v in m.items()}, flush=True)
    for obj, _, cfg, m in results[:8]:
        print(f"{obj:6.2f}", cfg, {k: round(v, 3) for k, v in m.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(
            [{"objective": o, **asdict(c), **m} for o, _, c, m in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
