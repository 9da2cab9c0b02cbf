"""Errors of the question-answering layer; the index layer's errors are re-exported so users
import every error from one place (``from qa.errors import SpanQAError``)."""

from index.errors import (
    CorruptStoreError,
    DocumentError,
    IncompatibleStoreError,
    ModelNotFoundError,
    SpanQAError,
    StoreNotFoundError,
    UnknownDocumentError,
)


class EmptyQuestionError(SpanQAError, ValueError):
    """The question is empty or only whitespace."""


class QuestionTooLongError(SpanQAError, ValueError):
    """The question does not fit the reader's window with room for a passage."""


class OptionError(SpanQAError, ValueError):
    """An option out of its type or range (passages, answers, threshold, chunk sizes...)."""


__all__ = ["OptionError", "SpanQAError", "DocumentError", "StoreNotFoundError", "CorruptStoreError",
           "IncompatibleStoreError", "ModelNotFoundError", "EmptyQuestionError",
           "QuestionTooLongError", "UnknownDocumentError"]
