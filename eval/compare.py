"""Compare two evaluation runs: metric deltas and the questions whose result flipped."""
from __future__ import annotations

import json
from pathlib import Path

from qa.errors import SpanQAError
from qa.metrics import score


def load_run(d: str | Path) -> tuple[dict, dict[str, dict]]:
    d = Path(d)
    try:
        metrics = json.loads((d / "metrics.json").read_text())
        rows = {}
        for line in (d / "per_question.jsonl").read_text(encoding="utf-8").splitlines():
            if line:
                r = json.loads(line)
                rows[r["id"]] = r
    except (OSError, ValueError) as exc:
        raise SpanQAError(f"{d} is not an evaluation run ({exc}).") from None
    return metrics, rows


def at_abstentions(rows: list[dict], k: int) -> tuple[float, float]:
    """(EM, F1) in percent of a run had it abstained on exactly its ``k`` least confident
    questions and answered the rest with its best span (``best_text``, ``best_score``).

    Two readers with their own calibrations abstain at different rates, so their EM and F1
    at their own thresholds mix how well they read with where the threshold sits; compared at
    the same number of abstentions, only the reading differs."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["best_score"])
    skip = set(order[:k])
    em = f1 = 0.0
    for i, r in enumerate(rows):
        e, f = score("" if i in skip else r["best_text"], r["golds"])
        em, f1 = em + e, f1 + f
    n = max(len(rows), 1)
    return 100 * em / n, 100 * f1 / n


RESAMPLES = 2000


def paired_bootstrap(a: list[float], b: list[float], resamples: int = RESAMPLES,
                     seed: int = 0) -> dict:
    """The mean of ``b - a`` over paired items and its 95% interval: the 2.5th and 97.5th
    percentiles of the mean over ``resamples`` resamplings of the items with replacement (the
    same items for both runs, so what the two share cancels out). Seeded: the same runs give
    the same interval."""
    import numpy as np

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if not len(d):
        return {"n": 0, "mean": 0.0, "lo": 0.0, "hi": 0.0, "resamples": resamples}
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), (n, len(d)))].mean(axis=1)
                            for n in np.diff(np.r_[0:resamples:200, resamples])])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": len(d), "mean": float(d.mean()), "lo": float(lo), "hi": float(hi),
            "resamples": resamples}


def _best_f1(r: dict) -> float:
    """F1 of the run's best span, as if it had answered (no best span: the empty answer)."""
    return 100 * score(r.get("best_text") or "", r["golds"])[1]


def compare(a_dir, b_dir) -> dict:
    ma, ra = load_run(a_dir)
    mb, rb = load_run(b_dir)
    deltas = {}
    for k, va in ma.items():
        vb = mb.get(k)
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            deltas[k] = {"a": va, "b": vb, "delta": vb - va}
    common = sorted(set(ra) & set(rb))
    fixed = [i for i in common if ra[i]["em"] < 1 and rb[i]["em"] == 1]
    broken = [i for i in common if ra[i]["em"] == 1 and rb[i]["em"] < 1]
    matched = []
    if common and all({"best_text", "best_score", "abstained"} <= r[i].keys()
                      for r in (ra, rb) for i in common):
        a_rows, b_rows = [ra[i] for i in common], [rb[i] for i in common]
        counts = sorted({0, sum(r["abstained"] for r in a_rows), sum(r["abstained"] for r in b_rows)})
        for k in counts:
            (ea, fa), (eb, fb) = at_abstentions(a_rows, k), at_abstentions(b_rows, k)
            matched.append({"abstained": k, "a": {"em": ea, "f1": fa}, "b": {"em": eb, "f1": fb}})
    f1_diff = {"as run": paired_bootstrap([100 * ra[i]["f1"] for i in common],
                                          [100 * rb[i]["f1"] for i in common])}
    if matched:  # both runs kept their best spans: compare them answering everything too
        f1_diff["answering every question"] = paired_bootstrap(
            [_best_f1(ra[i]) for i in common], [_best_f1(rb[i]) for i in common])
    return {"deltas": deltas, "common": len(common), "matched": matched, "f1_diff": f1_diff,
            "fixed": [rb[i] | {"before": ra[i]["prediction"]} for i in fixed],
            "broken": [rb[i] | {"before": ra[i]["prediction"]} for i in broken]}


def format_comparison(c: dict, a_name: str, b_name: str, show: int = 10) -> str:
    out = [f"{'metric':<22}{a_name[-18:]:>20}{b_name[-18:]:>20}{'delta':>10}"]
    for k, d in c["deltas"].items():
        out.append(f"{k:<22}{d['a']:>20.2f}{d['b']:>20.2f}{d['delta']:>+10.2f}")
    if c.get("f1_diff"):
        out.append(f"\nF1 of {b_name[-18:]} minus {a_name[-18:]}, paired over the "
                   f"{c['common']} common questions (95% interval, bootstrap):")
        for what, d in c["f1_diff"].items():
            out.append(f"  {what:<26}{d['mean']:>+7.2f}   ({d['lo']:+.2f} … {d['hi']:+.2f}; "
                       f"{d['resamples']:,} resamples)")
    if c.get("matched"):
        out.append(f"\nEach run abstaining on its N least confident of the {c['common']} "
                   "common questions (EM / F1):")
        for m in c["matched"]:
            a, b = m["a"], m["b"]
            out.append(f"  N={m['abstained']:<6}{a['em']:>12.2f} /{a['f1']:>6.2f}"
                       f"{b['em']:>13.2f} /{b['f1']:>6.2f}{b['f1'] - a['f1']:>+10.2f} F1")
    out.append(f"\n{c['common']} questions in both; {len(c['fixed'])} now exact, "
               f"{len(c['broken'])} no longer exact.")
    for title, rows in (("Fixed", c["fixed"]), ("Broken", c["broken"])):
        if rows:
            out.append(f"\n{title}:")
            for r in rows[:show]:
                out.append(f"  {r['question'][:70]!r}: {r['before']!r} -> {r['prediction']!r} "
                           f"(gold {r['golds'][:1]})")
            if len(rows) > show:
                out.append(f"  … and {len(rows) - show} more")
    return "\n".join(out)
