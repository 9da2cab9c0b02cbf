"""Retrieval benchmark: how often the passage holding a gold answer is in the top k.

    python -m eval.bench_retrieval [DATA.json] [--embedders all-MiniLM-L6-v2 spanqa-retriever]
                                   [--modes dense sentence lexical hybrid-2 hybrid-3 hybrid]
                                   [--scopes article corpus]

One table: recall@1/3/5/10, MRR@10 and query time for every embedder × mode × scope
(``hybrid-2``: dense and BM25 alone with their own tuned fusion, as before the sentence
search; ``hybrid-3``: the three searches fused as before the sentence BM25)
(``article``: one index per article, the chatbot's one-document setting; ``corpus``: one
index over all articles). No reader involved. ``--bundled`` instead times one warm
``retrieve()`` at a time over the bundled article with the article set's questions (what one
chat question pays for retrieval, the question's embedding included), for the default
fusion and the two-search one. DATA defaults to the shared dev set, wherever
the command runs from.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from index.embedder import BASE_EMBEDDER, DEFAULT_EMBEDDER, shared_embedder
from index.store import DocumentStore, cached_store
from qa.retriever import THREE_SEARCH_FUSION, TWO_SEARCH_FUSION, FusionConfig, Retriever
from qa.squad import SquadArticle, article_document, gold_spans, load_squad, shared_data

KS = (1, 3, 5, 10)
BENCH_MODES = ("dense", "sentence", "lexical", "hybrid-2", "hybrid-3", "hybrid")


def default_dev() -> str:
    return str(shared_data("qa", "dev", "squad_dev_5_articles.json"))


@dataclass
class Indexed:
    """Stores over a question set's articles, and each answerable question's gold spans."""

    stores: list[DocumentStore]
    questions: list[list[tuple[str, list[tuple[str, int, int]]]]]  # per store: (q, golds)
    index_seconds: float
    n_chunks: int


def build(articles: list[SquadArticle], embedder_name: str, scope: str) -> Indexed:
    emb = shared_embedder(embedder_name)
    emb.warm_up()
    t = time.perf_counter()
    docs = [article_document(a, f"a{i}") for i, a in enumerate(articles)]
    per_art = [[(q.question, [(doc.id, s, e) for s, e in gold_spans(q, starts[q.paragraph])])
                for q in a.questions if q.answers] for a, (doc, starts) in zip(articles, docs)]
    if scope == "corpus":
        store = DocumentStore(emb)
        store.add([d for d, _ in docs])
        stores, questions = [store], [[q for qs in per_art for q in qs]]
    else:
        stores = []
        for doc, _ in docs:
            stores.append(DocumentStore(emb))
            stores[-1].add([doc])
        questions = per_art
    for s in stores:  # build both searches now, so query time is query time
        s.index, s.lexical
    return Indexed(stores, questions, time.perf_counter() - t, sum(len(s) for s in stores))


def ranks(ix: Indexed, mode: str, fusion: FusionConfig | None = None) -> tuple[list, float]:
    """Rank of the gold passage per question (None: not in the top 10), and ms per query."""
    if mode in ("hybrid-2", "hybrid-3"):
        mode, fusion = "hybrid", TWO_SEARCH_FUSION if mode == "hybrid-2" else THREE_SEARCH_FUSION
    out, t = [], time.perf_counter()
    for store, qs in zip(ix.stores, ix.questions):
        found = Retriever(store, top_k=max(KS), mode=mode, fusion=fusion).retrieve_many(
            [q for q, _ in qs])
        for (_, golds), passages in zip(qs, found):
            out.append(next((p.rank for p in passages if any(
                p.chunk.doc_id == d and p.chunk.start <= s and e <= p.chunk.end
                for d, s, e in golds)), None))
    return out, (time.perf_counter() - t) * 1000 / max(len(out), 1)


def summary(rs: list) -> dict:
    m = {f"R@{k}": 100 * float(np.mean([r is not None and r <= k for r in rs])) for k in KS}
    m["MRR"] = float(np.mean([1 / r if r else 0 for r in rs]))
    return m


def bundled_timing(runs: int = 3) -> None:
    import json
    from pathlib import Path

    from qa.pipeline import DEFAULT_DOCUMENT

    store = cached_store([DEFAULT_DOCUMENT])  # the index DocumentQA.default() answers over
    data = json.loads((Path(__file__).parent / "questions" / "us_weapons_in_russia.json").read_text())
    qs = [q["question"] for a in data["data"] for p in a["paragraphs"] for q in p["qas"]]
    store.embedder.embed([qs[0]])  # the session's first run is slower: not what a question costs
    t = time.perf_counter()
    for q in qs:
        store.embedder.embed([q])
    embed_ms = (time.perf_counter() - t) * 1000 / len(qs)
    print(f"bundled article: {len(store)} chunks, {len(store.sentence_rows)} sentences; "
          f"{len(qs)} questions; embedding one question: {embed_ms:.1f} ms")
    for name, fusion in (("score fusion (default)", FusionConfig()),
                         ("three searches, score", THREE_SEARCH_FUSION),
                         ("two searches, RRF", TWO_SEARCH_FUSION)):
        r = Retriever(store, fusion=fusion)
        r.retrieve(qs[0])
        times = []
        for _ in range(runs):
            for q in qs:
                t = time.perf_counter()
                r.retrieve(q)
                times.append((time.perf_counter() - t) * 1000)
        print(f"{name:<24} retrieve(): p50 {np.median(times):.1f} ms, mean {np.mean(times):.1f} ms")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="?", default=None, help="SQuAD json (default: the dev set)")
    ap.add_argument("--embedders", nargs="+", default=sorted({BASE_EMBEDDER, DEFAULT_EMBEDDER}))
    ap.add_argument("--modes", nargs="+", choices=BENCH_MODES, default=list(BENCH_MODES))
    ap.add_argument("--scopes", nargs="+", choices=["article", "corpus"], default=["article"])
    ap.add_argument("--bundled", action="store_true",
                    help="time one retrieve() at a time over the bundled article instead")
    args = ap.parse_args(argv)
    if args.bundled:
        return bundled_timing()
    articles = load_squad(args.data or default_dev())
    head = f"| {'embedder':<18} | {'scope':<7} | {'mode':<8} |" + "".join(
        f" {k:>5} |" for k in [f"R@{k}" for k in KS] + ["MRR"]) + " ms/q | chunks/s |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name in args.embedders:
        for scope in args.scopes:
            ix = build(articles, name, scope)
            for mode in args.modes:
                rs, ms = ranks(ix, mode)
                m = summary(rs)
                print(f"| {name:<18} | {scope:<7} | {mode:<8} |" + "".join(
                    f" {m[k]:>5.1f} |" for k in [f"R@{k}" for k in KS]) + f" {m['MRR']:.3f} |"
                    f" {ms:4.1f} | {ix.n_chunks / ix.index_seconds:8.0f} |", flush=True)


if __name__ == "__main__":
    main()
