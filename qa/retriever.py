"""Retriever: question → the top-k passages of a store.

``mode="hybrid"`` (the default) fuses the store's four searches: dense search over the chunks
(meaning), dense search by each chunk's best sentence (the one sentence a question is usually
about), BM25 over the chunks (exact words: names, numbers, rare terms that sentence
embeddings blur) and BM25 by each chunk's best sentence (the words found together in one
sentence). Two ways to fuse (``FusionConfig.method``):

* ``"score"`` (the default): every chunk gets ``dense_weight · cosine(chunk) +
  sentence_weight · cosine(best sentence) + lexical_weight · BM25 / the query's best BM25 +
  sentence_lexical_weight · best sentence's BM25 / the query's best``, computed exactly over
  all chunks; the sum decides.
* ``"rrf"``: weighted reciprocal rank fusion; each search contributes ``weight / (rrf_k +
  rank)`` for the chunks in its top ``pool``.

A store saved before sentence vectors existed is searched with the two-search fusion tuned
for it (:data:`TWO_SEARCH_FUSION`). ``mode="dense"``, ``"sentence"`` and ``"lexical"`` use one
search alone. Each passage's ``score`` is its chunk's cosine similarity to the question (the
confidence model reads it); its ``rank`` is its place after fusion.

The fusion settings are a :class:`FusionConfig`, chosen on held-out training articles by
``python -m eval.tune_retrieval`` (never on the dev set); the defaults below are its choice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from index.store import DocumentStore
from qa.types import Passage

DEFAULT_TOP_K = 5  # chosen on held-out SQuAD train articles: 5 passages read better than 3
MODES = ("hybrid", "dense", "sentence", "lexical")
FUSION_METHODS = ("score", "rrf")


@dataclass(frozen=True)
class FusionConfig:
    """How the searches' results are fused: by score or by reciprocal rank (module doc)."""

    # Chosen by `python -m eval.tune_retrieval` on 23 held-out SQuAD train articles (4,824
    # questions, spanqa-retriever): best mean of recall@1/3/5 over its grids for both
    # methods (the retriever's model card has the table).
    method: str = "score"
    dense_weight: float = 0.75
    sentence_weight: float = 1.0  # 0: leave the sentence search out
    lexical_weight: float = 0.15
    sentence_lexical_weight: float = 0.2  # 0: leave the sentence BM25 out
    rrf_k: float = 2.0  # "rrf" only: a small rrf_k trusts the top ranks of each search
    pool: int = 50  # "rrf" only: candidates from each search (at least 4 × the passages)

    def __post_init__(self):
        if self.method not in FUSION_METHODS:
            raise ValueError(f"method must be one of {', '.join(FUSION_METHODS)}")
        weights = (self.dense_weight, self.lexical_weight, self.sentence_weight,
                   self.sentence_lexical_weight)
        if not self.rrf_k >= 0 or not all(w >= 0 for w in weights):
            raise ValueError("rrf_k and the weights must be non-negative numbers")
        if self.pool < 1:
            raise ValueError("pool must be at least 1")


# The two-search fusion chosen before the sentence search existed (same tuning, dense and
# BM25 alone): what a store saved without sentence vectors is searched with.
TWO_SEARCH_FUSION = FusionConfig(method="rrf", rrf_k=2.0, dense_weight=1.0, lexical_weight=1.25,
                                 sentence_weight=0.0, sentence_lexical_weight=0.0, pool=20)
# The three-search default before the sentence BM25 (2026-12-01 to 2026-12-03), for comparison.
THREE_SEARCH_FUSION = FusionConfig(dense_weight=0.5, lexical_weight=0.3, sentence_lexical_weight=0.0)


def fuse(rankings: list[list[int]], weights: list[float], rrf_k: float) -> list[int]:
    """Items of several best-first rankings in weighted-RRF order (ties keep first-seen order)."""
    fused: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for r, item in enumerate(ranking):
            fused[item] = fused.get(item, 0.0) + w / (rrf_k + r + 1)
    return sorted(fused, key=lambda i: -fused[i])


def _by_best(scores: np.ndarray) -> np.ndarray | None:
    """BM25 scores divided by the query's best (0-1); None when no chunk matched."""
    best = float(scores.max()) if len(scores) else 0.0
    return scores / best if best > 0 else None


def score_fuse(chunk: np.ndarray, sentence: np.ndarray | None, lexical: np.ndarray,
               fusion: FusionConfig, k: int,
               sentence_lexical: np.ndarray | None = None) -> list[int]:
    """The top ``k`` rows by fused score, for one query: ``chunk`` and ``sentence`` cosine
    similarities, ``lexical`` and ``sentence_lexical`` BM25 scores over all chunks
    (``sentence`` or ``sentence_lexical`` None: left out). Each BM25 is divided by the
    query's best, so each term is on a 0-1 scale; ties keep row order."""
    z = fusion.dense_weight * chunk.astype(np.float64)
    if sentence is not None and fusion.sentence_weight > 0:
        z = z + fusion.sentence_weight * sentence
    for scores, weight in ((lexical, fusion.lexical_weight),
                           (sentence_lexical, fusion.sentence_lexical_weight)):
        scaled = _by_best(scores) if scores is not None and weight > 0 else None
        if scaled is not None:
            z = z + weight * scaled
    if len(z) <= k:
        return [int(i) for i in np.argsort(-z, kind="stable")]
    top = np.argpartition(-z, k - 1)[:k]
    return [int(i) for i in top[np.lexsort((top, -z[top]))]]


class Retriever:
    def __init__(self, store: DocumentStore, top_k: int = DEFAULT_TOP_K, mode: str = "hybrid",
                 fusion: FusionConfig | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError("top_k must be a positive integer")
        self.store = store
        self.top_k = top_k
        self.mode = mode
        self._fusion = fusion  # None: the default for the store's searches (``fusion``)

    @property
    def fusion(self) -> FusionConfig:
        """The fusion in use: the one given, else the tuned default of the store's searches."""
        if self._fusion is not None:
            return self._fusion
        return FusionConfig() if self.store.has_sentences else TWO_SEARCH_FUSION

    def to_dict(self) -> dict:
        return {"type": "Retriever", "top_k": self.top_k, "mode": self.mode,
                "fusion": asdict(self.fusion), "store": self.store.to_dict()}

    def retrieve(self, question: str, top_k: int | None = None) -> list[Passage]:
        return self.retrieve_many([question], top_k)[0]

    def retrieve_many(self, questions: list[str], top_k: int | None = None) -> list[list[Passage]]:
        """Passages for many questions; the questions are embedded in one batch."""
        if not questions:
            return []
        k = top_k or self.top_k
        vecs = self.store.embedder.embed(questions, progress=False)
        f = self.fusion
        if self.mode == "hybrid" and f.method == "score":
            return self._passages(vecs, self._score_fused(questions, vecs, k, f))
        pool = max(f.pool, 4 * k)
        rankings: list[list[list[int]]] = [[] for _ in questions]
        weights = []
        hybrid = self.mode == "hybrid"

        def add(search, weight):
            for i, hits in enumerate(search):
                rankings[i].append([h.row for h in hits])
            weights.append(weight)

        if self.mode == "dense" or (hybrid and f.dense_weight > 0):
            add(self.store.search(vecs, pool if hybrid else k), f.dense_weight)
        if hybrid and f.sentence_weight > 0 and self.store.has_sentences:
            add(self.store.sentence_search(vecs, pool), f.sentence_weight)
        elif self.mode == "sentence":  # a store saved before sentence vectors: by chunk
            add((self.store.sentence_search if self.store.has_sentences else self.store.search)(
                vecs, k), 1.0)
        if self.mode == "lexical" or (hybrid and f.lexical_weight > 0):
            add(self.store.lexical_search(questions, pool), f.lexical_weight)
        if hybrid and f.sentence_lexical_weight > 0 and self.store.has_sentences:
            add(self.store.sentence_lexical_search(questions, pool), f.sentence_lexical_weight)
        return self._passages(vecs, [fuse(ranks, weights, f.rrf_k)[:k] for ranks in rankings])

    def _score_fused(self, questions, vecs, k: int, f: FusionConfig) -> list[list[int]]:
        store = self.store
        if not store.chunks:
            return [[] for _ in questions]
        chunk = store.chunk_scores(vecs)
        sentence = (store.sentence_scores(vecs) if store.has_sentences and f.sentence_weight > 0
                    else [None] * len(questions))
        lexical = store.lexical_scores(questions)
        sentence_lexical = (store.sentence_lexical_scores(questions)
                            if store.has_sentences and f.sentence_lexical_weight > 0
                            else [None] * len(questions))
        return [score_fuse(c, s, lx, f, k, slx)
                for c, s, lx, slx in zip(chunk, sentence, lexical, sentence_lexical)]

    def _passages(self, vecs, rows_per_question: list[list[int]]) -> list[list[Passage]]:
        chunks, docs = self.store.chunks, self.store.documents
        out = []
        for v, rows in zip(vecs, rows_per_question):
            sims = self.store.similarity(v, rows)
            out.append([Passage(chunks[r], s, n + 1, docs[chunks[r].doc_id].title)
                        for n, (r, s) in enumerate(zip(rows, sims))])
        return out
