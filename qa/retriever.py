"""Retriever: question → the top-k passages of a store.

``mode="hybrid"`` (the default) fuses two rankings by reciprocal rank fusion (RRF, k=60):
the store's dense FAISS search (meaning) and BM25 over the same chunks (exact words: names,
numbers, rare terms that sentence embeddings blur). Measured on the shared dev set
(``eval/bench_retrieval.py``), hybrid finds the gold passage in the top 3 markedly more often
than dense alone. ``mode="dense"`` uses FAISS only. Each passage's ``score`` is its cosine
similarity to the question; its ``rank`` is its place after fusion.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from index.store import DocumentStore
from qa.types import Passage

DEFAULT_TOP_K = 3
RRF_K = 60
_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset("""a an and are as at be by did do does for from had has have he her his how i
in is it its of on or she that the their them they this to was were what when where which who
whom whose why will with you""".split())


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class BM25:
    """Okapi BM25 (k1=1.5, b=0.75) over a fixed list of texts."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tfs = [Counter(words(t)) for t in texts]
        self.lens = np.array([sum(tf.values()) for tf in self.tfs], dtype=np.float64)
        self.avg = float(self.lens.mean()) if len(texts) else 1.0
        df = Counter(w for tf in self.tfs for w in tf)
        n = len(texts)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.postings: dict[str, list[int]] = {}
        for i, tf in enumerate(self.tfs):
            for w in tf:
                self.postings.setdefault(w, []).append(i)

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(len(self.tfs))
        for w in set(words(query)):
            idf = self.idf.get(w)
            if idf is None:
                continue
            for i in self.postings[w]:
                tf = self.tfs[i][w]
                out[i] += idf * tf * (self.k1 + 1) / (
                    tf + self.k1 * (1 - self.b + self.b * self.lens[i] / self.avg))
        return out


class Retriever:
    def __init__(self, store: DocumentStore, top_k: int = DEFAULT_TOP_K, mode: str = "hybrid"):
        if mode not in ("hybrid", "dense"):
            raise ValueError("mode must be 'hybrid' or 'dense'")
        self.store = store
        self.top_k = top_k
        self.mode = mode
        self._lex: tuple[int, BM25, dict[str, int]] | None = None  # (store version, BM25, chunk row)

    def to_dict(self) -> dict:
        return {"type": "Retriever", "top_k": self.top_k, "mode": self.mode,
                "store": self.store.to_dict()}

    def _lexical(self) -> tuple[BM25, dict[str, int]]:
        """BM25 over the store's chunks and each chunk's row, rebuilt when the store changes."""
        if self._lex is None or self._lex[0] != self.store.version:
            chunks = self.store.chunks
            self._lex = (self.store.version, BM25([c.text for c in chunks]),
                         {c.id: i for i, c in enumerate(chunks)})
        return self._lex[1], self._lex[2]

    def retrieve(self, question: str, top_k: int | None = None) -> list[Passage]:
        return self.retrieve_many([question], top_k)[0]

    def retrieve_many(self, questions: list[str], top_k: int | None = None) -> list[list[Passage]]:
        """Passages for many questions; the questions are embedded in one batch."""
        if not questions:
            return []
        k = top_k or self.top_k
        vecs = self.store.embedder.embed(questions, progress=False)
        if self.mode == "dense" or len(self.store) <= k:
            hits = self.store.search(vecs, k)
            ranked = [[(h.chunk, h.score) for h in row] for row in hits]
        else:
            pool = max(4 * k, 20)
            dense = self.store.search(vecs, pool)
            bm25, pos = self._lexical()
            chunks = self.store.chunks
            ranked = []
            for q, v, row in zip(questions, vecs, dense):
                fused: dict[int, float] = {}
                for r, h in enumerate(row):
                    i = pos[h.chunk.id]
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + r + 1)
                lex = bm25.scores(q)
                for r, i in enumerate(np.argsort(-lex, kind="stable")[:pool]):
                    if lex[i] <= 0:
                        break
                    fused[int(i)] = fused.get(int(i), 0.0) + 1.0 / (RRF_K + r + 1)
                best = sorted(fused, key=lambda i: -fused[i])[:k]
                ranked.append([(chunks[i], float(self.store.vectors[i] @ v)) for i in best])
        docs = self.store.documents
        return [[Passage(c, s, r + 1, docs[c.doc_id].title) for r, (c, s) in enumerate(row)]
                for row in ranked]
