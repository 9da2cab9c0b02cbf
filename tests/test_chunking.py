import random

from index.chunking import chunk_document, sentence_spans
from index.documents import document_from_text


def test_sentence_spans_respect_abbreviations():
    text = "Dr. Smith went to the U.S. on Monday. He stayed! Did he leave? Yes.\nNew line"
    spans = [text[s:e] for s, e in sentence_spans(text)]
    assert spans == ["Dr. Smith went to the U.S. on Monday.", "He stayed!", "Did he leave?",
                     "Yes.", "New line"]


def _doc(n=60, seed=0, longest=30):
    rnd = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    sents = [" ".join(rnd.choice(words) for _ in range(rnd.randint(4, longest))).capitalize() + "."
             for _ in range(n)]
    return document_from_text("  ".join(sents) + "\n\nÜnïcode tail — with “quotes”.")


def test_chunk_spans_round_trip_exactly(embedder):
    doc = _doc()
    chunks = chunk_document(doc, embedder.tokenizer, chunk_size=64, overlap=16)
    assert len(chunks) > 3
    for c in chunks:
        assert c.text == doc.text[c.start:c.end]
        assert c.n_tokens <= 64
    assert chunks[0].start == 0 and chunks[-1].end == len(doc.text)
    # every character of the document that is not whitespace lies in some chunk
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(doc.text) if not ch.isspace())


def test_chunks_overlap_by_whole_sentences(embedder):
    doc = _doc(longest=8)  # sentences short enough to fit the overlap
    chunks = chunk_document(doc, embedder.tokenizer, chunk_size=64, overlap=16)
    overlapping = sum(1 for a, b in zip(chunks, chunks[1:]) if b.start < a.end)
    assert overlapping >= len(chunks) // 2
    for a, b in zip(chunks, chunks[1:]):
        assert b.start > a.start  # always moves forward


def test_a_sentence_longer_than_a_chunk_is_cut(embedder):
    doc = document_from_text(" ".join(["word"] * 500) + ".")
    chunks = chunk_document(doc, embedder.tokenizer, chunk_size=50, overlap=0)
    assert len(chunks) >= 10
    assert all(c.n_tokens <= 50 and c.text == doc.text[c.start:c.end] for c in chunks)
