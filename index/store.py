"""The on-disk store: a FAISS index over chunk embeddings, plus the chunks and documents.

Layout of a store directory::

    manifest.json        format version, embedder, chunking, index factory, documents + sha256,
                         and the name of the generation folder that holds the data
    gen-000003/          index.faiss, embeddings.npy, chunks.jsonl, documents.json,
                         bm25/ (the lexical index: bm25s arrays and JSON),
                         sentences.npy + sentence_rows.npy (the sentence vectors),
                         bm25_sentences/ (BM25 over the same sentences)

Saving writes a new generation folder, then replaces ``manifest.json`` atomically (write to a
temporary file, fsync, rename): a crash at any moment leaves the previous manifest pointing at
the previous, complete generation. Old generations are removed after a successful save.
Nothing is pickled: FAISS's own file format, ``.npy`` without pickles, JSON.

The FAISS index type is a factory string (``"Flat"``, ``"HNSW32"``, ``"IVF256,Flat"``), so
changing it is configuration. ``"auto"`` picks exact search below ``AUTO_APPROX_THRESHOLD``
chunks and HNSW above (see ``eval/bench_index.py`` for the measurement behind the number).
Vectors are kept beside the index so removing a document or changing the index type rebuilds
the index without embedding anything again.

The store owns both of its searches: dense (:meth:`DocumentStore.search`, FAISS over the
embeddings) and lexical (:meth:`DocumentStore.lexical_search`, BM25 by ``bm25s``, see
:mod:`index.lexical`). A store saved before the lexical index existed loads all the same; its
lexical index is built in memory on first use and written with the next save.

A third search reads the chunks sentence by sentence (:meth:`DocumentStore.sentence_search`):
every sentence of every chunk is embedded on its own, and a chunk scores its best sentence.
A question usually asks about one sentence, and a 160-token chunk's mean-pooled vector blurs
it among the others (the README's retriever section has the recall this buys). The sentence
vectors cost a second embedding pass at indexing time. A store saved before they existed loads and answers with the
other two searches (``has_sentences`` is False); ``spanqa index --rebuild`` adds them.
The same sentences have their own BM25 index (:meth:`DocumentStore.sentence_lexical_scores`:
a chunk scores its best sentence's BM25), so the words a question shares with one sentence
count for more than the same words spread over a chunk. A store saved with sentence vectors
but before this index existed builds it in memory on first use and writes it with the next
save, as for the chunk BM25.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from index.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, Chunk, chunk_document, chunk_sentences
from index.documents import Document, load_file, sha256_text
from index.embedder import (
    BUNDLED_EMBEDDERS,
    EMBEDDER_CONFIG_FILE,
    ENCODER_WEIGHTS_FILE,
    Embedder,
    shared_embedder,
)
from index.errors import (
    DocumentError,
    IncompatibleStoreError,
    SpanQAError,
    StoreNotFoundError,
    UnknownDocumentError,
)
from index.lexical import SENTENCE_BM25, LexicalIndex
from index.locking import store_lock
from index.validate import (
    check_chunks,
    check_documents,
    check_manifest,
    damaged,
    digests,
    generation_dir,
    verify_files,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LEXICAL_DIR = "bm25"
SENTENCE_LEXICAL_DIR = "bm25_sentences"
SENTENCE_FILES = ("sentences.npy", "sentence_rows.npy")
AUTO_APPROX_THRESHOLD = 50_000  # chunks; below it exact search is fast enough (bench_index.py)


def resolve_factory(factory: str, n: int) -> str:
    if factory != "auto":
        return factory
    return "Flat" if n < AUTO_APPROX_THRESHOLD else "HNSW32"


def unique_id(doc_id: str, source: str) -> str:
    """A document id for a file whose name is already taken by a file from elsewhere."""
    return f"{doc_id}@{sha256_text(source)[:8]}"


def check_factory(factory: str, dimension: int) -> None:
    """``SpanQAError`` unless FAISS can build an index from ``factory`` at this dimension."""
    import faiss

    if not isinstance(factory, str) or not factory.strip():
        raise SpanQAError("The FAISS factory string is empty.")
    if factory == "auto":
        return
    try:
        faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise SpanQAError(f"Bad FAISS factory string {factory!r}: "
                          f"{str(exc).splitlines()[0][:200]}") from None


def build_faiss(vectors: np.ndarray, factory: str):
    """A FAISS inner-product index over ``vectors`` (already unit length)."""
    import faiss

    d = vectors.shape[1]
    kind = resolve_factory(factory, len(vectors))
    try:
        index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise SpanQAError(f"Bad FAISS factory string {kind!r}: {str(exc).splitlines()[0]}") from None
    if not index.is_trained:
        if len(vectors) == 0:
            return index
        try:
            index.train(vectors)
        except RuntimeError:
            raise SpanQAError(
                f"The FAISS index {kind!r} cannot be trained on {len(vectors)} chunks (too few "
                "for its clusters); use --factory auto or Flat for a store this small.") from None
    if len(vectors):
        index.add(vectors)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(hnsw.efSearch, 64)  # faiss's default of 16 trades too much recall
    return index


@dataclass
class SearchHit:
    """One chunk found by a search: its row in the store, and the search's score (cosine
    similarity for dense search, BM25 for lexical)."""

    chunk: Chunk
    score: float
    row: int = -1


class DocumentStore:
    """Documents, their chunks and a FAISS index over the chunks' embeddings."""

    def __init__(self, embedder: Embedder | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 overlap: int = DEFAULT_OVERLAP, factory: str = "auto"):
        self.embedder = embedder or shared_embedder()
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.factory = factory
        self.documents: dict[str, Document] = {}
        self.chunks: list[Chunk] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        # One row per sentence of each chunk, in chunk order: its vector and its chunk's row.
        # None: a store saved before sentence vectors existed (no sentence search).
        self.sentence_vectors: np.ndarray | None = np.zeros((0, 0), dtype=np.float32)
        self.sentence_rows: np.ndarray | None = np.zeros(0, dtype=np.int64)
        self._index = None
        self._lexical: LexicalIndex | None = None
        self._sentence_lexical: LexicalIndex | None = None
        self._starts: np.ndarray | None = None  # per chunk, its first sentence row

    # ---- contents -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def to_dict(self) -> dict:
        return {"type": "DocumentStore", "embedder": self.embedder.to_dict(),
                "chunk_size": self.chunk_size, "overlap": self.overlap, "factory": self.factory}

    def add(self, docs: list[Document], progress: bool | None = None,
            on_batch=None, embed=None) -> list[str]:
        """Add documents; returns the ids that changed. ``embed``: a function ``(texts,
        progress) -> vectors`` that stands in for ``self.embedder.embed`` and must give what it
        would (``index --ray`` spreads the embedding over a cluster). A document already present (same id,
        same source) with the same text is skipped; with other text it is replaced. A document
        whose id is taken by one from another source (``a/notes.txt`` and ``b/notes.txt``)
        gets a unique id: its name and a short hash of its source."""
        if isinstance(docs, Document) or not all(isinstance(d, Document) for d in docs):
            raise DocumentError("DocumentStore.add takes a list of Document objects.")
        changed, new_chunks = [], []
        sources = {d.id: d.source for d in self.documents.values()}
        for doc in docs:
            if sources.get(doc.id, doc.source) != doc.source:
                doc = replace(doc, id=unique_id(doc.id, doc.source))
            sources[doc.id] = doc.source
            old = self.documents.get(doc.id)
            if old is not None and old.sha256 == doc.sha256:
                continue
            if old is not None:
                self._drop(doc.id)
            self.documents[doc.id] = doc
            new_chunks.extend(chunk_document(doc, self.embedder.tokenizer, self.chunk_size,
                                             self.overlap))
            changed.append(doc.id)
        if new_chunks:
            check_factory(self.factory, self.embedder.dimension)  # fail before embedding
            self._embed_new(new_chunks, progress, on_batch, embed)
        if changed:
            self._changed()
        return changed

    def _embed_new(self, new_chunks: list[Chunk], progress, on_batch, embed) -> None:
        """Embed new chunks and their sentences in one pass and append them. A chunk that is
        one sentence reuses its own vector; a sentence repeated in two overlapping chunks is
        embedded once. ``on_batch`` hears progress in chunks (``done`` of ``len(new_chunks)``)."""
        texts = [c.text for c in new_chunks]
        if not self.chunks:  # an empty store (also an old one emptied) gains sentence vectors
            self.sentence_vectors = np.zeros((0, 0), dtype=np.float32)
            self.sentence_rows = np.zeros(0, dtype=np.int64)
        with_sentences = self.has_sentences
        where: dict[str, int] = {t: i for i, t in enumerate(texts)}
        sent_ids, sent_rows = [], []
        if with_sentences:
            base = len(self.chunks)
            for row, c in enumerate(new_chunks):
                for s, e in chunk_sentences(c.text):
                    t = c.text[s:e]
                    if t not in where:
                        where[t] = len(texts)
                        texts.append(t)
                    sent_ids.append(where[t])
                    sent_rows.append(base + row)
        scale = len(new_chunks) / len(texts)

        def report(done, total):  # the caller counts passages, not the texts embedded
            on_batch(min(len(new_chunks), int(round(done * scale))), len(new_chunks))

        vecs = (embed(texts, progress) if embed is not None else self.embedder.embed(
            texts, progress=progress, on_batch=report if on_batch else None))
        chunk_vecs = vecs[:len(new_chunks)]
        self.vectors = (chunk_vecs if len(self.chunks) == 0
                        else np.vstack([self.vectors, chunk_vecs]))
        if with_sentences:
            sv = vecs[np.asarray(sent_ids, dtype=np.int64)]
            self.sentence_vectors = np.vstack([self._sentence_matrix(), sv])
            self.sentence_rows = np.concatenate(
                [self.sentence_rows, np.asarray(sent_rows, dtype=np.int64)])
        self.chunks.extend(new_chunks)

    @property
    def has_sentences(self) -> bool:
        """Whether the store holds sentence vectors (stores saved before them do not)."""
        return self.sentence_vectors is not None

    def remove(self, doc_id: str) -> None:
        """Remove one document and its chunks. Unknown ids raise ``UnknownDocumentError``."""
        if doc_id not in self.documents:
            known = ", ".join(sorted(self.documents)[:5]) or "none"
            raise UnknownDocumentError(f"No document {doc_id!r} in this index (it holds: {known}).")
        self._drop(doc_id)
        self._changed()

    def _changed(self) -> None:
        """Drop the searches built on the old chunks; they are rebuilt on next use."""
        self._index = self._lexical = self._sentence_lexical = self._starts = None

    def _drop(self, doc_id: str) -> None:
        n = len(self.chunks)
        keep = np.asarray([i for i, c in enumerate(self.chunks) if c.doc_id != doc_id], np.int64)
        self.chunks = [self.chunks[i] for i in keep]
        self.vectors = self.vectors[keep]
        if self.has_sentences:
            renumber = np.full(n, -1, dtype=np.int64)
            renumber[keep] = np.arange(len(keep))
            rows = renumber[self.sentence_rows]
            self.sentence_vectors = self._sentence_matrix()[rows >= 0]
            self.sentence_rows = rows[rows >= 0]
        self.documents.pop(doc_id, None)

    def _as_matrix(self, v: np.ndarray | None) -> np.ndarray:
        """``v`` as a ``(rows, dimension)`` matrix, also when empty (or absent)."""
        if v is not None and v.ndim == 2 and v.shape[1]:
            return v
        return np.zeros((0, self.embedder.dimension), dtype=np.float32)

    def _matrix(self) -> np.ndarray:
        """The chunk vectors, also when there are none."""
        return self._as_matrix(self.vectors)

    def _sentence_matrix(self) -> np.ndarray:
        return self._as_matrix(self.sentence_vectors)

    # ---- search ---------------------------------------------------------------------------
    @property
    def index(self):
        if self._index is None:
            self._index = build_faiss(self._matrix(), self.factory)
        return self._index

    def search(self, query_vectors: np.ndarray, top_k: int) -> list[list[SearchHit]]:
        """Top ``top_k`` chunks for each query vector, best first."""
        if not self.chunks:
            return [[] for _ in range(len(query_vectors))]
        k = min(top_k, len(self.chunks))
        scores, ids = self.index.search(np.ascontiguousarray(query_vectors, np.float32), k)
        return [[SearchHit(self.chunks[i], float(s), int(i)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

    @property
    def lexical(self) -> LexicalIndex:
        if self._lexical is None:
            self._lexical = LexicalIndex.build([c.text for c in self.chunks])
        return self._lexical

    def lexical_scores(self, queries: list[str]) -> np.ndarray:
        """``(len(queries), n_chunks)`` BM25 scores; 0 where a chunk shares no word."""
        return self.lexical.scores(queries)

    def lexical_search(self, queries: list[str], top_k: int) -> list[list[SearchHit]]:
        """Top ``top_k`` chunks by BM25 for each query, best first; chunks that share no word
        with the query are left out."""
        return self._top_lexical(self.lexical_scores(queries), top_k)

    def sentence_lexical_search(self, queries: list[str], top_k: int) -> list[list[SearchHit]]:
        """Top ``top_k`` chunks by their best sentence's BM25, as :meth:`lexical_search`;
        empty lists for a store without sentence vectors."""
        if not self.chunks or not self.has_sentences:
            return [[] for _ in queries]
        return self._top_lexical(self.sentence_lexical_scores(queries), top_k)

    def _top_lexical(self, scores: np.ndarray, top_k: int) -> list[list[SearchHit]]:
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:top_k]
            out.append([SearchHit(self.chunks[i], float(row[i]), int(i)) for i in top if row[i] > 0])
        return out

    def sentence_texts(self) -> list[str]:
        """The sentences the sentence search reads, one per row of ``sentence_rows``: each
        chunk's :func:`~index.chunking.chunk_sentences`, in chunk order."""
        return [c.text[s:e] for c in self.chunks for s, e in chunk_sentences(c.text)]

    @property
    def sentence_lexical(self) -> LexicalIndex:
        """BM25 over :meth:`sentence_texts` (``SENTENCE_BM25``); needs sentence vectors."""
        if self._sentence_lexical is None:
            self._sentence_lexical = LexicalIndex.build(self.sentence_texts(), *SENTENCE_BM25)
        return self._sentence_lexical

    def sentence_lexical_scores(self, queries: list[str]) -> np.ndarray:
        """``(len(queries), n_chunks)``: each chunk's best sentence's BM25 score for each
        query (0 where no sentence shares a word). Needs sentence vectors and a chunk."""
        scores = self.sentence_lexical.scores(queries)
        return np.maximum.reduceat(scores, self._sentence_starts(), axis=1)

    def sentence_scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """``(len(query_vectors), n_chunks)``: each chunk's best sentence's cosine similarity
        to each query. Needs sentence vectors (:attr:`has_sentences`) and at least one chunk."""
        sims = np.asarray(query_vectors, np.float32) @ self._sentence_matrix().T
        return np.maximum.reduceat(sims, self._sentence_starts(), axis=1)

    def _sentence_starts(self) -> np.ndarray:
        """Each chunk's first sentence row; computed once per version of the store, not per
        question. ``sentence_rows`` is sorted and names every chunk (built so, checked on load)."""
        if self._starts is None:
            self._starts = np.searchsorted(self.sentence_rows, np.arange(len(self.chunks)))
        return self._starts

    def chunk_scores(self, query_vectors: np.ndarray) -> np.ndarray:
        """``(len(query_vectors), n_chunks)`` exact cosine similarities to the chunks."""
        return np.asarray(query_vectors, np.float32) @ self._matrix().T

    def sentence_search(self, query_vectors: np.ndarray, top_k: int) -> list[list[SearchHit]]:
        """Top ``top_k`` chunks for each query vector by their best sentence, best first; the
        hit's score is that sentence's cosine similarity. Exact (one matrix product over the
        sentence vectors). Empty lists for a store without sentence vectors."""
        if not self.chunks or not self.has_sentences or not len(self.sentence_rows):
            return [[] for _ in range(len(query_vectors))]
        best = self.sentence_scores(query_vectors)
        k = min(top_k, len(self.chunks))
        out = []
        for row in best:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.argsort(-row[top], kind="stable")]
            out.append([SearchHit(self.chunks[i], float(row[i]), int(i)) for i in top
                        if np.isfinite(row[i])])
        return out

    def similarity(self, query_vector: np.ndarray, rows: list[int]) -> list[float]:
        """Cosine similarity between one query vector and the chunks at ``rows``."""
        if not rows:
            return []
        return [float(x) for x in self.vectors[np.asarray(rows)] @ query_vector]

    # ---- persistence ----------------------------------------------------------------------
    def manifest(self, generation: str) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "embedder": {"name": self.embedder.name, "dimension": int(self._matrix().shape[1])},
            "chunking": {"chunk_size": self.chunk_size, "overlap": self.overlap,
                         "unit": "embedder tokens", "sentence_aware": True},
            "index_factory": self.factory,
            "index_type": resolve_factory(self.factory, len(self.chunks)),
            "lexical": {"library": "bm25s", "folder": LEXICAL_DIR, "stemmer": "snowball-english"},
            "sentences": ({"n": len(self.sentence_rows), "files": list(SENTENCE_FILES),
                           "lexical_folder": SENTENCE_LEXICAL_DIR}
                          if self.has_sentences else None),
            "n_chunks": len(self.chunks),
            "documents": {d.id: d.sha256 for d in self.documents.values()},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, directory: str | Path) -> Path:
        """Save atomically under the store's lock: the previous save stays loadable until this
        one is complete, and a concurrent writer waits its turn."""
        import faiss

        root = Path(directory)
        if root.exists() and not root.is_dir():
            raise SpanQAError(f"{root} is a file, not an index folder.")
        with store_lock(root):
            gen_dir = Path(tempfile.mkdtemp(prefix="gen-", dir=root))
            try:
                faiss.write_index(self.index, str(gen_dir / "index.faiss"))
                np.save(gen_dir / "embeddings.npy", self._matrix(), allow_pickle=False)
                with open(gen_dir / "chunks.jsonl", "w", encoding="utf-8") as f:
                    for c in self.chunks:
                        f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
                docs = [{**d.to_dict(), "text": d.text} for d in self.documents.values()]
                (gen_dir / "documents.json").write_text(json.dumps(docs, ensure_ascii=False),
                                                        encoding="utf-8")
                self.lexical.save(gen_dir / LEXICAL_DIR)
                if self.has_sentences:
                    np.save(gen_dir / SENTENCE_FILES[0], self._sentence_matrix(), allow_pickle=False)
                    np.save(gen_dir / SENTENCE_FILES[1], self.sentence_rows, allow_pickle=False)
                    self.sentence_lexical.save(gen_dir / SENTENCE_LEXICAL_DIR)
                _fsync_dir_files(gen_dir)
                manifest = self.manifest(gen_dir.name) | {"files": digests(gen_dir)}
                _atomic_write_json(root / MANIFEST, manifest)
            except BaseException:
                shutil.rmtree(gen_dir, ignore_errors=True)
                raise
            # The new generation is live; clear the rest (older saves, crashed half-saves,
            # manifests a killed save left half-written).
            for p in root.glob("gen-*"):
                if p.name != gen_dir.name and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
            for p in root.glob(".manifest-*"):
                p.unlink(missing_ok=True)
        return root

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> "DocumentStore":
        """Load a saved store, verified (:mod:`index.validate`): any damage is a
        ``CorruptStoreError``, never a wrong answer. With ``embedder`` given, it must be the
        one the store was built with; without, the store's own embedder is used."""
        root = Path(directory)
        if not root.exists():
            raise StoreNotFoundError(f"No index at {root}.")
        if not (root / MANIFEST).is_file():
            raise StoreNotFoundError(f"{root} is not a spanqa index (it has no {MANIFEST}).")
        with store_lock(root, exclusive=False):
            m = _read_manifest(root)
            if m.get("format_version") != FORMAT_VERSION:
                raise IncompatibleStoreError(
                    f"The index at {root} has format version {m.get('format_version')}; this "
                    f"spanqa reads version {FORMAT_VERSION}. Rebuild it with `spanqa index`.")
            check_manifest(root, m)
            emb_name = m["embedder"]["name"]
            if embedder is not None and embedder.name != emb_name:
                raise IncompatibleStoreError(
                    f"The index at {root} was built with the embedder {emb_name!r}, not "
                    f"{embedder.name!r}; rebuild it or load it with its own embedder.")
            gen = generation_dir(root, m)
            verify_files(root, gen, m)
            parts = _read_generation(root, gen)
        raw_chunks, docs, vectors, index, lexical, sentences, sentence_lexical = parts
        check_documents(root, docs)
        texts = {d["id"]: d["text"] for d in docs}
        check_chunks(root, raw_chunks, texts)
        n, dim = len(raw_chunks), m["embedder"]["dimension"]
        if index.ntotal != n or len(vectors) != n or (lexical is not None and lexical.n != n):
            raise damaged(root, f"{n} chunks but {len(vectors)} vectors and {index.ntotal} "
                                "FAISS entries")
        if n and (vectors.ndim != 2 or vectors.shape[1] != dim or index.d != dim):
            raise damaged(root, f"vectors are not {dim}-dimensional as the manifest says")
        if n and not np.isfinite(vectors).all():
            raise damaged(root, "embeddings.npy holds non-finite numbers")
        if sentences is not None:
            _check_sentences(root, sentences, n, dim)
        elif m.get("sentences"):
            raise damaged(root, "its sentence vectors are missing")
        # (a bm25_sentences/ of another sentence count fails in _read_generation)
        if sentence_lexical is None and (m.get("sentences") or {}).get("lexical_folder"):
            raise damaged(root, f"its {SENTENCE_LEXICAL_DIR}/ folder is missing")
        if set(m["documents"]) != set(texts) or any(
                sha256_text(texts[k]) != v for k, v in m["documents"].items()):
            raise damaged(root, "documents.json does not hold the documents the manifest lists")
        store = cls(embedder or shared_embedder(emb_name), m["chunking"]["chunk_size"],
                    m["chunking"]["overlap"], m.get("index_factory", "auto"))
        store.chunks = [Chunk.from_dict(c) for c in raw_chunks]
        store.vectors = vectors.astype(np.float32, copy=False)
        store.documents = {d["id"]: Document(id=d["id"], title=d["title"], source=d["source"],
                                             text=d["text"], page_starts=d["page_starts"],
                                             sections=[(s, h) for s, h in d.get("sections", [])])
                           for d in docs}
        store._index = index
        store._lexical = lexical
        store._sentence_lexical = sentence_lexical  # None: built on first use (older stores)
        if sentences is None:  # saved before sentence vectors: the other two searches only
            store.sentence_vectors = store.sentence_rows = None
        else:
            store.sentence_vectors = sentences[0].astype(np.float32, copy=False)
            store.sentence_rows = sentences[1].astype(np.int64, copy=False)
        return store


def _check_sentences(root: Path, sentences, n: int, dim: int) -> None:
    """The sentence vectors and their rows agree with each other and with the chunks."""
    vecs, rows = sentences
    if rows.ndim != 1 or len(vecs) != len(rows) or not np.issubdtype(rows.dtype, np.integer):
        raise damaged(root, "sentences.npy and sentence_rows.npy do not match")
    if n and (vecs.ndim != 2 or vecs.shape[1] != dim):
        raise damaged(root, f"sentence vectors are not {dim}-dimensional as the manifest says")
    if len(rows) and not np.isfinite(vecs).all():
        raise damaged(root, "sentences.npy holds non-finite numbers")
    if np.any(np.diff(rows) < 0) or not np.array_equal(np.unique(rows), np.arange(n)):
        raise damaged(root, "sentence_rows.npy does not name every chunk in order")


def _read_generation(root: Path, gen: Path):
    """The generation's parsed files; any read or parse failure is ``CorruptStoreError``."""
    import faiss

    name = "chunks.jsonl"
    try:
        chunks = [json.loads(line) for line in
                  (gen / name).read_text(encoding="utf-8").splitlines() if line]
        name = "documents.json"
        docs = json.loads((gen / name).read_text(encoding="utf-8"))
        name = "embeddings.npy"
        vectors = np.load(gen / name, allow_pickle=False)
        name = "index.faiss"
        index = faiss.read_index(str(gen / name))
        name = LEXICAL_DIR
        lexical = (LexicalIndex.load(gen / name, len(chunks))
                   if (gen / name).is_dir() else None)  # older stores: built on first use
        sentences = None  # older stores have none
        if (gen / SENTENCE_FILES[0]).exists() or (gen / SENTENCE_FILES[1]).exists():
            name = SENTENCE_FILES[0]
            sentences = (np.load(gen / name, allow_pickle=False),)
            name = SENTENCE_FILES[1]
            sentences += (np.load(gen / name, allow_pickle=False),)
        name = SENTENCE_LEXICAL_DIR
        sentence_lexical = (LexicalIndex.load(gen / name, len(sentences[1]))
                            if sentences is not None and (gen / name).is_dir() else None)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise damaged(root, f"{gen.name}/{name} is unreadable ({detail[:200]})") from None
    return chunks, docs, vectors, index, lexical, sentences, sentence_lexical


def _read_manifest(root: Path) -> dict:
    try:
        m = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(m, dict):
            raise ValueError("not an object")
        return m
    except (OSError, ValueError) as exc:
        raise damaged(root, f"{MANIFEST} is unreadable ({exc})") from None


def _atomic_write_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir_files(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


INDEX_CACHE_DIR = "indexes"  # under the cache root: stores of fixed files, built once


def cached_store(paths: list[str | Path], embedder: Embedder | None = None) -> DocumentStore:
    """A store of the files at ``paths`` (default settings), built once and then loaded from
    ``<cache>/indexes/<key>/`` (``$SPANQA_CACHE``, else ``~/.cache/spanqa``): a fresh process
    serving the bundled article loads six chunks' vectors instead of embedding them again.

    The key is a content hash of the files, their paths, the embedder's name and (for a
    bundled one) its weights and config, and the code that chunks, embeds and saves, so any change
    to what would be built builds again. An entry that fails to load (damaged, from another
    format) is rebuilt with a log line; a cache that cannot be written leaves the store in
    memory only. Never fatal: the worst case is the uncached build."""
    from index.onnx_runtime import cache_root, files_key

    log = logging.getLogger("spanqa")
    embedder = embedder or shared_embedder()
    here = Path(__file__).resolve().parent
    files = [Path(p).resolve() for p in paths]
    bundled = BUNDLED_EMBEDDERS.get(embedder.name)
    if bundled is not None:  # what makes its vectors (files_key skips a missing one)
        files += [bundled / ENCODER_WEIGHTS_FILE, bundled / EMBEDDER_CONFIG_FILE]
    files += [here / f for f in ("chunking.py", "documents.py", "embedder.py", "lexical.py",
                                 "store.py")]
    salt = json.dumps({"format": FORMAT_VERSION, "embedder": embedder.name,
                       "paths": [str(p) for p in files]})
    entry = cache_root() / INDEX_CACHE_DIR / files_key(salt, files)
    if (entry / MANIFEST).is_file():
        try:
            return DocumentStore.load(entry, embedder)
        except SpanQAError as exc:
            log.warning("spanqa: the cached index %s does not load (%s); building it again",
                        entry, str(exc).splitlines()[0])
            shutil.rmtree(entry, ignore_errors=True)
    store = DocumentStore(embedder)
    store.add([load_file(p) for p in paths])
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        store.save(entry)
    except (OSError, SpanQAError) as exc:
        log.warning("spanqa: could not cache the index in %s (%s)", entry, exc)
    return store
