"""Turn raw span logits into a confidence a person can read, and decide when to abstain.

``confidence = sigmoid(span_weight * logit + margin_weight * (logit - null_logit) + bias)``

``logit`` is the span's start+end logit and ``null_logit`` its window's no-answer logit. With
``margin_weight = 0`` this is Haystack's ``sigmoid(logit * calibration_factor)``; both terms are
per span, so confidences stay comparable across passages and windows. The weights are fitted
by logistic regression (Platt scaling) on held-out questions, the answer being right meaning
exact match, so a confidence of 0.8 means about 8 answers in 10 are exactly right. The reader
abstains when the best confidence is below ``threshold``, which is chosen on held-out data
that holds unanswerable questions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Calibration:
    span_weight: float = 0.1  # Haystack's default calibration factor, for uncalibrated models
    margin_weight: float = 0.0
    bias: float = 0.0
    threshold: float = 0.5

    def confidence(self, logit: float, null_logit: float) -> float:
        z = self.span_weight * logit + self.margin_weight * (logit - null_logit) + self.bias
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**{k: float(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def fit_platt(features: list[tuple[float, float]], correct: list[bool], steps: int = 3000,
              lr: float = 0.05, l2: float = 1e-3) -> tuple[float, float, float]:
    """Logistic regression of ``correct`` on ``(logit, logit - null_logit)``.

    Returns ``(span_weight, margin_weight, bias)``. Plain gradient descent on standardised
    features: two features and a few thousand points need nothing more.
    """
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(2), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = p - y
        w -= lr * (z.T @ g / len(y) + l2 * w)
        b -= lr * g.mean()
    # undo the standardisation: w·(x-mu)/sd + b
    ws = w / sd
    return float(ws[0]), float(ws[1]), float(b - (w * mu / sd).sum())


def expected_calibration_error(conf: list[float], correct: list[bool], bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins."""
    n = len(conf)
    if n == 0:
        return 0.0
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(conf) if (lo <= c < hi) or (b == bins - 1 and c == 1.0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            avg = sum(conf[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - avg)
    return total
