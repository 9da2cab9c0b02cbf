"""The on-disk store: a FAISS index over chunk embeddings, plus the chunks and documents.

Layout of a store directory::

    manifest.json        format version, embedder, chunking, index factory, documents + sha256,
                         and the name of the generation folder that holds the data
    gen-000003/          index.faiss, embeddings.npy, chunks.jsonl, documents.json

Saving writes a new generation folder, then replaces ``manifest.json`` atomically (write to a
temporary file, fsync, rename): a crash at any moment leaves the previous manifest pointing at
the previous, complete generation. Old generations are removed after a successful save.
Nothing is pickled: FAISS's own file format, ``.npy`` without pickles, JSON.

The FAISS index type is a factory string (``"Flat"``, ``"HNSW32"``, ``"IVF256,Flat"``), so
changing it is configuration. ``"auto"`` picks exact search below ``AUTO_APPROX_THRESHOLD``
chunks and HNSW above (see ``eval/bench_index.py`` for the measurement behind the number).
Vectors are kept beside the index so removing a document or changing the index type rebuilds
the index without embedding anything again.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, Chunk, chunk_document
from index.documents import Document
from index.embedder import Embedder, shared_embedder
from index.errors import (CorruptStoreError, IncompatibleStoreError, SpanQAError,
                          StoreNotFoundError)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
AUTO_APPROX_THRESHOLD = 50_000  # chunks; below it exact search is fast enough (bench_index.py)


def resolve_factory(factory: str, n: int) -> str:
    if factory != "auto":
        return factory
    return "Flat" if n < AUTO_APPROX_THRESHOLD else "HNSW32"


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
        index.train(vectors)
    if len(vectors):
        index.add(vectors)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(hnsw.efSearch, 64)  # faiss's default of 16 trades too much recall
    return index


@dataclass
class SearchHit:
    """One chunk found for a query vector, with its cosine similarity."""

    chunk: Chunk
    score: float


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
        self._index = None
        self.version = 0  # bumped on every change, so caches built on the chunks know to rebuild

    # ---- contents -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def to_dict(self) -> dict:
        return {"type": "DocumentStore", "embedder": self.embedder.to_dict(),
                "chunk_size": self.chunk_size, "overlap": self.overlap, "factory": self.factory}

    def add(self, docs: list[Document], progress: bool | None = None,
            on_batch=None) -> list[str]:
        """Add documents; returns the ids that changed. A document already present with the
        same text is skipped; one present with other text is replaced."""
        changed, new_chunks = [], []
        for doc in docs:
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
            vecs = self.embedder.embed([c.text for c in new_chunks], progress=progress,
                                       on_batch=on_batch)
            self.vectors = vecs if len(self.chunks) == 0 else np.vstack([self.vectors, vecs])
            self.chunks.extend(new_chunks)
        if changed:
            self._index = None
            self.version += 1
        return changed

    def remove(self, doc_id: str) -> None:
        """Remove one document and its chunks. Unknown ids raise ``KeyError``."""
        if doc_id not in self.documents:
            raise KeyError(f"No document {doc_id!r} in this index.")
        self._drop(doc_id)
        self._index = None
        self.version += 1

    def _drop(self, doc_id: str) -> None:
        keep = [i for i, c in enumerate(self.chunks) if c.doc_id != doc_id]
        self.chunks = [self.chunks[i] for i in keep]
        self.vectors = self.vectors[np.asarray(keep, dtype=np.int64)]
        self.documents.pop(doc_id, None)

    def _matrix(self) -> np.ndarray:
        """The chunk vectors as a ``(n_chunks, dimension)`` matrix, also when empty."""
        if self.vectors.ndim == 2 and self.vectors.shape[1]:
            return self.vectors
        return np.zeros((0, self.embedder.dimension), dtype=np.float32)

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
        return [[SearchHit(self.chunks[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

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
            "n_chunks": len(self.chunks),
            "documents": {d.id: d.sha256 for d in self.documents.values()},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, directory: str | Path) -> Path:
        """Save atomically: the previous save stays loadable until this one is complete."""
        import faiss

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        gen_dir = Path(tempfile.mkdtemp(prefix="gen-", dir=root))
        faiss.write_index(self.index, str(gen_dir / "index.faiss"))
        np.save(gen_dir / "embeddings.npy", self._matrix(), allow_pickle=False)
        with open(gen_dir / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in self.chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        docs = [{**d.to_dict(), "text": d.text} for d in self.documents.values()]
        (gen_dir / "documents.json").write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
        _fsync_dir_files(gen_dir)
        _atomic_write_json(root / MANIFEST, self.manifest(gen_dir.name))
        # The new generation is live; clear the rest (older saves, crashed half-saves).
        for p in root.glob("gen-*"):
            if p.name != gen_dir.name and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        return root

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> "DocumentStore":
        """Load a saved store. With ``embedder`` given, it must be the one the store was built
        with; without, the store's own embedder is used."""
        root = Path(directory)
        if not root.exists():
            raise StoreNotFoundError(f"No index at {root}.")
        if not (root / MANIFEST).is_file():
            raise StoreNotFoundError(f"{root} is not a spanqa index (it has no {MANIFEST}).")
        m = _read_manifest(root)
        if m.get("format_version") != FORMAT_VERSION:
            raise IncompatibleStoreError(
                f"The index at {root} has format version {m.get('format_version')}; this spanqa "
                f"reads version {FORMAT_VERSION}. Rebuild it with `spanqa index`.")
        emb_name = m.get("embedder", {}).get("name")
        if embedder is not None and embedder.name != emb_name:
            raise IncompatibleStoreError(
                f"The index at {root} was built with the embedder {emb_name!r}, not "
                f"{embedder.name!r}; rebuild it or load it with its own embedder.")
        gen = root / str(m.get("generation", ""))
        try:
            import faiss

            chunks = [Chunk.from_dict(json.loads(line)) for line in
                      (gen / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if line]
            docs = json.loads((gen / "documents.json").read_text(encoding="utf-8"))
            vectors = np.load(gen / "embeddings.npy", allow_pickle=False)
            index = faiss.read_index(str(gen / "index.faiss"))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CorruptStoreError(
                f"The index at {root} is damaged ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); rebuild it with `spanqa index`.") from None
        store = cls(embedder or shared_embedder(emb_name), m["chunking"]["chunk_size"],
                    m["chunking"]["overlap"], m.get("index_factory", "auto"))
        store.chunks = chunks
        store.vectors = vectors.astype(np.float32, copy=False)
        store.documents = {d["id"]: Document(id=d["id"], title=d["title"], source=d["source"],
                                             text=d["text"], page_starts=d.get("page_starts", []))
                           for d in docs}
        dim = m["embedder"].get("dimension")
        if (index.ntotal != len(chunks) or len(vectors) != len(chunks)
                or (len(chunks) and (vectors.ndim != 2 or vectors.shape[1] != dim or index.d != dim))
                or set(m.get("documents", {})) != set(store.documents)
                or any(store.documents[k].sha256 != v for k, v in m["documents"].items())):
            raise CorruptStoreError(
                f"The index at {root} is inconsistent (its files disagree); rebuild it with `spanqa index`.")
        store._index = index
        return store


def _read_manifest(root: Path) -> dict:
    try:
        m = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(m, dict):
            raise ValueError("not an object")
        return m
    except (OSError, ValueError) as exc:
        raise CorruptStoreError(f"The index manifest {root / MANIFEST} is unreadable ({exc}).") from None


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
    for p in d.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
