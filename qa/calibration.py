"""Turn raw span logits into a confidence a person can read, and decide when to abstain.

``confidence = right × on_topic``, two logistic models (Platt scaling) fitted on held-out data:

* ``right = sigmoid(span_weight * logit + margin_weight * (logit - null_logit)
  + relevance_weight * relevance + rank_weight / place + bias)``: the chance the span is exactly right when the
  passages are about the question. ``logit`` is the span's start+end logit, ``null_logit`` its
  window's no-answer logit. With ``margin_weight = relevance_weight = 0`` this is Haystack's
  ``sigmoid(logit * calibration_factor)``. Fitted on answerable held-out questions, target
  exact match: 0.8 means about 8 answers in 10 are right. Fitted on the passages a retriever
  hands the reader (``calibrate-reader --cases retrieved``), every span of each question
  counts and ``relevance_weight`` learns how much the passage's similarity to the question
  says about its spans, so the best span of five passages is as likely right as that of three.
  ``place`` is the span's passage's place in the retriever's ranking (1 = first): the fused
  ranking knows what the chunk's cosine does not (the best sentence, the BM25 match), and
  ``rank_weight`` learns how much that says. Unknown places (the reader used on its own) take
  ``rank_default``, the mean of ``1 / place`` over the fitted answers.
* ``on_topic = sigmoid(topic_span_weight * logit + topic_margin_weight * (logit - null_logit)
  + topic_relevance_weight * relevance + topic_bias)``: the chance the passages are about the
  question at all. ``relevance`` is the cosine similarity between the question and the span's
  passage by the embedder named in ``relevance_model`` (the retriever computes it anyway).
  A reader finds a plausible-looking span in an off-topic passage, and its logits alone
  cannot tell "about something else" from "hard"; the embedder can. Fitted on answerable
  questions against the same questions asked of another article. Without fitted weights
  (older model folders) the factor is 1.

Every term is per span, so confidences stay comparable across passages and windows. When no
relevance is known (the reader used on its own) ``relevance_default`` stands in, the mean over
held-out answered questions. The reader abstains when the best confidence is below
``threshold``, chosen on the same held-out data (see :mod:`qa.training.calibrate`).

**Refusing by the reader's margin** (``refusal_margin``, None in older folders): the answer is
also refused when its span logit is below its passage's no-answer logit by more than
``-refusal_margin``, however confident the fitted model is. The confidence is fitted to say
how often an *answer* is right, and folds the margin in with the logit and the passage's
similarity; for "the passage is on topic but does not say", the reader's own margin can
separate better (by how much depends on the weights: the reader's model card measures it, and
the shipped readers do not use it). With it, the threshold only guards against
passages about something else (the lowest confidence meeting the wrong-document goal) and the
margin refuses the on-topic questions the passages cannot answer. An explicit threshold passed
by the caller replaces the whole rule by that confidence threshold alone (0 never abstains).

**Refusing by the refusal probe** (``probe_threshold``, None unless the reader folder holds a
probe and ``calibrate-reader --refuse-by probe`` chose one): the answer is also refused when
the probe's logit for its span (a linear score on the reader's ``<s>`` states, :mod:`qa.probe`)
is below ``probe_threshold``. Both thresholds are chosen together on held-out data: the
confidence one at or above the wrong-document floor, the probe one spending the F1 budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass
class Calibration:
    span_weight: float = 0.1  # Haystack's default calibration factor, for uncalibrated models
    margin_weight: float = 0.0
    bias: float = 0.0
    relevance_weight: float = 0.0  # in `right` too: ranks spans across retrieved passages
    threshold: float = 0.5
    topic_span_weight: float = 0.0
    topic_margin_weight: float = 0.0
    topic_relevance_weight: float = 0.0
    topic_bias: float = 0.0
    relevance_default: float = 0.0
    relevance_model: str = ""  # the embedder whose cosine similarities the topic weights expect
    rank_weight: float = 0.0  # in `right`: 1 / the passage's place in the retriever's ranking
    rank_default: float = 0.0  # stands in for 1 / place when the passages were not retrieved
    refusal_margin: float | None = None  # refuse when logit - null_logit is below it (None: never)
    probe_threshold: float | None = None  # refuse when the span's probe logit is below it

    @property
    def has_topic_model(self) -> bool:
        return any((self.topic_span_weight, self.topic_margin_weight,
                    self.topic_relevance_weight, self.topic_bias))

    def right(self, logit: float, null_logit: float, relevance: float | None = None,
              place: int | None = None) -> float:
        """Chance the span is exactly right, given passages about the question. ``place``: the
        span's passage's place in the retriever's ranking (1 = first), None when unknown."""
        rel = self.relevance_default if relevance is None else relevance
        inv = self.rank_default if place is None else 1.0 / max(place, 1)
        return _sigmoid(self.span_weight * logit + self.margin_weight * (logit - null_logit)
                        + self.relevance_weight * rel + self.rank_weight * inv + self.bias)

    def on_topic(self, logit: float, null_logit: float, relevance: float | None = None) -> float:
        """Chance the passage is about the question at all (1 without a fitted topic model)."""
        if not self.has_topic_model:
            return 1.0
        rel = self.relevance_default if relevance is None else relevance
        return _sigmoid(self.topic_span_weight * logit
                        + self.topic_margin_weight * (logit - null_logit)
                        + self.topic_relevance_weight * rel + self.topic_bias)

    def confidence(self, logit: float, null_logit: float, relevance: float | None = None,
                   place: int | None = None) -> float:
        return (self.right(logit, null_logit, relevance, place)
                * self.on_topic(logit, null_logit, relevance))

    def refuses(self, confidence: float, logit: float, null_logit: float,
                threshold: float | None = None, probe: float | None = None) -> bool:
        """Whether to abstain rather than give the span scored ``confidence`` (with these raw
        logits and, from a reader with a refusal probe, its ``probe`` logit): below the
        threshold, or (the calibrated rule only) below the refusal margin or the probe
        threshold. ``threshold``: the caller's own, which replaces the calibrated rule."""
        if threshold is not None:
            return confidence < threshold
        return confidence < self.threshold or (
            self.refusal_margin is not None and logit - null_logit < self.refusal_margin) or (
            self.probe_threshold is not None and probe is not None
            and probe < self.probe_threshold)

    def accepts_relevance_from(self, embedder_name: str | None) -> bool:
        """Whether similarities by this embedder are on the scale the weights were fitted on."""
        return bool(self.topic_relevance_weight or self.relevance_weight) and bool(embedder_name) and (
            same_embedder(embedder_name, self.relevance_model))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        fields = cls.__dataclass_fields__
        return cls(**{k: _cast(fields[k].default, v) for k, v in d.items() if k in fields})


def _cast(default, value):
    """A JSON value as the type of the field's default; a field whose default is None is an
    optional number."""
    if default is None:
        return None if value is None else float(value)
    return type(default)(value)


def _model_key(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower().replace("_", "-")


def same_embedder(a: str, b: str) -> bool:
    """'sentence-transformers/all-MiniLM-L6-v2', a local folder of it, or its pip package's
    path all name the same embedder."""
    return _model_key(a) == _model_key(b)


def threshold_outcome(conf: list[float], if_answered: list[float], if_abstained: list[float],
                      threshold: float) -> tuple[float, float]:
    """``(mean score, abstention rate)`` had each item been answered only at a confidence of
    at least ``threshold``: item ``i`` scores ``if_answered[i]`` when answered, else
    ``if_abstained[i]`` (0 for a question with an answer, 1 for one without). The one
    threshold sweep behind calibration's choice and the evaluation's threshold plot."""
    import numpy as np

    if not conf:
        return 0.0, 0.0
    abstain = [c < threshold for c in conf]
    score = [b if a else s for a, s, b in zip(abstain, if_answered, if_abstained)]
    return float(np.mean(score)), float(np.mean(abstain))


def reliability_bins(conf: list[float], correct: list[bool], bins: int = 10) -> list[dict]:
    """Equal-width confidence bins that hold any point: ``lo``, ``hi``, ``n``, the mean
    ``confidence`` and the ``accuracy`` (share correct) inside each. A confidence of exactly
    1 falls in the last bin. The one binning behind ECE and the reliability plot."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(conf) if (lo <= c < hi) or (b == bins - 1 and c == 1.0)]
        if idx:
            out.append({"lo": lo, "hi": hi, "n": len(idx),
                        "confidence": sum(conf[i] for i in idx) / len(idx),
                        "accuracy": sum(bool(correct[i]) for i in idx) / len(idx)})
    return out


def expected_calibration_error(conf: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins."""
    n = len(conf)
    if n == 0:
        return 0.0
    return sum(b["n"] / n * abs(b["accuracy"] - b["confidence"])
               for b in reliability_bins(conf, correct, bins))
