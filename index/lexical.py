"""Lexical search over a store's chunks: BM25 by the maintained ``bm25s`` library.

Words are lower-cased, split on ``\\w+`` (single letters and digits count: "5 May", "B-52"),
English stop words and question words dropped, and stemmed with PyStemmer's Snowball English
stemmer, so "approved" finds "approve". The index saves as ``.npy`` arrays and JSON (bm25s's
own format, ``allow_pickle=False``) in a folder of the store's generation, and loads with it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

TOKEN_PATTERN = r"(?u)\b\w+\b"
# Question words carry no lexical evidence about where an answer is; bm25s's English list
# keeps most of them.
_QUESTION_WORDS = ("who", "whom", "whose", "what", "when", "where", "which", "why", "how",
                   "did", "does", "do")


@functools.lru_cache(maxsize=1)
def _bm25s():
    """The bm25s module. Importing it sets its logger to DEBUG, which prints a line per index
    built into any application log at INFO; put it back to WARNING, once."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@functools.lru_cache(maxsize=1)
def _stopwords() -> tuple[str, ...]:
    from bm25s.stopwords import STOPWORDS_EN

    return tuple(sorted(set(STOPWORDS_EN) | set(_QUESTION_WORDS)))


# BM25's (k1, b): the usual values for chunks; for single sentences, whose lengths vary
# less and say little, a weaker length normalisation, chosen on the held-out training articles
# (the retriever's model card).
CHUNK_BM25 = (1.5, 0.75)
SENTENCE_BM25 = (1.2, 0.3)


class LexicalIndex:
    """BM25 (bm25s, Lucene variant; ``k1``, ``b`` as built) over a fixed list of texts."""

    def __init__(self, bm25, n: int):
        self._bm25 = bm25
        self.n = n

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def _stemmer():
        """One Snowball stemmer per process, not one per query."""
        import Stemmer

        return Stemmer.Stemmer("english")

    @classmethod
    def _tokenize(cls, texts: list[str], return_ids: bool):
        return _bm25s().tokenize(texts, token_pattern=TOKEN_PATTERN,
                                 stopwords=list(_stopwords()), stemmer=cls._stemmer(),
                                 return_ids=return_ids, show_progress=False)

    @classmethod
    def build(cls, texts: list[str], k1: float = CHUNK_BM25[0],
              b: float = CHUNK_BM25[1]) -> "LexicalIndex":
        bm25 = _bm25s().BM25(k1=k1, b=b)
        tokens = cls._tokenize(list(texts), True) if texts else None
        if tokens is None or not tokens.vocab:  # nothing but stop words: nothing to match
            return cls(None, len(texts))
        bm25.index(tokens, show_progress=False)
        return cls(bm25, len(texts))

    def scores(self, queries: list[str]) -> np.ndarray:
        """``(len(queries), n)`` BM25 scores; 0 where a chunk shares no word with the query."""
        out = np.zeros((len(queries), self.n), dtype=np.float32)
        if self._bm25 is None or not queries:
            return out
        for i, toks in enumerate(self._tokenize(list(queries), False)):
            if toks:
                out[i] = self._bm25.get_scores(toks)
        return out

    def save(self, folder: str | Path) -> None:
        """Write the index into ``folder`` (an empty folder when there is nothing to match)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        if self._bm25 is not None:
            self._bm25.save(str(folder), allow_pickle=False, show_progress=False)

    @classmethod
    def load(cls, folder: str | Path, n: int) -> "LexicalIndex":
        """Read an index saved by :meth:`save` for ``n`` texts (its ``k1`` and ``b`` come with
        it); ``ValueError`` when it does not hold ``n`` texts."""
        folder = Path(folder)
        if not any(folder.iterdir()):
            return cls(None, n)
        bm25 = _bm25s().BM25.load(str(folder), allow_pickle=False, show_progress=False)
        got = int(bm25.scores["num_docs"])
        if got != n:
            raise ValueError(f"the lexical index holds {got} texts, not {n}")
        return cls(bm25, n)
