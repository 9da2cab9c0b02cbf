"""Choose the cut of a two-stage answer from two end-to-end runs over the same questions: a
cheap first stage and the full answer (on held-out *training* articles, never dev).

- The cascade: the fast reader, then the default reader (``spanqa eval ... --reader
  fast|default``). ``--write`` stores the cut in ``qa/models/cascade.json``.
- Staged reading: one reader reading its first N passages, then all of them (``spanqa eval
  ... --passages N|5``). ``--write-staged READER --first N`` stores ``first_passages`` and
  ``first_cut`` in that reader folder's ``spanqa_reader.json``.

    python -m eval.tune_cascade runs/fast-ho runs/default-ho [--max-loss 0.5] [--write]
    python -m eval.tune_cascade runs/ho-p2 runs/ho-p5 --write-staged qa/models/reader --first 2

For each cut (the fast reader's calibrated confidence at or above which its answer is kept)
it prints the share the fast reader answers and the cascade's F1, simulated per question from
the two runs (the cascade reads exactly what each run read). The chosen cut is the lowest
whose F1 is within ``--max-loss`` of the default reader alone; ``--write`` stores it in
``qa/models/cascade.json`` with the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qa.pipeline import CASCADE_FILE


def _rows(run: str) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (Path(run) / "per_question.jsonl").read_text().splitlines())}


def simulate(fast: dict[str, dict], full: dict[str, dict], cut: float) -> dict:
    ids = sorted(set(fast) & set(full))
    kept = [i for i in ids if fast[i]["best_text"] and fast[i]["best_score"] >= cut]
    kept_set = set(kept)
    f1 = sum((fast if i in kept_set else full)[i]["f1"] for i in ids) / len(ids)
    em = sum((fast if i in kept_set else full)[i]["em"] for i in ids) / len(ids)
    return {"cut": cut, "fast_share": 100 * len(kept) / len(ids), "f1": 100 * f1, "em": 100 * em}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.tune_cascade", description=__doc__.split("\n\n")[0])
    ap.add_argument("fast_run")
    ap.add_argument("default_run")
    ap.add_argument("--max-loss", type=float, default=0.5, help="F1 points the cascade may lose")
    ap.add_argument("--write", action="store_true", help=f"store the chosen cut in {CASCADE_FILE}")
    ap.add_argument("--write-staged", metavar="READER_DIR",
                    help="store the cut as this reader's staged reading (with --first)")
    ap.add_argument("--first", type=int, default=None,
                    help="with --write-staged: the passages the first run read")
    args = ap.parse_args(argv)
    if args.write_staged and not (args.first and args.first >= 1):
        ap.error("--write-staged needs --first N (the passages the first run read)")
    fast, full = _rows(args.fast_run), _rows(args.default_run)
    if not set(fast) & set(full):
        ap.error("the two runs share no question ids")
    alone = simulate(fast, full, 2.0)  # nothing kept: the default reader alone
    table = [simulate(fast, full, c / 100) for c in range(0, 101, 5)]
    print(f"second run alone: F1 {alone['f1']:.2f} on {len(set(fast) & set(full))} questions")
    print("cut   first answers  two-stage F1  vs second")
    for r in table:
        print(f"{r['cut']:.2f}  {r['fast_share']:12.1f}%  {r['f1']:10.2f}  {r['f1'] - alone['f1']:+9.2f}")
    ok = [r for r in table if r["f1"] >= alone["f1"] - args.max_loss]
    chosen = min(ok, key=lambda r: r["cut"])
    print(f"chosen cut {chosen['cut']:.2f}: the first stage answers {chosen['fast_share']:.1f}%, "
          f"F1 {chosen['f1']:.2f} ({chosen['f1'] - alone['f1']:+.2f})")
    if args.write:
        CASCADE_FILE.write_text(json.dumps({
            "first": "fast", "then": "default", "cut": chosen["cut"],
            "chosen_on": {"fast_run": args.fast_run, "default_run": args.default_run,
                          "max_loss": args.max_loss, "default_f1": alone["f1"],
                          "table": table}}, indent=2) + "\n")
        print(f"wrote {CASCADE_FILE}")
    if args.write_staged:
        from qa.reader import ReaderConfig

        cfg = ReaderConfig.load(args.write_staged).with_overrides(
            first_passages=args.first, first_cut=chosen["cut"])
        cfg.notes["staged_reading"] = {
            "first_run": args.fast_run, "full_run": args.default_run, "max_loss": args.max_loss,
            "full_f1": alone["f1"], "table": table}
        cfg.save(args.write_staged)
        print(f"wrote first_passages {args.first}, first_cut {chosen['cut']:.2f} to "
              f"{args.write_staged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
