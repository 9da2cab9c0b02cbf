"""Span decoding: per-token start/end logits → ranked character spans.

Pure numpy, no model: unit tests drive it with hand-made logits. A span's raw score is
``start_logit + end_logit`` (comparable across windows and passages, as in Haystack's
ExtractiveReader), less ``length_penalty`` per token past the first: a small reader tends to
run past the end of the answer, and a prior towards short spans chosen on held-out data
corrects that. The window's no-answer score is the same sum at the [CLS] position.
Calibration to a probability happens in :mod:`qa.calibration`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpanCandidate:
    """One candidate answer span inside one passage."""

    pair: int  # index of the (question, passage) pair it came from
    char_start: int  # character span in the passage, end exclusive
    char_end: int
    logit: float  # start_logit + end_logit - length_penalty * (tokens - 1)
    window: int = -1  # the window it scored best in (its index in the batch of windows)


def window_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list[tuple[int, int] | None],
    max_answer_len: int,
    top_n: int,
    length_penalty: float = 0.0,
) -> list[tuple[int, int, float]]:
    """Best ``top_n`` token spans ``(start, end, logit)`` of one window.

    Only passage tokens can start or end a span, ``end >= start`` and the span holds at most
    ``max_answer_len`` tokens. ``logit`` is ``start + end - length_penalty * (end - start)``.
    """
    ctx = np.array([i for i, o in enumerate(offsets) if o is not None], dtype=np.int64)
    if ctx.size == 0 or top_n <= 0:
        return []
    s = np.asarray(start_logits, dtype=np.float64)[ctx]
    e = np.asarray(end_logits, dtype=np.float64)[ctx]
    # Positions in ctx are consecutive tokens of one passage, so the length rule is on token ids.
    length = ctx[None, :] - ctx[:, None]
    scores = s[:, None] + e[None, :] - length_penalty * length
    allowed = (length >= 0) & (length < max_answer_len)
    scores = np.where(allowed, scores, -np.inf)
    flat = scores.ravel()
    n_ok = int(allowed.sum())
    k = min(top_n, n_ok)
    if k == 0:
        return []
    idx = np.argpartition(-flat, k - 1)[:k]
    idx = idx[np.argsort(-flat[idx], kind="stable")]
    n = ctx.size
    return [(int(ctx[i // n]), int(ctx[i % n]), float(flat[i])) for i in idx]


def decode_windows(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list[list[tuple[int, int] | None]],
    pair_index: list[int],
    max_answer_len: int = 30,
    top_n: int = 5,
    length_penalty: float = 0.0,
) -> dict[int, list[SpanCandidate]]:
    """Candidates of every pair, best first, merged over that pair's windows.

    The same character span seen in two overlapping windows is kept once, with its best
    score and the window that gave it. Each pair's list is sorted by ``logit``; the pair's no-answer logit comes from
    :func:`min_null_logit`.
    """
    per_pair: dict[int, dict[tuple[int, int], SpanCandidate]] = {}
    for w, pair in enumerate(pair_index):
        best = per_pair.setdefault(pair, {})
        for st, en, logit in window_spans(
            start_logits[w], end_logits[w], offsets[w], max_answer_len, top_n, length_penalty
        ):
            cs, ce = offsets[w][st][0], offsets[w][en][1]
            old = best.get((cs, ce))
            if old is None or logit > old.logit:
                best[(cs, ce)] = SpanCandidate(pair, cs, ce, logit, w)
    return {
        pair: sorted(c.values(), key=lambda c: -c.logit) for pair, c in per_pair.items()
    }


def min_null_logit(
    start_logits: np.ndarray, end_logits: np.ndarray, pair_index: list[int]
) -> dict[int, float]:
    """Each pair's no-answer logit: the lowest over its windows (the window most sure that
    an answer is there speaks for the passage), as in the SQuAD 2.0 reference decoding."""
    out: dict[int, float] = {}
    for w, pair in enumerate(pair_index):
        v = float(start_logits[w][0] + end_logits[w][0])
        out[pair] = min(v, out.get(pair, v))
    return out


def drop_overlaps(candidates: list, key=lambda c: (c.pair, c.char_start, c.char_end)) -> list:
    """Keep candidates (already best first) whose span overlaps no better kept one of the
    same passage. ``key`` returns (passage id, start, end)."""
    kept, spans = [], []
    for c in candidates:
        pid, s, e = key(c)
        if any(p == pid and s < ke and ks < e for p, ks, ke in spans):
            continue
        kept.append(c)
        spans.append((pid, s, e))
    return kept
