"""Compare two evaluation runs: metric deltas and the questions whose result flipped."""
from __future__ import annotations

import json
from pathlib import Path

from qa.errors import SpanQAError


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
    return {"deltas": deltas, "common": len(common), "fixed": [rb[i] | {"before": ra[i]["prediction"]} for i in fixed],
            "broken": [rb[i] | {"before": ra[i]["prediction"]} for i in broken]}


def format_comparison(c: dict, a_name: str, b_name: str, show: int = 10) -> str:
    out = [f"{'metric':<22}{a_name[-18:]:>20}{b_name[-18:]:>20}{'delta':>10}"]
    for k, d in c["deltas"].items():
        out.append(f"{k:<22}{d['a']:>20.2f}{d['b']:>20.2f}{d['delta']:>+10.2f}")
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
