"""Latency of ``DocumentQA.ask()`` over the bundled article, cold start, and how close the
reader runs to the machine's arithmetic limit.

    python -m eval.bench_ask [--reader default|fast|cascade|PATH] [--runtime onnx] [--n 200]

Cold start is measured from a fresh Python process: import spanqa, load both models, index
the article, answer one question. Warm latency is one question at a time (what a chat user
waits), questions from eval/questions/us_weapons_in_russia.json in turn.

Work per question: the tokens the reader reads (its windows, and as computed: padded to the
longest window of each forward pass), the GFLOP that costs (2 per weight of the encoder's
matrices per token, plus attention's 4·layers·hidden per token per token of its window), and
the GFLOP/s achieved: that GFLOP (times the share of questions the reader read) over the mean
latency (int8 products counted as FLOP). Only what the reader was handed counts: with staged
reading, the first passages for most questions.
The fp32 peak it is set against is cores × clock (``/proc/cpuinfo``) × FLOP per cycle from
the CPU's vector units (:func:`flop_per_cycle`); the clock is the nominal one the VM reports,
so boost can put the real peak higher. A ``torch-bf16`` reader on a CPU with AMX is set
against the tile unit's nominal bf16 peak instead (:func:`bf16_peak_gflops`). ``--runtime``
picks what runs the readers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qa.cli import add_runtime_option, reader_env
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


def flop_per_cycle(vendor: str, family: int | None, flags: set[str]) -> tuple[int, str]:
    """fp32 FLOP one core can issue per cycle, from its vector units: two FMA pipes × lanes
    × 2. Full-width AVX-512 (Intel server cores, AMD Zen 5 = family 26): 2 × 16 × 2 = 64;
    AVX2, or Zen 4's (family 25) double-pumped AVX-512: 2 × 8 × 2 = 32."""
    if "avx512f" in flags and not (vendor == "AuthenticAMD" and family == 25):
        return 64, "two 512-bit FMA pipes"
    if "fma" in flags:
        return 32, "two 256-bit FMA pipes"
    return 16, "no FMA"


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return info


def _peak(info: dict[str, str], fpc: int, how: str) -> tuple[float, str]:
    """cores × nominal clock × ``fpc`` FLOP per cycle, and how it was computed."""
    cores = len(os.sched_getaffinity(0))
    if "cpu MHz" not in info:
        return float("nan"), "clock unknown"
    ghz = float(info["cpu MHz"]) / 1000
    return cores * ghz * fpc, f"{cores} core{'s' if cores != 1 else ''} x {ghz:.2f} GHz x {fpc} FLOP/cycle, {how}"


def fp32_peak_gflops() -> tuple[float, str]:
    """The CPU's nominal fp32 peak and how it was computed."""
    info = _cpuinfo()
    family = int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None
    return _peak(info, *flop_per_cycle(info.get("vendor_id", ""), family,
                                      set(info.get("flags", "").split())))


AMX_BF16_FLOP_PER_CYCLE = 1024  # Intel's figure for one core's AMX tile unit, bf16


def bf16_peak_gflops() -> tuple[float, str] | None:
    """The nominal AMX-BF16 peak (None without AMX): what a ``torch-bf16`` reader is set
    against, since its products run on the tile unit, not the vector FMA pipes."""
    from qa.cpu import has_amx_bf16

    if not has_amx_bf16():
        return None
    return _peak(_cpuinfo(), AMX_BF16_FLOP_PER_CYCLE, "bf16 on AMX")


def reader_work(reader, question: str, passages: list[str]) -> dict:
    """Tokens read (real and as computed with padding) and GFLOP for one question. The
    matrices' sizes come from the model's config, whichever runtime reads."""
    from transformers import AutoConfig

    from qa.features import build_windows
    from qa.reader import resolve_model_path

    cfg = reader.config
    w = build_windows(reader.tokenizer, [question] * len(passages), passages, cfg.max_seq_len,
                      cfg.doc_stride)
    lengths = [int(x) for x in w.attention_mask.sum(1)]
    mc = AutoConfig.from_pretrained(resolve_model_path(reader.model_name))
    layers, hidden = int(mc.num_hidden_layers), int(mc.hidden_size)
    # q, k, v, o, the feed-forward pair, and the span head (2 outputs): the encoder's matrices
    weights = layers * (4 * hidden * hidden + 2 * hidden * int(mc.intermediate_size)) + 2 * hidden
    computed = []
    for i in range(0, len(lengths), cfg.batch_size):
        batch = lengths[i:i + cfg.batch_size]
        computed += [max(batch)] * len(batch)

    def gflop(ts):
        return sum(2 * weights * t + 4 * layers * hidden * t * t for t in ts) / 1e9

    return {"windows": len(lengths), "tokens": sum(lengths), "tokens_computed": sum(computed),
            "gflop": gflop(computed)}


def work_per_question(reader_name: str | None, passages: int, n: int = 40) -> dict:
    """Per reader: the mean work of what it actually read for each question's ``ask()``
    (with staged reading or the cascade, less than all the passages retrieved), and the
    share of questions it read at all."""
    from qa import DocumentQA
    from qa.squad import load_squad, questions_of

    qa = DocumentQA.default(reader=reader_name, passages=passages)
    qa.warm_up()
    readers = [r for r in (qa.first_reader, qa.reader) if r is not None]
    read: dict[int, list[str]] = {}
    for r in readers:  # record what each reader is handed
        def spy(questions, texts, _r=r, _real=r.read_spans):
            read.setdefault(id(_r), []).extend(t for ts in texts for t in ts)
            return _real(questions, texts)
        r.read_spans = spy
    rows: dict[int, list[dict]] = {id(r): [] for r in readers}
    for q in [q.question for q in questions_of(load_squad(QUESTIONS))][:n]:
        read.clear()
        qa.ask(q)
        for r in readers:
            if read.get(id(r)):
                rows[id(r)].append(reader_work(r, q, read[id(r)]))
    out = {}
    for r in readers:
        got = rows[id(r)]
        out[f"{r.model_name} ({r.runtime})"] = {
            **{k: float(np.mean([x[k] for x in got])) for k in got[0]}, "share": len(got) / n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--passages", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--cold-runs", type=int, default=3)
    add_runtime_option(ap)
    args = ap.parse_args()
    if args.cold_runs < 0 or args.n < 1 or args.passages < 1:
        ap.error("--cold-runs must be 0 or more (0: none), --n and --passages at least 1")
    reader_env(args.runtime, args.read_all)  # this process and the cold-start ones
    from index.onnx_runtime import session_threads

    colds = [cold_start(args.reader) for _ in range(args.cold_runs)]
    if colds:
        c = min(colds, key=lambda r: r["total_s"])
        print(f"cold start (best of {len(colds)}): {c['total_s']:.2f} s in all "
              f"(import {c['import_s']:.2f} s, load models + index {c['load_s']:.2f} s, "
              f"first answer {c['first_answer_s']:.2f} s); all runs: "
              + ", ".join(f"{r['total_s']:.2f}" for r in colds))
    t = warm(args.reader, args.n, args.passages)
    p50 = float(np.percentile(t, 50))
    mean = float(np.mean(t))
    print(f"warm ask(), {args.n} questions, {args.passages} passages, {session_threads()} "
          f"threads: p50 {p50:.0f} ms, p95 {np.percentile(t, 95):.0f} ms, mean {mean:.0f} ms")
    fp32_peak, amx_peak = fp32_peak_gflops(), bf16_peak_gflops()
    for name, w in work_per_question(args.reader, args.passages).items():
        bf16 = "bf16" in name and amx_peak is not None
        peak, how = amx_peak if bf16 else fp32_peak
        print(f"reader {name}, read for {100 * w['share']:.0f}% of questions: {w['windows']:.1f} "
              f"windows, {w['tokens']:.0f} tokens read "
              f"({w['tokens_computed']:.0f} computed with padding), {w['gflop']:.1f} GFLOP per "
              f"question; over the mean latency {w['gflop'] * w['share'] / (mean / 1000):.0f} GFLOP/s (int8 "
              f"products counted as FLOP), against "
              f"{'an AMX-BF16' if bf16 else 'an fp32'} peak of {peak:.0f} GFLOP/s ({how})")


if __name__ == "__main__":
    main()
