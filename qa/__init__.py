"""spanqa: ask questions of documents; every answer is a span copied from them.

The public API is :class:`DocumentQA`; see the README for a tour.
"""

from qa.errors import (
                       CorruptStoreError,
                       DocumentError,
                       EmptyQuestionError,
                       IncompatibleStoreError,
                       ModelNotFoundError,
                       QuestionTooLongError,
                       SpanQAError,
                       StoreNotFoundError,
)
from qa.pipeline import DEFAULT_DOCUMENT, DocumentQA, shared_reader
from qa.reader import ExtractiveReader, ReaderConfig
from qa.retriever import Retriever
from qa.types import Answer, Passage

__all__ = ["DocumentQA", "Answer", "Passage", "ExtractiveReader", "ReaderConfig", "Retriever",
           "shared_reader", "DEFAULT_DOCUMENT", "SpanQAError", "EmptyQuestionError",
           "QuestionTooLongError", "DocumentError", "StoreNotFoundError", "CorruptStoreError",
           "IncompatibleStoreError", "ModelNotFoundError"]
