"""What flows through the pipeline: retrieved passages and answers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from index.chunking import Chunk


@dataclass
class Passage:
    """A chunk retrieved for a question, with its similarity and rank (1 = best)."""

    chunk: Chunk
    score: float
    rank: int
    title: str

    def to_dict(self) -> dict:
        return {"id": self.chunk.id, "doc_id": self.chunk.doc_id, "title": self.title,
                "score": self.score, "rank": self.rank, "text": self.chunk.text,
                "start": self.chunk.start, "end": self.chunk.end, "page": self.chunk.page}


@dataclass
class Answer:
    """An answer copied from a document, or an abstention (``text == ""``).

    ``start``/``end`` locate the answer in the document's text and
    ``passage_start``/``passage_end`` in ``passage_text``; ends are exclusive. When spanqa
    abstains, ``text`` is empty, ``abstained`` is true and ``candidates`` still lists what the
    reader found (not trusted), best first, so a person can see what it considered.
    """

    question: str
    text: str
    score: float  # calibrated confidence of this span (0 when abstaining with no candidate)
    abstained: bool
    no_answer_score: float
    doc_id: str | None = None
    title: str | None = None
    passage_id: str | None = None
    passage_text: str | None = None
    start: int | None = None
    end: int | None = None
    passage_start: int | None = None
    passage_end: int | None = None
    page: int | None = None
    section: str | None = None  # the heading of the answer's section, when the format has them
    candidates: list["Answer"] = field(default_factory=list)  # runner-ups (or, abstaining, all)
    passages: list[Passage] = field(default_factory=list)  # what the retriever handed the reader
    latency_ms: float | None = None
    read_as: str | None = None  # in a conversation: the self-contained question answered
    reader: str | None = None  # the reader that answered (with --reader cascade, either one)

    def best_guess(self) -> "Answer":
        """The answer, or when spanqa abstained the best candidate it did not trust (itself,
        with empty text, when there was none): what it would have said had it never refused."""
        return self.candidates[0] if self.abstained and self.candidates else self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["candidates"] = [c.to_dict() for c in self.candidates]
        d["passages"] = [p.to_dict() for p in self.passages]
        return d
