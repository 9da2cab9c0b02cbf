"""Typed errors. ``SpanQAError`` is the base of every error spanqa raises on purpose; it lives
here, in the lowest layer, so ``qa`` and ``ui`` can catch one class. Every message is one line a
person can act on: the CLI prints it, the UI shows it, neither shows a traceback."""


class SpanQAError(Exception):
    """Base class: anything spanqa refuses on purpose."""


class DocumentError(SpanQAError, ValueError):
    """A document that cannot be read: empty, binary, not UTF-8, unknown type, too large."""


class StoreNotFoundError(SpanQAError, FileNotFoundError):
    """No index at the given directory."""


class CorruptStoreError(SpanQAError):
    """An index directory whose files are missing, unreadable or inconsistent."""


class IncompatibleStoreError(SpanQAError):
    """An index made with another embedder or another format version."""


class ModelNotFoundError(SpanQAError, FileNotFoundError):
    """A model path or id that names no loadable model."""


class UnknownDocumentError(SpanQAError, KeyError):
    """A document id that the index does not hold (also a ``KeyError``, as it used to be)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
