"""Choose the retriever's fusion settings on held-out *training* articles (never on dev).

    python -m eval.tune_retrieval [--embedder spanqa-retriever] [--out runs/tune.json]

The articles are the SQuAD train articles that no retriever trains on
(``qa.training.retriever.is_holdout``), one index per article. Each question's chunk,
best-sentence and BM25 scores over every chunk are computed once; every setting of the grid
then re-fuses them: by score (dense and lexical weight, the sentence weight 1) and by
reciprocal rank (RRF constant, sentence and lexical weight, pool; the dense weight 1). The
setting with the best mean of recall@1, @3 and @5 wins (ties: MRR). Prints the best settings
and the figures of each search alone, of the two-search fusion and of the default.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval.bench_retrieval import build, summary
from index.embedder import DEFAULT_EMBEDDER
from qa.retriever import TWO_SEARCH_FUSION, FusionConfig, fuse, score_fuse
from qa.squad import load_squad, shared_data
from qa.training.retriever import is_holdout

RRF_KS = (0, 2, 5, 10, 30, 60)
SENTENCE_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)  # 0: the two-search fusion
LEXICAL_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
POOLS = (10, 20, 50)
# method "score": the sentence weight is 1 and the others are relative to it
SCORE_DENSE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCORE_LEXICAL_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
DEPTH = 50


def holdout_articles(path: Path):
    return [a for i, a in enumerate(load_squad(path)) if is_holdout(str(path), i, a.title)]


@dataclass
class Cached:
    """One question's scores over every chunk of its article's store, and its gold rows."""

    chunk: np.ndarray
    sentence: np.ndarray
    lexical: np.ndarray
    gold: set[int]

    def ranking(self, name: str, depth: int = DEPTH) -> list[int]:
        v = getattr(self, name)
        order = np.argsort(-v, kind="stable")[:depth]
        return [int(i) for i in order if name != "lexical" or v[i] > 0]


def cached_scores(ix) -> list[Cached]:
    """Every question's three score arrays, computed once (exact, as a Flat store searches)."""
    out = []
    for store, qs in zip(ix.stores, ix.questions):
        texts = [q for q, _ in qs]
        vecs = store.embedder.embed(texts, progress=False)
        arrays = zip(store.chunk_scores(vecs), store.sentence_scores(vecs),
                     store.lexical_scores(texts))
        for (_, golds), (c, st, lx) in zip(qs, arrays):
            gold = {i for i, ch in enumerate(store.chunks) if any(
                ch.doc_id == doc and ch.start <= s and e <= ch.end for doc, s, e in golds)}
            out.append(Cached(c, st, lx, gold))
    return out


def score(cache: list[Cached], cfg: FusionConfig, k: int = 10, passages: int = 5) -> dict:
    ranks = []
    for q in cache:
        if cfg.method == "score":
            fused = score_fuse(q.chunk, q.sentence, q.lexical, cfg, k)
        else:
            pool = max(cfg.pool, 4 * passages)  # the retriever widens the pool to 4 × passages
            lists, ws = [q.ranking("chunk", pool)], [cfg.dense_weight]  # the retriever's order
            if cfg.sentence_weight > 0:
                lists.append(q.ranking("sentence", pool))
                ws.append(cfg.sentence_weight)
            fused = fuse(lists + [q.ranking("lexical", pool)], ws + [cfg.lexical_weight],
                         cfg.rrf_k)[:k]
        ranks.append(next((r + 1 for r, row in enumerate(fused) if row in q.gold), None))
    return summary(ranks)


def grid() -> list[FusionConfig]:
    rrf = [FusionConfig(method="rrf", rrf_k=rk, dense_weight=1.0, sentence_weight=sw,
                        lexical_weight=lw, pool=pool)
           for rk, sw, lw, pool in itertools.product(RRF_KS, SENTENCE_WEIGHTS, LEXICAL_WEIGHTS,
                                                     POOLS)]
    by_score = [FusionConfig(method="score", dense_weight=dw, sentence_weight=1.0,
                             lexical_weight=lw)
                for dw, lw in itertools.product(SCORE_DENSE_WEIGHTS, SCORE_LEXICAL_WEIGHTS)]
    return rrf + by_score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(shared_data("qa", "train", "squad_train_v1.1.json")))
    ap.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    ap.add_argument("--out", help="write the grid's results here (json)")
    args = ap.parse_args(argv)
    articles = holdout_articles(Path(args.data))
    ix = build(articles, args.embedder, "article")
    cache = cached_scores(ix)
    print(f"{len(articles)} held-out articles, {len(cache)} questions, embedder {args.embedder}")
    results = []
    for cfg in tqdm(grid(), desc="grid", unit="setting"):
        m = score(cache, cfg)
        results.append((np.mean([m["R@1"], m["R@3"], m["R@5"]]), m["MRR"], cfg, m))
    results.sort(key=lambda r: (-r[0], -r[1]))
    only = {"dense only": FusionConfig(dense_weight=1.0, lexical_weight=0.0, sentence_weight=0.0),
            "sentence only": FusionConfig(dense_weight=0.0, lexical_weight=0.0),
            "lexical only": FusionConfig(dense_weight=0.0, lexical_weight=1.0, sentence_weight=0.0),
            "two searches": TWO_SEARCH_FUSION,
            "default": FusionConfig()}
    for label, cfg in only.items():
        m = score(cache, cfg)
        print(f"{label:<14}", {k: round(v, 3) for k, v in m.items()}, flush=True)
    for obj, _, cfg, m in results[:8]:
        print(f"{obj:6.2f}", cfg, {k: round(v, 3) for k, v in m.items()})
    if args.out:
        Path(args.out).write_text(json.dumps(
            [{"objective": o, **asdict(c), **m} for o, _, c, m in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
