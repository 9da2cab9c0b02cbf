"""Latency of ``DocumentQA.ask()`` over the bundled article, and cold start.

    python -m eval.bench_ask [--reader PATH] [--n 200] [--passages 3]

Cold start is measured from a fresh Python process: import spanqa, load both models, index
the article, answer one question. Warm latency is one question at a time (what a chat user
waits), questions from eval/questions/us_weapons_in_russia.json in turn.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qa.retriever import DEFAULT_TOP_K

QUESTIONS = Path(__file__).resolve().parent / "questions" / "us_weapons_in_russia.json"
COLD = """
import time, json, sys
t0 = time.perf_counter()
from qa import DocumentQA
t1 = time.perf_counter()
qa = DocumentQA.default(reader=sys.argv[1] if len(sys.argv) > 1 else None)
qa.warm_up()
t2 = time.perf_counter()
a = qa.ask("Who is the NATO Secretary General?")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_answer_s": t3 - t2, "answer": a.text}))
"""


def cold_start(reader: str | None) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COLD] + ([reader] if reader else []),
                         capture_output=True, text=True, check=True)
    total = time.perf_counter() - t
    return {"total_s": total, **json.loads(out.stdout.strip().splitlines()[-1])}


def warm(reader: str | None, n: int, passages: int) -> list[float]:
    from qa import DocumentQA
    from qa.squad import load_squad, questions_of

    qs = [q.question for q in questions_of(load_squad(QUESTIONS))]
    qa = DocumentQA.default(reader=reader, passages=passages)
    qa.warm_up()
    for q in qs[:5]:
        qa.ask(q)
    times = []
    for i in range(n):
        t = time.perf_counter()
        qa.ask(qs[i % len(qs)])
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--passages", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()
    import torch

    colds = [cold_start(args.reader) for _ in range(args.cold_runs)]
    c = min(colds, key=lambda r: r["total_s"])
    print(f"cold start (best of {len(colds)}): {c['total_s']:.2f} s in all "
          f"(import {c['import_s']:.2f} s, load models + index {c['load_s']:.2f} s, "
          f"first answer {c['first_answer_s']:.2f} s); all runs: "
          + ", ".join(f"{r['total_s']:.2f}" for r in colds))
    t = warm(args.reader, args.n, args.passages)
    print(f"warm ask(), {args.n} questions, {args.passages} passages, torch threads "
          f"{torch.get_num_threads()}: p50 {np.percentile(t, 50):.0f} ms, "
          f"p95 {np.percentile(t, 95):.0f} ms, mean {np.mean(t):.0f} ms")


if __name__ == "__main__":
    main()
