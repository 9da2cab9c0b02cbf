"""Retriever: question → the top-k passages of a store, each with its cosine similarity."""
from __future__ import annotations

from index.store import DocumentStore
from qa.types import Passage

DEFAULT_TOP_K = 3


class Retriever:
    def __init__(self, store: DocumentStore, top_k: int = DEFAULT_TOP_K):
        self.store = store
        self.top_k = top_k

    def to_dict(self) -> dict:
        return {"type": "Retriever", "top_k": self.top_k, "store": self.store.to_dict()}

    def retrieve(self, question: str, top_k: int | None = None) -> list[Passage]:
        return self.retrieve_many([question], top_k)[0]

    def retrieve_many(self, questions: list[str], top_k: int | None = None) -> list[list[Passage]]:
        """Passages for many questions; the questions are embedded in one batch."""
        if not questions:
            return []
        vecs = self.store.embedder.embed(questions, progress=False)
        hits = self.store.search(vecs, top_k or self.top_k)
        docs = self.store.documents
        return [[Passage(h.chunk, h.score, r + 1, docs[h.chunk.doc_id].title)
                 for r, h in enumerate(row)] for row in hits]
