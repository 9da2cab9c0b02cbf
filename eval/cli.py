"""``spanqa eval``: a thin CLI over :mod:`eval.runner` (registered through the
``spanqa.commands`` entry point, so ``qa`` never imports ``eval``)."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate over a SQuAD-format question set",
                       description="Evaluate spanqa over SQuAD json (v1.1 or v2.0).")
    p.add_argument("data", nargs="?", help="SQuAD json file")
    p.add_argument("--out", help="run folder to write (predictions, metrics, report)")
    p.add_argument("--reader", default=None,
                   help="bundled reader name (default, fast), QA model folder or hub id")
    p.add_argument("--scope", choices=["article", "corpus"], default="article")
    from qa.cli import DeprecatedAlias, add_ray_option, add_runtime_option, count_option, int_option, threshold_option
    from qa.retriever import DEFAULT_TOP_K

    p.add_argument("--passages", type=count_option("passages", 20), default=DEFAULT_TOP_K,
                   help=f"passages the reader reads per question (default {DEFAULT_TOP_K})")
    p.add_argument("--top-k", dest="passages", type=count_option("passages", 20),
                   action=DeprecatedAlias, new="--passages", help=argparse.SUPPRESS)
    p.add_argument("--reader-only", action="store_true", help="read the gold paragraph itself")
    p.add_argument("--embedder", default=None,
                   help="embedder of the indexes the run builds (default: spanqa's default; "
                        "a bundled name, e.g. spanqa-retriever, or a sentence-transformers folder)")
    add_runtime_option(p)
    p.add_argument("--threshold", type=threshold_option, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--latency-sample", type=int, default=50,
                   help="also time N single warm ask() calls (0: skip)")
    add_ray_option(p, "spread the questions over Ray actors that each hold the models")
    p.add_argument("--ray-workers", type=int_option("--ray-workers", 1, 4096), default=None, metavar="N",
                   help="with --ray: actors (default: one per CPU of the cluster)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="print metric deltas and flipped questions of two runs")
    p.set_defaults(func=run)


def run(args) -> int:
    from qa.errors import SpanQAError

    if args.compare:
        from eval.compare import compare, format_comparison

        print(format_comparison(compare(*args.compare), *args.compare))
        return 0
    if not args.data or not args.out:
        raise SpanQAError("spanqa eval needs DATA.json and --out DIR (or --compare RUN_A RUN_B).")
    from eval.dialogues import evaluate_dialogues, is_dialogue_set, write

    if is_dialogue_set(args.data):
        rows, metrics = evaluate_dialogues(args.data, args.reader, args.passages, args.threshold)
        report = write(Path(args.out), rows, metrics)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in metrics.items()}))
        print(f"report: {report}")
        return 0
    from eval.metrics import ece, summarize
    from eval.report import write_report, write_run
    from eval.runner import EvalConfig, evaluate, single_question_latency

    cfg = EvalConfig(data=args.data, reader=args.reader, scope=args.scope, passages=args.passages,
                     reader_only=args.reader_only, threshold=args.threshold, limit=args.limit,
                     embedder=args.embedder)
    if args.ray_workers and not args.ray:
        raise SpanQAError("--ray-workers only applies with --ray.")
    if args.ray:
        from eval.distributed import evaluate_ray

        rows, facts = evaluate_ray(cfg, args.ray, args.ray_workers)
    else:
        rows, facts = evaluate(cfg)
    metrics = summarize(rows, facts["seconds"])
    metrics["ece"] = ece(rows)
    metrics["threshold"] = (cfg.threshold if cfg.threshold is not None
                            else facts["reader_config"]["calibration"]["threshold"])
    # the calibrated rule may also refuse by the reader's no-answer margin (a threshold given
    # on the command line replaces the rule)
    metrics["refusal_margin"] = (None if cfg.threshold is not None
                                 else facts["reader_config"]["calibration"].get("refusal_margin"))
    metrics["peak_rss_mb"] = facts["peak_rss_mb"]
    metrics["index_seconds"] = facts["index_seconds"]
    if args.latency_sample and not cfg.reader_only:
        lat = single_question_latency(cfg, args.latency_sample)
        metrics["single_ask_ms"] = {"p50": float(np.percentile(lat, 50)),
                                    "p95": float(np.percentile(lat, 95)), "n": len(lat)}
    from index.embedder import DEFAULT_EMBEDDER

    config = asdict(cfg) | {"reader": facts["reader"], "reader_config": facts["reader_config"],
                            "embedder": None if cfg.reader_only else cfg.embedder or DEFAULT_EMBEDDER}
    out = Path(args.out)
    write_run(out, rows, metrics, config)
    report = write_report(out, rows, metrics, config)
    show = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()
            if k in ("n", "em", "f1", "has_ans_f1", "no_ans_acc", "abstain_rate", "abstain_recall",
                     "recall@1", "recall@3", "recall@5", "recall@10", "mrr", "ece", "seconds")}
    print(json.dumps(show))
    for k in ("latency_ms", "single_ask_ms"):
        if k in metrics:
            print(f"{k}: p50 {metrics[k]['p50']:.0f} ms, p95 {metrics[k]['p95']:.0f} ms")
    print(f"report: {report}")
    return 0
