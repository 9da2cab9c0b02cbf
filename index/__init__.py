"""spanqa's index layer: documents → clean text → chunks → embeddings → FAISS store on disk."""

from index.chunking import Chunk, chunk_document
from index.documents import Document, document_from_text, load_bytes, load_file
from index.embedder import Embedder, shared_embedder
from index.errors import (
                          CorruptStoreError,
                          DocumentError,
                          IncompatibleStoreError,
                          ModelNotFoundError,
                          SpanQAError,
                          StoreNotFoundError,
                          UnknownDocumentError,
)
from index.store import DocumentStore, SearchHit

__all__ = ["Chunk", "chunk_document", "Document", "document_from_text", "load_bytes",
           "load_file", "Embedder", "shared_embedder", "DocumentStore", "SearchHit",
           "SpanQAError", "DocumentError", "StoreNotFoundError", "CorruptStoreError",
           "IncompatibleStoreError", "ModelNotFoundError", "UnknownDocumentError"]
