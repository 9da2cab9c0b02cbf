"""Train a refusal probe: a logistic regression on the reader's ``<s>`` states.

The span head reads only the last layer; measured on the held-out calibration articles, the
``<s>`` states of three layers (6, 9 and 12 of the 12-layer reader) tell a right answer from an
unanswerable question better than the reader's scores do (the reader card, "A probe on the
reader's hidden states"). This step reads questions on their gold paragraphs, keeps for each
the window holding its best span (its ``<s>`` states, the span logit and the margin over the
no-answer logit) and fits::

    score = states · state_weight + (logit, margin) · scalar_weight + bias

with the target "the best span is right" (F1 ≥ 0.5 on an answerable question). The fit
standardises the states, projects them on their first ``k`` principal components and fits an
L2-penalised logistic regression there; all of it is linear, so it is folded into the one
``state_weight`` vector the reader would compute beside its span head.

    python -m qa.training.probe --reader qa/models/reader --out runs/probe

Writes ``refusal_probe.safetensors`` (``state_weight``, ``scalar_weight``, ``bias``) and
``spanqa_probe.json`` (layers, fit settings, what it was trained on, in-sample AUC). Copied
into a reader's model folder, the reader scores every span with it (:mod:`qa.probe`), and
``spanqa calibrate-reader --refuse-by probe`` chooses the probe threshold that refuses.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from qa.decoding import min_null_logit, window_spans
from qa.errors import SpanQAError
from qa.probe import PROBE_CONFIG, PROBE_FILE, encoder_layers, first_token_states, layer_outputs
from qa.squad import load_squad, shared_data
from qa.training.retriever import CALIBRATION_TITLES

# 1-based layers whose <s> state the probe reads, by encoder depth (measured: the reader card)
DEFAULT_LAYERS = {12: (6, 9, 12), 6: (2, 4, 6)}


@dataclass
class ProbeArgs:
    reader: str = "default"
    data: str = field(default_factory=lambda: str(
        shared_data("qa", "train", "squad_dev_35_articles.json")))
    skip_titles: tuple[str, ...] = CALIBRATION_TITLES  # held out for calibration and measuring
    layers: tuple[int, ...] | None = None  # None: DEFAULT_LAYERS for the reader's depth
    k: int = 32
    l2: float = 0.1
    limit: int = 0  # questions at most (0: all)
    runtime: str = "torch"  # or "torch-bf16" (about twice as fast on CPUs with bf16 units)
    out: str = "runs/probe"


def default_layers(n_layers: int) -> tuple[int, ...]:
    if n_layers in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[n_layers]
    return tuple(sorted({max(1, n_layers // 2), max(1, (3 * n_layers) // 4), n_layers}))


@contextmanager
def cls_states(model, layers: tuple[int, ...]):
    """While open, every forward pass appends its windows' ``<s>`` states of ``layers``
    (1-based), side by side, to the yielded list (one array per forward pass)."""
    out: list[np.ndarray] = []
    with layer_outputs(model, layers) as got:
        # runs after layer_outputs' own hook on the same block (hooks run in order)
        top = encoder_layers(model)[max(layers) - 1]
        handle = top.register_forward_hook(
            lambda *_: out.append(first_token_states(got, layers).float().cpu().numpy()))
        try:
            yield out
        finally:
            handle.remove()


def read_states(reader, questions: list[str], passages: list[str], layers: tuple[int, ...]):
    """For each (question, passage) pair: the ``<s>`` states of the window holding its best
    span, that span's logit (length penalty applied), the pair's no-answer logit and the span's
    character offsets. ``reader`` must read with torch (``runtime="torch"`` or ``torch-bf16``)."""
    reader.warm_up()
    if reader.model is None:
        raise SpanQAError("The refusal probe reads with torch: open the reader with "
                          "runtime='torch' or 'torch-bf16'.")
    cfg = reader.config
    with cls_states(reader.model, layers) as got:
        windows, start, end = reader.window_logits(questions, passages)
    states = np.concatenate(got)
    nulls = min_null_logit(start, end, windows.pair_index)
    # per pair (logit, window, char start, char end); a passage with no span: its first window
    best: dict[int, tuple[float, int, int, int]] = {}
    for w, pair in enumerate(windows.pair_index):
        spans = window_spans(start[w], end[w], windows.offsets[w], cfg.max_answer_len, 1,
                             cfg.length_penalty)
        best.setdefault(pair, (-np.inf, w, 0, 0))
        if spans and spans[0][2] > best[pair][0]:
            st, en, logit = spans[0]
            best[pair] = (logit, w, windows.offsets[w][st][0], windows.offsets[w][en][1])
    return [{"state": states[w], "logit": -20.0 if logit == -np.inf else logit,
             "null": nulls[pair], "char_start": cs, "char_end": ce}
            for pair, (logit, w, cs, ce) in sorted(best.items())]


def logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 50) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method: weights, then the bias (not
    penalised). ``x`` is standardised; a few hundred columns at most. Not
    :func:`qa.training.calibrate.fit_platt`: that one standardises its columns again (which
    would whiten the principal components and change what the penalty does) and takes a fixed
    number of gradient steps, enough for its three features but not converged for ~34."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    pen = np.full(d + 1, l2)
    pen[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(a @ w, -30, 30)))
        g = a.T @ (p - y) / n + pen * w
        h = (a * (p * (1 - p))[:, None]).T @ a / n + np.diag(pen) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_probe(states: np.ndarray, scalars: np.ndarray, target: np.ndarray, k: int,
              l2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(state_weight, scalar_weight, bias)`` such that ``states @ state_weight + scalars @
    scalar_weight + bias`` is the logit of a logistic regression of ``target`` on the
    standardised scalars and the first ``k`` principal components of the standardised states
    (divided by sqrt(k)), folded back into raw inputs."""
    states = np.asarray(states, np.float64)
    scalars = np.asarray(scalars, np.float64)
    target = np.asarray(target, np.float64)
    if target.min() == target.max():
        raise SpanQAError("The probe needs both right answers and unanswerable or wrong ones.")
    mu_h, sd_h = states.mean(0), states.std(0) + 1e-6
    mu_s, sd_s = scalars.mean(0), scalars.std(0) + 1e-6
    z = (states - mu_h) / sd_h
    k = min(k, *z.shape)
    _, _, vt = np.linalg.svd(z, full_matrices=False)  # z is centred already
    proj = vt[:k].T / np.sqrt(k)
    x = np.hstack([(scalars - mu_s) / sd_s, z @ proj])
    w = logistic(x, target, l2)
    w_s, w_p, b = w[:scalars.shape[1]], w[scalars.shape[1]:-1], w[-1]
    state_weight = (proj @ w_p) / sd_h
    scalar_weight = w_s / sd_s
    bias = b - mu_h @ state_weight - mu_s @ scalar_weight
    return state_weight, scalar_weight, float(bias)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    both = np.concatenate([positive, negative])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        tie = both == v
        ranks[tie] = ranks[tie].mean()
    n_p, n_n = len(positive), len(negative)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


def train(args: ProbeArgs) -> dict:
    """Read, fit, write: the probe's files in ``args.out``; returns the config written."""
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    from qa.metrics import score
    from qa.reader import ExtractiveReader

    qs = [q for a in load_squad(args.data) if a.title not in args.skip_titles
          for q in a.questions]
    if args.limit:
        qs = qs[:args.limit]
    if not any(q.is_impossible for q in qs):
        raise SpanQAError(f"{args.data} has no unanswerable questions outside the held-out "
                          "titles: the probe has nothing to learn refusal from.")
    reader = ExtractiveReader(args.reader, runtime=args.runtime)
    reader.warm_up()
    layers = args.layers or default_layers(len(encoder_layers(reader.model)))
    states, scalars, target = [], [], []
    batch = 32
    for i in tqdm(range(0, len(qs), batch), desc="reading", unit="batch", mininterval=10):
        part = qs[i:i + batch]
        for q, r in zip(part, read_states(reader, [q.question for q in part],
                                          [q.context for q in part], layers)):
            text = q.context[r["char_start"]:r["char_end"]]
            right = bool(q.gold_texts) and score(text, q.gold_texts)[1] >= 0.5
            states.append(r["state"])
            scalars.append((r["logit"], r["logit"] - r["null"]))
            target.append(right)
    states, scalars, target = np.stack(states), np.asarray(scalars), np.asarray(target)
    sw, cw, b = fit_probe(states, scalars, target, args.k, args.l2)
    s = states @ sw + scalars @ cw + b
    impossible = np.array([q.is_impossible for q in qs])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"state_weight": sw.astype(np.float32), "scalar_weight": cw.astype(np.float32),
               "bias": np.array([b], np.float32)}, str(out / PROBE_FILE))
    config = {"format": "spanqa-refusal-probe", "version": 1, "layers": list(layers),
              "hidden": int(states.shape[1] // len(layers)), "scalars": ["logit", "margin"],
              "target": "best span right (F1 >= 0.5)", "fit": {"k": args.k, "l2": args.l2},
              "reader": args.reader,
              "trained_on": {**asdict(replace(args, layers=tuple(layers))), "questions": len(qs),
                             "unanswerable": int(impossible.sum())},
              "in_sample_auc_right_vs_unanswerable": auc(s[target], s[impossible])}
    (out / PROBE_CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return config


def main(argv: list[str] | None = None) -> int:
    d = ProbeArgs()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", default=d.reader)
    ap.add_argument("--data", default=d.data, help="SQuAD 2.0-style file (default: %(default)s)")
    ap.add_argument("--skip-titles", nargs="*", default=list(d.skip_titles),
                    help="articles left out (default: the calibration articles)")
    ap.add_argument("--layers", type=int, nargs="+",
                    help="1-based layers whose <s> state is read (default: 6 9 12, or 2 4 6)")
    ap.add_argument("--k", type=int, default=d.k, help="principal components kept")
    ap.add_argument("--l2", type=float, default=d.l2)
    ap.add_argument("--limit", type=int, default=0, help="questions at most (0: all)")
    ap.add_argument("--runtime", choices=("torch", "torch-bf16"), default=d.runtime)
    ap.add_argument("--out", default=d.out)
    a = ap.parse_args(argv)
    if a.k < 1 or a.l2 < 0 or a.limit < 0:
        ap.error("--k must be at least 1, --l2 and --limit not negative")
    args = ProbeArgs(a.reader, a.data, tuple(a.skip_titles),
                     tuple(a.layers) if a.layers else None, a.k, a.l2, a.limit, a.runtime, a.out)
    try:
        config = train(args)
    except (SpanQAError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: config[k] for k in ("layers", "fit",
                                              "in_sample_auc_right_vs_unanswerable")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
