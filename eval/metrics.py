"""Aggregate metrics of an evaluation run, from its per-question records (:class:`EvalRow`,
one line each of ``per_question.jsonl``)."""
from __future__ import annotations

from typing import TypedDict

import numpy as np

from qa.calibration import expected_calibration_error, reliability_bins, threshold_outcome
from qa.metrics import score

RECALL_KS = (1, 3, 5, 10)


class EvalRow(TypedDict, total=False):
    """One question of an evaluation run, as :func:`eval.runner.evaluate` records it and
    ``per_question.jsonl`` stores it."""

    id: str
    title: str
    question: str
    golds: list[str]  # empty: the question has no answer in the document
    prediction: str  # empty: spanqa abstained
    score: float  # confidence of the prediction (0 when abstaining)
    abstained: bool
    best_text: str  # the top span whatever the threshold
    best_score: float
    em: float
    f1: float
    latency_ms: float
    reader: str  # the reader that answered (end to end)
    retrieved: list[str]  # ids of the passages the reader read (end to end)
    gold_rank: int | None  # rank among them of the first holding a gold answer
    retrieval_rank: int | None  # the same among the top RANK_DEPTH the retriever ranks


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def summarize(rows: list[EvalRow], seconds: float | None = None) -> dict:
    has = [r for r in rows if r["golds"]]
    no = [r for r in rows if not r["golds"]]
    abstained = [r for r in rows if r["prediction"] == ""]
    m: dict = {
        "n": len(rows), "n_has_answer": len(has), "n_no_answer": len(no),
        "em": 100 * (_mean(r["em"] for r in rows) or 0.0),
        "f1": 100 * (_mean(r["f1"] for r in rows) or 0.0),
        "has_ans_em": 100 * _mean(r["em"] for r in has) if has else None,
        "has_ans_f1": 100 * _mean(r["f1"] for r in has) if has else None,
        "no_ans_acc": 100 * _mean(r["em"] for r in no) if no else None,
        # abstention as a detector of "not answerable": precision over abstentions,
        # recall over the unanswerable questions
        "abstain_rate": 100 * len(abstained) / len(rows) if rows else 0.0,
        "abstain_precision": 100 * sum(not r["golds"] for r in abstained) / len(abstained) if abstained else None,
        "abstain_recall": 100 * sum(r["prediction"] == "" for r in no) / len(no) if no else None,
    }
    deep = [r for r in has if "retrieval_rank" in r]
    ranked = [r for r in has if "gold_rank" in r and r.get("retrieved")]
    if deep:  # ranked to RANK_DEPTH: recall@1/3/5/10 and MRR@10
        for k in RECALL_KS:
            m[f"recall@{k}"] = 100 * _mean(r["retrieval_rank"] is not None
                                           and r["retrieval_rank"] <= k for r in deep)
        m["mrr"] = _mean(1.0 / r["retrieval_rank"] if r["retrieval_rank"] else 0.0 for r in deep)
    elif ranked:  # older runs: only the passages the reader read were ranked
        depth = max(len(r["retrieved"]) for r in ranked)  # recall@k beyond it is not measured
        for k in [k for k in RECALL_KS if k <= depth] or [depth]:
            m[f"recall@{k}"] = 100 * _mean(r["gold_rank"] is not None and r["gold_rank"] <= k for r in ranked)
        m["mrr"] = _mean(1.0 / r["gold_rank"] if r["gold_rank"] else 0.0 for r in ranked)
    lat = [r["latency_ms"] for r in rows if r.get("latency_ms") is not None]
    if lat:
        m["latency_ms"] = {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                           "mean": float(np.mean(lat))}
    if seconds:
        m["seconds"] = seconds
        m["questions_per_second"] = len(rows) / seconds
    return m


def at_threshold(rows: list[EvalRow], t: float) -> dict:
    """EM/F1 and abstention had the threshold been ``t`` (re-scored from each question's best
    span), for the threshold plot."""
    conf = [r["best_score"] if r["best_text"] else -1.0 for r in rows]
    scored = [score(r["best_text"], r["golds"]) if r["best_text"] else (0.0, 0.0) for r in rows]
    silent = [score("", r["golds"]) for r in rows]  # abstaining is right when there is no answer
    em, abstain = threshold_outcome(conf, [s[0] for s in scored], [s[0] for s in silent], t)
    f1, _ = threshold_outcome(conf, [s[1] for s in scored], [s[1] for s in silent], t)
    has = [i for i, r in enumerate(rows) if r["golds"]]
    has_f1 = threshold_outcome([conf[i] for i in has], [scored[i][1] for i in has],
                               [silent[i][1] for i in has], t)[0] if has else None
    return {"threshold": t, "em": 100 * em, "f1": 100 * f1,
            "has_ans_f1": 100 * has_f1 if has else None, "abstain_rate": 100 * abstain}


def _best_spans(rows: list[EvalRow]) -> tuple[list[float], list[bool]]:
    """Confidence and exact match of each answerable question's best span."""
    has = [r for r in rows if r["golds"] and r["best_text"]]
    return ([r["best_score"] for r in has],
            [score(r["best_text"], r["golds"])[0] == 1.0 for r in has])


def reliability(rows: list[EvalRow], bins: int = 10) -> list[dict]:
    """Accuracy (exact match of the best span) by confidence bucket, answerable questions."""
    return reliability_bins(*_best_spans(rows), bins)


def ece(rows: list[EvalRow], bins: int = 10) -> float | None:
    """Expected calibration error of the best span's confidence, answerable questions."""
    conf, correct = _best_spans(rows)
    return expected_calibration_error(conf, correct, bins) if conf else None
