"""The scoring step: the reader's raw spans, and each passage's similarity to the question,
become calibrated confidences, a ranking across passages, and the decision to abstain.

The reader (:mod:`qa.reader`) only reads: it returns every candidate span with its raw
logit and its window's no-answer logit (:class:`RawSpan`). What those numbers mean as a
probability, and how much the retriever's similarity adds, is the calibration's business
(:mod:`qa.calibration`); the pipeline runs this step with the similarities the retriever
computed, the reader used on its own runs it without them.
"""
from __future__ import annotations

from dataclasses import dataclass

from qa.calibration import Calibration
from qa.decoding import drop_overlaps


@dataclass(frozen=True)
class RawSpan:
    """A candidate span as the reader found it, before any calibration."""

    passage: int  # index into the passages handed to the reader
    text: str
    char_start: int  # in the passage; end exclusive
    char_end: int
    logit: float  # start+end logit, less the length penalty
    null_logit: float  # the passage's no-answer logit
    probe: float | None = None  # the refusal probe's logit (qa.probe); None without one


@dataclass
class ReaderSpan:
    """One answer span, scored, in the coordinates of the passage it came from."""

    passage: int
    text: str
    char_start: int
    char_end: int
    score: float  # calibrated confidence in [0, 1]
    logit: float
    null_logit: float
    probe: float | None = None  # the refusal probe's logit, when the reader has one


@dataclass
class ReaderResult:
    """The verdict for one question: ranked spans and whether to abstain."""

    spans: list[ReaderSpan]
    abstained: bool
    no_answer_score: float  # 1 - best span's confidence (0 < x < 1); 1.0 with no span at all


def has_word(text: str) -> bool:
    """Whether a span can be an answer at all: it holds a letter or a digit."""
    return any(ch.isalnum() for ch in text)


def score_spans(raw: list[list[RawSpan]], calibration: Calibration, threshold: float | None,
                top_k: int, relevance: list[list[float]] | None = None,
                ranked: bool = False) -> list[ReaderResult]:
    """Each question's spans with calibrated confidences, best first, overlapping spans of a
    passage dropped and spans without a letter or digit left out, at most ``top_k`` kept;
    abstain by the calibration's rule (:meth:`Calibration.refuses`: below its threshold, its
    refusal margin or its probe threshold) or, given a ``threshold``, when the best confidence is below it.
    ``relevance[q][p]`` is passage
    ``p``'s similarity to question ``q`` on the scale the calibration was fitted with (None:
    the calibration's default stands in). ``ranked``: the passages are in the retriever's
    order, so passage ``p`` is at place ``p + 1`` (otherwise the default place stands in)."""
    results = []
    for qi, spans in enumerate(raw):
        scored = [ReaderSpan(s.passage, s.text, s.char_start, s.char_end,
                             calibration.confidence(
                                 s.logit, s.null_logit,
                                 None if relevance is None else float(relevance[qi][s.passage]),
                                 s.passage + 1 if ranked else None),
                             s.logit, s.null_logit, s.probe) for s in spans]
        scored.sort(key=lambda s: (-s.score, -s.logit))
        scored = [s for s in scored if has_word(s.text)]  # never "." alone
        scored = drop_overlaps(scored, key=lambda s: (s.passage, s.char_start, s.char_end))
        if not scored:
            results.append(ReaderResult([], True, 1.0))
            continue
        best = scored[0]
        results.append(ReaderResult(
            spans=scored[:top_k], no_answer_score=1.0 - best.score,
            abstained=calibration.refuses(best.score, best.logit, best.null_logit, threshold,
                                          best.probe)))
    return results
