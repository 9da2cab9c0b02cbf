"""Writing an evaluation run: predictions, per-question records, metrics, plots, report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval.metrics import RECALL_KS, at_threshold, reliability


def write_run(out: Path, rows: list[dict], metrics: dict, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps({r["id"]: r["prediction"] for r in rows},
                                                     indent=1, ensure_ascii=False))
    with open(out / "per_question.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps({"config": config, **metrics}, indent=2))


def plots(out: Path, rows: list[dict], metrics: dict) -> dict[str, str]:
    """PNG plots next to the report; returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}

    rel = reliability(rows)
    if rel:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.bar([b["lo"] + 0.05 for b in rel], [b["accuracy"] for b in rel], width=0.09,
               alpha=0.7, label="exact-match rate")
        ax.plot([b["confidence"] for b in rel], [b["accuracy"] for b in rel], "o-", color="C1",
                label="mean confidence")
        for b in rel:
            ax.annotate(str(b["n"]), (b["lo"] + 0.05, b["accuracy"]), ha="center", va="bottom", fontsize=7)
        ax.set(xlabel="confidence", ylabel="accuracy (EM)", xlim=(0, 1), ylim=(0, 1.05),
               title="Reliability (answerable questions)")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "reliability.png", dpi=110)
        plt.close(fig)
        made["Reliability diagram"] = "reliability.png"

    ts = [at_threshold(rows, t) for t in np.linspace(0, 0.95, 39)]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([t["threshold"] for t in ts], [t["f1"] for t in ts], label="F1 (all)")
    if any(t["has_ans_f1"] is not None for t in ts):
        ax.plot([t["threshold"] for t in ts], [t["has_ans_f1"] for t in ts], label="F1 (answerable)")
    ax.plot([t["threshold"] for t in ts], [t["abstain_rate"] for t in ts], "--", label="abstained %")
    if metrics.get("threshold") is not None:
        ax.axvline(metrics["threshold"], color="grey", lw=1, ls=":", label="threshold used")
    ax.set(xlabel="abstention threshold", ylabel="%", ylim=(0, 100), title="F1 and abstention vs threshold")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "threshold.png", dpi=110)
    plt.close(fig)
    made["F1 and abstention against the threshold"] = "threshold.png"

    if "recall@1" in metrics:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        ks = [k for k in RECALL_KS if f"recall@{k}" in metrics]
        vals = [metrics[f"recall@{k}"] for k in ks]
        ax.bar([str(k) for k in ks], vals, color="C2")
        for i, v in enumerate(vals):
            ax.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=8)
        ax.set(xlabel="k (passages retrieved)", ylabel="recall@k %", ylim=(0, 105),
               title="Retrieval: gold passage in top k")
        fig.tight_layout()
        fig.savefig(out / "recall_at_k.png", dpi=110)
        plt.close(fig)
        made["Retrieval recall@k"] = "recall_at_k.png"

    lat = [r["latency_ms"] for r in rows if r.get("latency_ms") is not None]
    if lat:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.hist(lat, bins=40, color="C4")
        for name, v in (("p50", np.percentile(lat, 50)), ("p95", np.percentile(lat, 95))):
            ax.axvline(v, color="k", lw=1, ls=":")
            ax.text(v, ax.get_ylim()[1] * 0.9, f" {name} {v:.0f} ms", fontsize=8)
        ax.set(xlabel="ms per question (batched)", ylabel="questions", title="Latency")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made["Latency histogram"] = "latency.png"
    return made


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def write_report(out: Path, rows: list[dict], metrics: dict, config: dict, worst: int = 15) -> Path:
    made = plots(out, rows, metrics)
    keys = ["n", "em", "f1", "has_ans_em", "has_ans_f1", "no_ans_acc", "abstain_rate",
            "abstain_precision", "abstain_recall"] + [f"recall@{k}" for k in RECALL_KS] + ["mrr", "ece"]
    lines = [f"# spanqa evaluation: {Path(config['data']).name}", "",
             f"Reader `{config.get('reader') or 'default'}`, scope `{config['scope']}`"
             + (", reader only (gold paragraph)" if config.get("reader_only") else
                f", {config['passages']} passages per question")
             + f", abstention threshold {metrics.get('threshold', 0):.2f}"
             + (f" and refusal margin {metrics['refusal_margin']:.2f} (the reader's calibrated rule)"
                if metrics.get("refusal_margin") is not None else "") + ".", "",
             "| metric | value |", "|---|---|"]
    for k in keys:
        if k in metrics and metrics[k] is not None:
            v = metrics[k]
            lines.append(f"| {k} | {v:.3f} |" if k in ("mrr", "ece") else f"| {k} | {_fmt(v)} |")
    if "latency_ms" in metrics:
        lat = metrics["latency_ms"]
        lines.append(f"| latency p50 / p95 / mean (ms, batched) | {lat['p50']:.0f} / {lat['p95']:.0f} / {lat['mean']:.0f} |")
    if "single_ask_ms" in metrics:
        s = metrics["single_ask_ms"]
        lines.append(f"| one warm ask() p50 / p95 (ms) | {s['p50']:.0f} / {s['p95']:.0f} |")
    for k in ("seconds", "questions_per_second", "peak_rss_mb"):
        if k in metrics:
            lines.append(f"| {k} | {metrics[k]:.1f} |")
    lines.append("")
    for title, fn in made.items():
        lines += [f"## {title}", "", f"![{title}]({fn})", ""]
    wrong = sorted((r for r in rows if r["f1"] < 1.0), key=lambda r: -(r["best_score"] or 0))[:worst]
    lines += ["## Most confident errors", "",
              "| question | gold | spanqa said | confidence | F1 | gold passage rank |", "|---|---|---|---|---|---|"]
    for r in wrong:
        gold = " / ".join(dict.fromkeys(r["golds"])) or "(unanswerable)"
        said = r["prediction"] or f"(abstained; best: {r['best_text']})"
        lines.append("| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in [
            r["question"], gold[:80], said[:80], f"{r['best_score']:.2f}", f"{r['f1']:.2f}",
            _fmt(r.get("gold_rank")) if "gold_rank" in r else "–"]) + " |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
