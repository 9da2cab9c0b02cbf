"""How many on-topic unanswerable questions a reader refuses for each point of answerable F1,
under the two refusal rules a calibration can have (see :mod:`qa.calibration`):

* ``confidence``: refuse below a confidence threshold;
* ``margin``: the threshold at the wrong-document floor, and refuse when the answer's logit is
  below its passage's no-answer logit by more than a margin;
* ``probe`` (rows read by a reader folder with a refusal probe, :mod:`qa.probe`): refuse below
  a confidence threshold or below a probe threshold, both swept as ``calibrate-reader
  --refuse-by probe`` sweeps them; the curve is the best pair at each cost (its upper
  frontier).

It reads the rows ``spanqa calibrate-reader --save-rows`` wrote (what the reader found for each
held-out case), scores them with a reader folder's calibration, sweeps both rules, and prints
the share refused within 1, 2, 3 and 5 F1 points (wrong documents still refused at least
``--wrong-doc-target``), and plots the curves::

    python -m eval.refusal_curve runs/cal-v9r.jsonl:qa/models/reader:v9 --out refusal.png

Each ``ROWS:READER[:LABEL]`` adds one reader. The figures are in-sample (the threshold or the
margin is chosen on the rows it is judged on); the calibration report's ``cross_fitted``
figures are the held-out ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qa.calibration import Calibration
from qa.errors import OptionError, SpanQAError
from qa.training.calibrate import (
    MARGIN_GRID,
    THRESHOLD_GRID,
    choose_threshold,
    figures_at,
    on_topic_probes,
    probe_pairs,
    rows_by_kind,
    score_rows,
    wrong_doc_floor,
)

BUDGETS = (1.0, 2.0, 3.0, 5.0)


def curves(rows: list[dict], cal: Calibration, wrong_doc_target: float) -> dict[str, list[tuple]]:
    """Per rule, ``(F1 cost, unanswerables refused, wrong documents refused)`` at each point of
    its sweep, in percent. Scores ``rows`` in place."""
    score_rows(rows, cal)
    kinds = rows_by_kind(rows)
    never = figures_at(kinds, 0.0)["answerable"]["f1"]

    def point(f):
        return (never - f["answerable"]["f1"], 100 * f["unanswerable"]["abstain_rate"],
                100 * f["wrong_document"]["abstain_rate"])

    by_conf = [point(figures_at(kinds, t)) for t in THRESHOLD_GRID]
    # the margin rule's threshold: the wrong-document floor, as calibrate-reader chooses it
    floor = choose_threshold(lambda t: figures_at(kinds, t), THRESHOLD_GRID, wrong_doc_target, 0.0)
    by_margin = [point(figures_at(kinds, floor, m)) for m in MARGIN_GRID]
    out = {"confidence": by_conf, "margin": by_margin}
    probes = on_topic_probes(rows)
    if probes:  # the pairs calibrate-reader --refuse-by probe tries, reduced to their frontier
        start = wrong_doc_floor(lambda t: figures_at(kinds, t), THRESHOLD_GRID, wrong_doc_target)
        out["probe"] = frontier([point(figures_at(kinds, t, None, u))
                                 for t, u in probe_pairs(THRESHOLD_GRID, start, probes)],
                                wrong_doc_target)
    return out


def frontier(points: list[tuple], wrong_doc_target: float) -> list[tuple]:
    """The points (cost, unanswerables, wrong documents) meeting the wrong-document target that
    refuse more unanswerables than every cheaper one: the best a rule with several knobs does
    at each cost."""
    out, best = [], -1.0
    for p in sorted(p for p in points if p[2] >= 100 * wrong_doc_target):
        if p[1] > best:
            out.append(p)
            best = p[1]
    return out


def refused_within(points: list[tuple], budget: float, wrong_doc_target: float) -> float:
    """The most unanswerables refused at an F1 cost of at most ``budget``, wrong documents at
    least ``wrong_doc_target`` refused (0 when no point qualifies)."""
    ok = [u for cost, u, w in points if cost <= budget and w >= 100 * wrong_doc_target]
    return max(ok, default=0.0)


def load_spec(spec: str, wrong_doc_target: float) -> tuple[str, dict[str, list[tuple]]]:
    """``ROWS:READER[:LABEL]`` read: its label and :func:`curves`; ``OptionError`` on a bad spec."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise OptionError(f"expected ROWS:READER[:LABEL], not {spec!r}.")
    rows_path, reader = Path(parts[0]), Path(parts[1])
    if not rows_path.is_file():
        raise OptionError(f"no rows file {rows_path}.")
    if not (reader / "spanqa_reader.json").is_file():
        raise OptionError(f"{reader} is not a reader folder with a calibration.")
    try:
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
        cfg = json.loads((reader / "spanqa_reader.json").read_text())
        found = curves(rows, Calibration.from_dict(cfg["calibration"]), wrong_doc_target)
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"{spec}: not calibrate-reader rows and a reader's calibration "
                          f"({type(exc).__name__}: {exc}).") from None
    return (parts[2] if len(parts) == 3 else reader.name), found


def plot(results: dict[str, dict[str, list[tuple]]], out: Path, max_cost: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (label, by_rule) in enumerate(results.items()):
        for rule, style in (("confidence", "-"), ("margin", "--"), ("probe", "-.")):
            if rule not in by_rule:  # one colour per reader, one style per rule
                continue
            pts = sorted((c, u) for c, u, _ in by_rule[rule] if 0 <= c <= max_cost)
            ax.plot([c for c, _ in pts], [u for _, u in pts], style, color=f"C{i}",
                    label=f"{label}, by {rule}")
    ax.axvline(2.0, color="grey", lw=1, ls=":", label="the 2-point budget")
    ax.axhline(60.0, color="red", lw=1, ls=":", label="issue 15's goal (60%)")
    ax.set(xlabel="answerable F1 given up (points)", ylabel="unanswerables refused (%)",
           xlim=(0, max_cost), ylim=(0, 100), title="Refusing on-topic unanswerable questions")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.refusal_curve",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", metavar="ROWS:READER[:LABEL]")
    ap.add_argument("--wrong-doc-target", type=float, default=0.97)
    ap.add_argument("--max-cost", type=float, default=12.0, help="plot up to this F1 cost")
    ap.add_argument("--out", help="write the plot here (png)")
    args = ap.parse_args(argv)
    try:
        results = dict(load_spec(spec, args.wrong_doc_target) for spec in args.specs)
    except SpanQAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"unanswerables refused within {'/'.join(f'{b:g}' for b in BUDGETS)} F1 "
          f"(wrong documents >= {100 * args.wrong_doc_target:g}% refused), in-sample:")
    for label, by_rule in results.items():
        for rule, points in by_rule.items():
            within = [refused_within(points, b, args.wrong_doc_target) for b in BUDGETS]
            print(f"  {label:20s} by {rule:10s} " + " / ".join(f"{w:.1f}" for w in within))
    if args.out:
        plot(results, Path(args.out), args.max_cost)
        print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
