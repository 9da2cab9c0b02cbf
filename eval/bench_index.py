"""Where exact search stops paying: FAISS "Flat" vs "HNSW32" query time and recall by size.

    python -m eval.bench_index [--sizes 1000 10000 50000 100000]

Vectors are random unit vectors of the embedder's dimension (384) with queries near stored
points, one query at a time (the chatbot's pattern). The store's ``AUTO_APPROX_THRESHOLD`` is
where Flat's per-query time starts to matter next to the reader's ~100 ms. The last column
is the hybrid retriever's exact score fusion for one query (the store's chunk and
best-sentence scores over all chunks, 5 sentences a chunk, and the weighted sum's order;
BM25 is timed separately in the README).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from index.store import DocumentStore, build_faiss
from qa.retriever import FusionConfig, score_fuse


def bench(n: int, d: int = 384, queries: int = 200, k: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, queries)] + 0.01 * rng.standard_normal((queries, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out = {"n": n}
    truth = None
    for factory in ("Flat", "HNSW32"):
        t = time.perf_counter()
        index = build_faiss(x, factory)
        build = time.perf_counter() - t
        ids, times = [], []
        for v in q:
            t = time.perf_counter()
            _, i = index.search(v[None], k)
            times.append((time.perf_counter() - t) * 1000)
            ids.append(i[0])
        if truth is None:
            truth = ids
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)])
        out[factory] = {"build_s": build, "query_ms_p50": float(np.median(times)),
                        "recall@10_vs_flat": float(recall)}
    return out


def fusion_ms(n: int, d: int = 384, sentences_per_chunk: int = 5, queries: int = 50,
              seed: int = 0) -> float:
    """p50 ms of one query's score fusion over a store of ``n`` random chunks."""
    rng = np.random.default_rng(seed)

    def unit(m):
        x = rng.standard_normal((m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    store = DocumentStore(embedder=object())  # no model: the vectors are given
    store.chunks = [None] * n  # only the count is read here
    store.vectors = unit(n)
    store.sentence_vectors = unit(n * sentences_per_chunk)
    store.sentence_rows = np.repeat(np.arange(n), sentences_per_chunk)
    lexical, f, times = np.zeros(n, np.float32), FusionConfig(), []
    for v in unit(queries):
        t = time.perf_counter()
        score_fuse(store.chunk_scores(v[None])[0], store.sentence_scores(v[None])[0], lexical, f, 5)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000, 100_000])
    args = ap.parse_args()
    print(f"{'chunks':>8} {'Flat ms':>8} {'HNSW ms':>8} {'HNSW recall':>12} {'HNSW build s':>13}"
          f" {'fusion ms':>10}")
    for n in args.sizes:
        r = bench(n)
        print(f"{n:>8} {r['Flat']['query_ms_p50']:>8.2f} {r['HNSW32']['query_ms_p50']:>8.2f} "
              f"{r['HNSW32']['recall@10_vs_flat']:>12.3f} {r['HNSW32']['build_s']:>13.1f}"
              f" {fusion_ms(n):>10.2f}", flush=True)


if __name__ == "__main__":
    main()
