"""Sentence-aware chunking measured in the embedder's tokens.

A chunk is a run of whole sentences of at most ``chunk_size`` tokens; neighbouring chunks
share up to ``overlap`` tokens of whole sentences, so a fact cut by one chunk's end lies
whole in the next. A sentence longer than a chunk is cut at token boundaries. Each chunk
keeps its character span, and ``chunk.text == document.text[chunk.start:chunk.end]``.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import asdict, dataclass

from index.documents import Document

DEFAULT_CHUNK_SIZE = 160  # tokens: a chunk plus a question fits one 256-token reader window
DEFAULT_OVERLAP = 32

_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "u.s",
           "u.k", "no", "fig", "gen", "gov", "sen", "rep", "lt", "col", "sgt", "inc", "co", "corp"}
_BOUNDARY = re.compile(r"[.!?]['\")\]\u2019\u201d]*\s+(?=['\"(\[\u2018\u201c]?[A-Z0-9])|\n+")


@dataclass
class Chunk:
    """A passage of one document: ``text`` is ``document.text[start:end]``."""

    id: str
    doc_id: str
    index: int  # position of the chunk in its document
    start: int
    end: int
    text: str
    n_tokens: int
    page: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Chunk":
        return cls(**d)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (lines break sentences too); whitespace between is left out."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if m.group(0)[0] == ".":
            word = text[:m.start()].rsplit(None, 1)[-1].lower() if text[:m.start()].strip() else ""
            if word.rstrip(".") in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue
        end = m.start() + len(m.group(0).rstrip())
        if end > start:
            spans.append((start, end))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    out = []
    for s, e in spans:  # trim whitespace so spans start and end on text
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def chunk_sentences(text: str) -> list[tuple[int, int]]:
    """The sentences a store embeds for one chunk's text: its sentence spans, or the whole
    text when it has none (every chunk has at least one, so the sentence search covers it)."""
    return sentence_spans(text) or [(0, len(text))]


def chunk_document(doc: Document, tokenizer, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """Chunks of ``doc``; ``tokenizer`` is a fast Hugging Face tokenizer (the embedder's)."""
    if chunk_size < 8 or not 0 <= overlap < chunk_size:
        raise ValueError("need chunk_size >= 8 and 0 <= overlap < chunk_size")
    text = doc.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                    verbose=False)
    tok_starts = [s for s, _ in enc["offset_mapping"]]
    tok_ends = [e for _, e in enc["offset_mapping"]]

    def n_tokens(s: int, e: int) -> int:
        return max(0, bisect_left(tok_starts, e) - bisect_left(tok_starts, s))

    # Pieces: sentences, with any sentence over chunk_size cut at token boundaries.
    pieces: list[tuple[int, int, int]] = []
    for s, e in sentence_spans(text):
        n = n_tokens(s, e)
        if n <= chunk_size:
            pieces.append((s, e, n))
            continue
        first = bisect_left(tok_starts, s)
        last = bisect_left(tok_starts, e)
        for t in range(first, last, chunk_size):
            t_end = min(t + chunk_size, last)
            pieces.append((tok_starts[t], tok_ends[t_end - 1], t_end - t))

    chunks: list[Chunk] = []
    i = 0
    while i < len(pieces):
        j, total = i, 0
        while j < len(pieces) and total + pieces[j][2] <= chunk_size:
            total += pieces[j][2]
            j += 1
        j = max(j, i + 1)
        s, e = pieces[i][0], pieces[j - 1][1]
        k = len(chunks)
        chunks.append(Chunk(id=f"{doc.id}#{k}", doc_id=doc.id, index=k, start=s, end=e,
                            text=text[s:e], n_tokens=n_tokens(s, e), page=doc.page_at(s)))
        if j >= len(pieces):
            break
        # Step back over whole sentences worth at most `overlap` tokens, always moving forward.
        back, carried = j, 0
        while back - 1 > i and carried + pieces[back - 1][2] <= overlap:
            back -= 1
            carried += pieces[back][2]
        i = back
    return chunks


