"""Fit a reader's confidence and abstention threshold on held-out data:
``spanqa calibrate-reader --reader DIR --data SQUAD.json [--titles T ...]``.

Three kinds of held-out question, each read the way the pipeline reads (the question with
three passages: the gold paragraph and the two paragraphs of the same article most similar
to the question, by the embedder):

* answerable: the reader should find the gold answer;
* unanswerable (SQuAD 2.0 ``is_impossible``): it should abstain;
* wrong document: an answerable question read with the three most similar paragraphs of
  *another* article: it should abstain.

Confidence is the product of two Platt-scaled models (see :mod:`qa.calibration`): the
chance the span is right (fitted on answerable questions, target exact match, from the
reader's logits) and the chance the passages are about the question (answerable against
wrong-document, from the logits and the question-passage similarity; ``--no-relevance``
leaves it out). The threshold starts at the lowest one at which at least
``--wrong-doc-target`` (default 95%) of the wrong-document questions are abstained on, and is
then raised while answerable F1 costs at most ``--max-f1-cost`` (default 2 points, the
budget issue 15 sets), refusing as many on-topic unanswerable questions as that budget
allows (:func:`choose_threshold`). ``--refuse-by margin`` spends the budget on the reader's own
no-answer margin instead: the threshold stays at the wrong-document floor and
``refusal_margin`` is raised (:func:`choose_margin`; see :mod:`qa.calibration`).
``--refuse-by probe`` (a reader folder holding a refusal probe, :mod:`qa.probe`) chooses two
thresholds together: the confidence one at or above the wrong-document floor and a probe
threshold, the pair refusing the most on-topic unanswerable questions within the budget
(:func:`choose_probe`).
All of it is written into the model folder's ``spanqa_reader.json``, with the figures, so
the folder stays self-describing. The figures there are in-sample (fitted and measured on the
same rows); ``cross_fitted`` gives them with every article judged by a calibration and
threshold fitted on the other articles alone (:func:`cross_fitted_figures`).

``--length-penalties 0 0.05 0.1 ...`` first picks the decoding length penalty (see
:mod:`qa.decoding`) with the best F1 on the answerable held-out questions read with their
gold paragraph (logits computed once, decoded once per value), and calibrates with it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qa.calibration import Calibration, expected_calibration_error, threshold_outcome
from qa.decoding import decode_windows
from qa.metrics import score
from qa.probe import RefusalProbe
from qa.reader import ExtractiveReader, ReaderConfig, resolve_model_path
from qa.squad import SquadArticle, load_squad


def fit_platt(features: list[tuple[float, ...]], correct: list[bool], steps: int = 3000,
              lr: float = 0.05, l2: float = 1e-3) -> tuple[float, ...]:
    """Logistic regression of ``correct`` on the features (e.g. ``(logit, logit - null_logit,
    relevance)``).

    Returns one weight per feature, then the bias. Plain gradient descent on standardised
    features: three features and a few thousand points need nothing more.
    """
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = p - y
        w -= lr * (z.T @ g / len(y) + l2 * w)
        b -= lr * g.mean()
    # undo the standardisation: w·(x-mu)/sd + b
    ws = w / sd
    return (*(float(v) for v in ws), float(b - (w * mu / sd).sum()))


class CalibrationCase(NamedTuple):
    """One held-out question as the reader will read it."""

    kind: str  # "answerable", "unanswerable" or "wrong_document"
    question: str
    passages: list[str]
    golds: list[str]  # empty unless answerable
    relevance: list[float]  # each passage's similarity to the question, as the retriever reports
    title: str = ""  # the question's article: the unit the cross-fitted figures hold out


def build_cases(articles: list[SquadArticle], embedder, rng: random.Random,
                limit: int) -> list[CalibrationCase]:
    """Answerable, unanswerable and wrong-document cases, each question reading its gold
    paragraph and the two paragraphs of the article most similar to it (wrong-document: the
    three most similar of another article)."""
    para_vecs = {a.title: embedder.embed(a.paragraphs, progress=False) for a in articles}
    qs = [q for a in articles for q in a.questions]
    rng.shuffle(qs)
    qs = qs[:limit]
    q_vecs = embedder.embed([q.question for q in qs], progress=True)
    by_title = {a.title: a for a in articles}
    cases = []
    for q, v in zip(qs, q_vecs):
        art = by_title[q.title]
        sims = para_vecs[q.title] @ v
        picked = [q.paragraph] + [i for i in np.argsort(-sims) if i != q.paragraph][:2]
        cases.append(CalibrationCase("unanswerable" if q.is_impossible else "answerable",
                                     q.question, [art.paragraphs[i] for i in picked],
                                     q.gold_texts, [float(sims[i]) for i in picked], q.title))
        if not q.is_impossible and len(articles) > 1:
            other = rng.choice([a for a in articles if a.title != q.title])
            o_sims = para_vecs[other.title] @ v
            top = np.argsort(-o_sims)[:3]
            cases.append(CalibrationCase("wrong_document", q.question,
                                         [other.paragraphs[i] for i in top], [],
                                         [float(o_sims[i]) for i in top], q.title))
    return cases


def build_retrieved_cases(articles: list[SquadArticle], embedder, rng: random.Random, limit: int,
                          passages: int) -> list[CalibrationCase]:
    """Like :func:`build_cases`, but each question reads the ``passages`` chunks the retriever
    finds in its article's own index, as users' questions do (the gold paragraph may be
    missing); wrong-document cases read what it finds in another article's index."""
    from index.store import DocumentStore
    from qa.retriever import Retriever
    from qa.squad import article_document

    retrievers = {}
    for i, a in enumerate(articles):
        store = DocumentStore(embedder)
        store.add([article_document(a, f"cal{i}")[0]])
        retrievers[a.title] = Retriever(store, top_k=passages)
    qs = [q for a in articles for q in a.questions]
    rng.shuffle(qs)
    qs = qs[:limit]
    cases = []
    for i in range(0, len(qs), 64):
        batch = qs[i:i + 64]
        # titles in first-seen order: a set's order changes with PYTHONHASHSEED, and with it
        # the order of the cases and which wrong documents are drawn
        for title in dict.fromkeys(q.title for q in batch):
            mine = [q for q in batch if q.title == title]
            for q, ps in zip(mine, retrievers[title].retrieve_many([q.question for q in mine])):
                cases.append(CalibrationCase(
                    "unanswerable" if q.is_impossible else "answerable", q.question,
                    [p.chunk.text for p in ps], q.gold_texts, [p.score for p in ps], q.title))
                if not q.is_impossible and len(articles) > 1:
                    other = rng.choice([a.title for a in articles if a.title != title])
                    ops = retrievers[other].retrieve(q.question)
                    cases.append(CalibrationCase("wrong_document", q.question,
                                                 [p.chunk.text for p in ops], [],
                                                 [p.score for p in ops], q.title))
    return cases


def length_penalty_scores(start, end, offsets, pair_index, passages: list[str],
                          golds: list[list[str]], penalties: list[float], max_answer_len: int,
                          top_n: int) -> list[dict]:
    """Mean EM and F1 of each pair's best span decoded with each length penalty; the model's
    logits are computed once by the caller and only decoding is repeated."""
    out = []
    for lp in penalties:
        cands = decode_windows(start, end, offsets, pair_index, max_answer_len, top_n, lp)
        ems, f1s = [], []
        for pair, (text, gold) in enumerate(zip(passages, golds)):
            best = next((c for c in cands.get(pair, []) if text[c.char_start:c.char_end].strip()),
                        None)
            em, f1 = score(text[best.char_start:best.char_end], gold) if best else (0.0, 0.0)
            ems.append(em)
            f1s.append(f1)
        out.append({"length_penalty": lp, "em": 100 * float(np.mean(ems)),
                    "f1": 100 * float(np.mean(f1s))})
    return out


def choose_length_penalty(reader, articles: list[SquadArticle], penalties: list[float],
                          limit: int = 2000) -> tuple[float, list[dict]]:
    """The penalty with the best F1 on (up to ``limit``) answerable questions of ``articles``,
    each read with its gold paragraph (the SQuAD reader setting), and the whole table."""
    qs = [(q, a.paragraphs[q.paragraph]) for a in articles for q in a.questions
          if not q.is_impossible][:limit]
    print(f"length penalty: reading {len(qs)} answerable questions once, decoding "
          f"{len(penalties)} ways", flush=True)
    windows, start, end = reader.window_logits([q.question for q, _ in qs], [p for _, p in qs],
                                               progress=True)
    cfg = reader.config
    table = length_penalty_scores(start, end, windows.offsets, windows.pair_index,
                                  [p for _, p in qs], [q.gold_texts for q, _ in qs], penalties,
                                  cfg.max_answer_len, cfg.top_n_per_window)
    best = max(table, key=lambda r: r["f1"])
    return best["length_penalty"], table


def fit_calibration(rows: list[dict], use_relevance: bool = True,
                    relevance_model: str = "", span_relevance: bool = False,
                    spans_per_case: int = 5, use_rank: bool = False,
                    topic_negatives: tuple[str, ...] = ("wrong_document",)) -> Calibration:
    """Both halves of :class:`~qa.calibration.Calibration` from the reader's raw spans.

    Each case is represented by its highest-logit span. ``right`` is fitted on the answerable
    cases (target: exact match); ``on_topic`` on answerable cases (1) against wrong-document
    cases (0), from the logits and the passage's similarity to the question.

    With ``span_relevance`` (cases read from retrieved passages), ``right`` is fitted on the
    top ``spans_per_case`` spans of every answerable case by logit, whichever passage they
    come from, with the passage's similarity as a third feature: it learns to rank spans of
    different passages, not only to scale the best one; a one-feature Platt fit on each
    case's chosen span then rescales it, so the answer's confidence stays calibrated.
    ``use_rank`` (retrieved cases whose rows carry each span's passage ``place``) adds
    ``1 / place`` to that span model (:class:`~qa.calibration.Calibration`'s ``rank_weight``).
    ``topic_negatives``: the kinds of case ``on_topic`` learns to score low; adding
    ``"unanswerable"`` makes it the chance that the passages answer the question at all."""
    def top(r):
        return max(r["spans"], key=lambda s: s["logit"], default=None)

    ans = [top(r) for r in rows if r["kind"] == "answerable" and r["spans"]]
    if span_relevance and use_relevance:
        many = [s for r in rows if r["kind"] == "answerable"
                for s in sorted(r["spans"], key=lambda s: -s["logit"])[:spans_per_case]]

        def features(s):
            return ((s["logit"], s["logit"] - s["null"], s["relevance"])
                    + ((1.0 / s["place"],) if use_rank else ()))

        *weights, b = fit_platt([features(s) for s in many], [s["em"] == 1.0 for s in many])

        def z(s):
            return sum(w * x for w, x in zip(weights, features(s))) + b

        # That fit ranks spans; rescale it so the span each question ends up answering with is
        # calibrated (a monotone map: a > 0 keeps the ranking).
        chosen = [max(r["spans"], key=z) for r in rows if r["kind"] == "answerable" and r["spans"]]
        a, c = fit_platt([(z(s),) for s in chosen], [s["em"] == 1.0 for s in chosen])
        if a > 0:
            weights, b = [a * w for w in weights], a * b + c
        sw, mw, rw = weights[:3]
        kw = weights[3] if use_rank else 0.0
        # the place a question's answer usually comes from, for passages not retrieved
        kd = float(np.mean([1.0 / s["place"] for s in chosen])) if use_rank and chosen else 0.0
    else:
        (sw, mw, b), rw, kw, kd = fit_platt([(s["logit"], s["logit"] - s["null"]) for s in ans],
                                            [s["em"] == 1.0 for s in ans]), 0.0, 0.0, 0.0
    cal = Calibration(span_weight=sw, margin_weight=mw, bias=b, relevance_weight=rw,
                      rank_weight=kw, rank_default=kd)
    negatives = [top(r) for r in rows if r["kind"] in topic_negatives and r["spans"]]
    if use_relevance and ans and negatives:
        spans = ans + negatives
        tsw, tmw, trw, tb = fit_platt(
            [(s["logit"], s["logit"] - s["null"], s["relevance"]) for s in spans],
            [True] * len(ans) + [False] * len(negatives))
        cal.topic_span_weight, cal.topic_margin_weight = tsw, tmw
        cal.topic_relevance_weight, cal.topic_bias = trw, tb
    if use_relevance and ans:
        cal.relevance_default = float(sum(s["relevance"] for s in ans) / len(ans))
        cal.relevance_model = relevance_model
    return cal


def wrong_doc_rate(figs: dict) -> float:
    """The share of wrong-document cases refused in :func:`main`'s figures (1 without any)."""
    return figs.get("wrong_document", {"abstain_rate": 1.0})["abstain_rate"]


def wrong_doc_floor(at, grid: list[float], wrong_doc_target: float) -> float:
    """The lowest threshold on ``grid`` at which ``wrong_doc_target`` of the wrong-document
    cases are refused (the last one when none is); ``at(t)`` as in :func:`choose_threshold`."""
    return next((t for t in grid if wrong_doc_rate(at(t)) >= wrong_doc_target), grid[-1])


def choose_threshold(at, grid: list[float], wrong_doc_target: float, max_f1_cost: float) -> float:
    """The abstention threshold: the lowest one on ``grid`` at which ``wrong_doc_target`` of
    the wrong-document cases are refused, then raised as far as answerable F1 stays within
    ``max_f1_cost`` points of never abstaining (each step refuses more on-topic questions the
    passages cannot answer). ``at(t)`` gives the figures of :func:`main` at threshold ``t``.
    Without a cost budget (0) it is that floor raised only through thresholds that cost no
    answerable F1 at all (:func:`wrong_doc_floor` is the floor itself)."""
    floor = wrong_doc_floor(at, grid, wrong_doc_target)
    base_f1 = at(0.0)["answerable"]["f1"]
    chosen = floor
    for t in grid:
        if t <= floor:
            continue
        if base_f1 - at(t)["answerable"]["f1"] > max_f1_cost:
            break
        chosen = t
    return chosen


def choose_margin(at, grid: list[float], max_f1_cost: float) -> float | None:
    """The refusal margin: the highest on ``grid`` (ascending) at which answerable F1 stays
    within ``max_f1_cost`` points of never abstaining, the threshold already in place (the
    wrong-document floor of :func:`choose_threshold`). ``at(m)`` gives the figures of
    :func:`main` with margin ``m``, ``at(None)`` without one and no threshold. None when
    even the lowest margin costs too much (the threshold alone spent the budget)."""
    base_f1 = at(None)["answerable"]["f1"]
    chosen = None
    for m in grid:
        if base_f1 - at(m)["answerable"]["f1"] > max_f1_cost:
            break
        chosen = m
    return chosen


PROBE_QUANTILES = np.linspace(0.0, 0.6, 121)  # probe thresholds tried: these quantiles of the rows'
PROBE_THRESHOLD_STEPS = 40  # confidence thresholds tried with them: the floor and 39 above


def probe_cuts(probes: list[float], quantiles=PROBE_QUANTILES) -> list[float]:
    """The probe thresholds tried: ``quantiles`` of ``probes``, each once, ascending."""
    return sorted(set(float(u) for u in np.quantile(probes, quantiles))) if probes else []


def on_topic_probes(rows: list[dict]) -> list[float]:
    """The chosen spans' probe logits of the scored rows that are not wrong-document cases."""
    return [r["probe"] for r in rows if r.get("probe") is not None and r["kind"] != "wrong_document"]


def probe_pairs(grid: list[float], floor: float, probes: list[float]) -> list[tuple[float, float]]:
    """Every ``(threshold, probe threshold)`` pair :func:`choose_probe` tries: thresholds from
    the wrong-document ``floor`` up :data:`PROBE_THRESHOLD_STEPS` steps of ``grid``, probe
    thresholds from :func:`probe_cuts`."""
    start = grid.index(floor)
    return [(t, u) for t in grid[start:start + PROBE_THRESHOLD_STEPS] for u in probe_cuts(probes)]


def choose_probe(at, grid: list[float], probes: list[float], wrong_doc_target: float,
                 max_f1_cost: float) -> tuple[float, float | None]:
    """``(threshold, probe_threshold)``: the pair of :func:`probe_pairs` refusing the most
    on-topic unanswerable questions while at least ``wrong_doc_target`` of the wrong-document
    ones are refused and answerable F1 costs at most ``max_f1_cost`` points (ties: the cheaper
    pair). ``probes``: the rows' chosen spans' probe logits. ``at(t, u)`` gives the figures of
    :func:`main` (``u`` None: no probe rule). ``(floor, None)`` when no probe threshold fits
    the budget."""
    floor = wrong_doc_floor(lambda t: at(t, None), grid, wrong_doc_target)
    base_f1 = at(0.0, None)["answerable"]["f1"]
    best = (-1.0, 0.0, floor, None)  # (unanswerable refused, -cost, t, u)
    for t, u in probe_pairs(grid, floor, probes):
        figs = at(t, u)
        cost = base_f1 - figs["answerable"]["f1"]
        if cost > max_f1_cost or wrong_doc_rate(figs) < wrong_doc_target:
            continue
        key = (figs.get("unanswerable", {"abstain_rate": 0.0})["abstain_rate"], -cost)
        if key > best[:2]:
            best = (*key, t, u)
    return best[2], best[3]


def read_cases(cases: list[CalibrationCase], reader) -> list[dict]:
    """What the reader finds for each case: its top spans with raw logits, the passage's
    relevance, and EM/F1 against the golds."""
    from tqdm import tqdm

    rows = []
    for i in tqdm(range(0, len(cases), 16), desc="reading", file=sys.stdout, mininterval=10):
        chunk = cases[i:i + 16]
        res = reader.predict_many([c.question for c in chunk], [c.passages for c in chunk],
                                  top_k=20)
        for case, r in zip(chunk, res):
            spans = []
            for s in r.spans:
                em, f1 = score(s.text, case.golds) if case.golds else (0.0, 0.0)
                spans.append({"logit": s.logit, "null": s.null_logit,
                              "relevance": case.relevance[s.passage], "place": s.passage + 1,
                              "em": em, "f1": f1,
                              **({} if s.probe is None else {"probe": s.probe})})
            rows.append({"kind": case.kind, "title": case.title, "spans": spans})
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spanqa calibrate-reader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reader", required=True, help="model folder to calibrate (updated in place)")
    ap.add_argument("--data", help="held-out SQuAD json (2.0 for unanswerables)")
    ap.add_argument("--titles", nargs="*", help="only these articles of --data")
    ap.add_argument("--holdout-json", help="a training run's holdout.json (gives --data/--titles)")
    ap.add_argument("--limit", type=int, default=2000, help="questions at most")
    ap.add_argument("--wrong-doc-target", type=float, default=0.95)
    ap.add_argument("--max-f1-cost", type=float, default=2.0,
                    help="past the wrong-document goal, raise the threshold (refusing more "
                         "on-topic unanswerable questions) while answerable F1 drops by at most this")
    ap.add_argument("--no-relevance", action="store_true",
                    help="no topic model: confidence from the reader's logits alone")
    ap.add_argument("--length-penalties", nargs="+", type=float, metavar="LP",
                    help="first choose the decoding length penalty among these (best F1 on the "
                         "answerable questions, gold paragraph), then calibrate with it")
    ap.add_argument("--cases", choices=["gold", "retrieved"], default="gold",
                    help="gold: each question reads its gold paragraph and the two most similar "
                         "ones; retrieved: the passages the retriever finds in the article's "
                         "index, and every top span fits the span model (see fit_calibration)")
    ap.add_argument("--passages", type=int, default=5, help="passages per retrieved case")
    ap.add_argument("--embedder", default=None, help="embedder for similarities (default: "
                                                     "spanqa's default)")
    ap.add_argument("--rank", action="store_true",
                    help="retrieved cases: add the passage's place in the retriever's ranking "
                         "to the span model (rank_weight; off by default: measured, not yet "
                         "better on dev, see the reader's model card)")
    ap.add_argument("--topic-negatives", nargs="+", default=["wrong_document"],
                    choices=["wrong_document", "unanswerable"],
                    help="kinds of case the on-topic model learns to score low (add "
                         "unanswerable: it learns 'the passages do not say' too)")
    ap.add_argument("--refuse-by", choices=["confidence", "margin", "probe"], default="confidence",
                    help="what the F1 budget is spent on: a higher confidence threshold, "
                         "(margin) a refusal margin on the reader's own no-answer score, the "
                         "threshold left at the wrong-document floor, or (probe) a threshold on "
                         "the reader folder's refusal probe chosen with the confidence one "
                         "(see qa.calibration)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--save-rows", help="write what the reader found per case (jsonl), to refit "
                                        "later with --from-rows without reading again")
    ap.add_argument("--from-rows", help="fit on rows saved by --save-rows instead of reading")
    ap.add_argument("--report", help="write the figures here too (json)")
    return ap


KINDS = ("answerable", "unanswerable", "wrong_document")


def figures_at(by_kind: dict[str, list[dict]], t: float, margin: float | None = None,
               probe: float | None = None) -> dict:
    """Per kind of case, abstention (and for answerable ones EM and F1) at threshold ``t``
    and, given them, refusal margin ``margin`` and probe threshold ``probe``, from each row's
    chosen span (``conf``, ``margin``, ``probe``, ``em``, ``f1``; see :func:`score_rows`)."""
    kinds = {}
    for k, rs in by_kind.items():
        if not rs:
            continue
        # a row the margin or the probe refuses is scored as if below any threshold
        conf = [-1.0 if (margin is not None and r["margin"] < margin)
                or (probe is not None and r.get("probe") is not None and r["probe"] < probe)
                else r["conf"] for r in rs]
        f1, abstain = threshold_outcome(conf, [r["f1"] for r in rs], [0.0] * len(rs), t)
        kinds[k] = {"n": len(rs), "abstain_rate": abstain}
        if k == "answerable":
            em, _ = threshold_outcome(conf, [r["em"] for r in rs], [0.0] * len(rs), t)
            kinds[k]["f1"], kinds[k]["em"] = 100 * f1, 100 * em
    return kinds


def read_rows(args, ap) -> tuple[list[dict], float | None, dict | None]:
    """What the reader finds for each held-out case (or the rows saved by an earlier run),
    and the chosen length penalty and its table when ``--length-penalties`` asked for one."""
    from index.embedder import DEFAULT_EMBEDDER, shared_embedder

    if args.from_rows:
        return [json.loads(line) for line in Path(args.from_rows).read_text().splitlines()], None, None
    if not args.data:
        ap.error("--data (or --holdout-json, or --from-rows) is required")
    articles = [a for a in load_squad(args.data) if not args.titles or a.title in args.titles]
    embedder = shared_embedder(args.embedder or DEFAULT_EMBEDDER)
    rng = random.Random(args.seed)
    if args.cases == "retrieved":
        cases = build_retrieved_cases(articles, embedder, rng, args.limit, args.passages)
    else:
        cases = build_cases(articles, embedder, rng, args.limit)
    reader = ExtractiveReader(args.reader)
    reader.warm_up()
    chosen_lp = lp_table = None
    if args.length_penalties:
        chosen_lp, lp_table = choose_length_penalty(reader, articles, args.length_penalties,
                                                     args.limit)
        reader.config.length_penalty = chosen_lp  # the cases are read with it
        print("length penalty:", json.dumps(lp_table), "->", chosen_lp)
    return read_cases(cases, reader), chosen_lp, lp_table


def score_rows(rows: list[dict], cal: Calibration) -> None:
    """Give every span of every row its confidence under ``cal``, and each row the span users
    would get (the most confident): its ``conf``, ``margin`` (logit less no-answer logit),
    ``em`` and ``f1``."""
    for r in rows:
        for s in r["spans"]:
            s["conf"] = cal.confidence(s["logit"], s["null"], s["relevance"], s.get("place"))
        best = max(r["spans"], key=lambda s: s["conf"], default=None)
        r.update(conf=best["conf"] if best else 0.0, em=best["em"] if best else 0.0,
                 f1=best["f1"] if best else 0.0,
                 margin=best["logit"] - best["null"] if best else -1e9,
                 probe=best.get("probe") if best else None)


THRESHOLD_GRID = [round(x, 3) for x in np.arange(0.0, 1.0, 0.005)]
MARGIN_GRID = [round(x, 2) for x in np.arange(-12.0, 12.0, 0.05)]


def rows_by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    return {k: [r for r in rows if r["kind"] == k] for k in KINDS}


def set_threshold(rows: list[dict], cal: Calibration, args) -> dict[str, list[dict]]:
    """Score ``rows`` with ``cal``, choose its threshold (and with ``--refuse-by margin`` its
    refusal margin, with ``--refuse-by probe`` its probe threshold) on them, set on ``cal``;
    the rows by kind."""
    score_rows(rows, cal)
    kinds = rows_by_kind(rows)
    cal.probe_threshold = None
    if args.refuse_by == "probe":
        cal.refusal_margin = None
        cal.threshold, cal.probe_threshold = choose_probe(
            lambda t, u: figures_at(kinds, t, None, u), THRESHOLD_GRID,
            on_topic_probes(rows), args.wrong_doc_target, args.max_f1_cost)
        return kinds
    by_margin = args.refuse_by == "margin"
    cal.threshold = choose_threshold(lambda t: figures_at(kinds, t), THRESHOLD_GRID,
                                     args.wrong_doc_target, 0.0 if by_margin else args.max_f1_cost)
    cal.refusal_margin = None
    if by_margin:
        # at(None): no threshold and no margin, i.e. never abstaining
        cal.refusal_margin = choose_margin(
            lambda m: figures_at(kinds, 0.0 if m is None else cal.threshold, m),
            MARGIN_GRID, args.max_f1_cost)
    return kinds


def evaluate_calibration(rows: list[dict], cal: Calibration, args) -> dict:
    """Score every row's spans with ``cal``, choose the threshold (set on ``cal``), and the
    held-out figures: ECE, abstention per kind, F1 cost, the curve."""
    kinds = set_threshold(rows, cal, args)
    ans = kinds["answerable"]
    never = figures_at(kinds, 0.0)
    final = figures_at(kinds, cal.threshold, cal.refusal_margin, cal.probe_threshold)

    def point(key, x, figs):
        return {key: x, **{k: v["abstain_rate"] for k, v in figs.items()},
                "answerable_f1": figs["answerable"]["f1"]}

    if cal.probe_threshold is not None:  # the threshold stays; the curve moves the probe's
        probes = [r["probe"] for r in rows if r.get("probe") is not None]
        curve = [point("probe_threshold", u, figures_at(kinds, cal.threshold, None, u))
                 for u in probe_cuts(probes, PROBE_QUANTILES[::4])]
    elif cal.refusal_margin is None:
        curve = [point("threshold", t, figures_at(kinds, t)) for t in THRESHOLD_GRID[::4]]
    else:  # the threshold stays; the curve moves the margin
        curve = [point("refusal_margin", m, figures_at(kinds, cal.threshold, m))
                 for m in MARGIN_GRID[::10]]
    return {"refuse_by": args.refuse_by, "cases": len(rows), "case_kind": args.cases,
            "passages": args.passages if args.cases == "retrieved" else 3,
            "ece_answerable": expected_calibration_error([r["conf"] for r in ans],
                                                         [r["em"] == 1.0 for r in ans]),
            "ece_all": expected_calibration_error([r["conf"] for r in rows],
                                                  [r["em"] == 1.0 for r in rows]),
            "relevance": not args.no_relevance, "calibration": cal.to_dict(),
            "never_abstain": never, "at_threshold": final,
            "f1_cost": never["answerable"]["f1"] - final["answerable"]["f1"],
            "curve": curve}


def cross_fitted_figures(rows: list[dict], fit, args) -> dict | None:
    """The same figures with no row judged by a calibration fitted on its own article: for each
    article, ``fit`` (rows -> Calibration) and the threshold rule run on the other articles'
    rows, and that article's rows are scored with the result (:func:`figures_at` at that
    threshold, summed over the articles by count). None when the rows do not name at least two
    articles (rows saved before they carried titles). Scores ``rows`` in place."""
    titles = sorted({r.get("title") or "" for r in rows})
    if len(titles) < 2 or "" in titles:
        return None
    sums: dict[str, dict[str, float]] = {}
    conf, right = [], []  # the answerable rows' confidences, for ECE over all articles
    for title in titles:
        train = [r for r in rows if r["title"] != title]
        cal = fit(train)
        set_threshold(train, cal, args)
        test = [r for r in rows if r["title"] == title]
        score_rows(test, cal)
        kinds = rows_by_kind(test)
        at = figures_at(kinds, cal.threshold, cal.refusal_margin, cal.probe_threshold)
        never = figures_at(kinds, 0.0)
        if "answerable" in at:
            at["answerable"]["f1_never_abstain"] = never["answerable"]["f1"]
            conf += [r["conf"] for r in kinds["answerable"]]
            right += [r["em"] == 1.0 for r in kinds["answerable"]]
        for kind, figs in at.items():
            acc = sums.setdefault(kind, {})
            for key, value in figs.items():
                acc[key] = acc.get(key, 0.0) + (value if key == "n" else value * figs["n"])
    out = {"articles": len(titles)}
    for kind, acc in sums.items():
        n = acc["n"]
        out[kind] = {key: (int(v) if key == "n" else v / n) for key, v in acc.items()}
    if "answerable" in out:
        out["answerable"]["ece"] = expected_calibration_error(conf, right)
        out["f1_cost"] = out["answerable"]["f1_never_abstain"] - out["answerable"]["f1"]
    return out


def save_calibration(args, cal: Calibration, report: dict, chosen_lp, lp_table) -> None:
    """Write the calibration and its figures into the reader folder's ``spanqa_reader.json``
    (and ``--report``)."""
    cfg = ReaderConfig.load(args.reader)
    cfg.set_calibration(cal)  # one fitted with another embedder is kept for its stores
    if lp_table is not None:
        cfg.length_penalty = chosen_lp
        report["length_penalty_table"] = lp_table
    earlier = cfg.notes.get("calibration_report", {}).get("length_penalty_table")
    if lp_table is None and earlier:  # this run did not choose it: keep the table that did
        report["length_penalty_table"] = earlier
    cfg.notes["calibration_report"] = {k: report[k] for k in
                                       ("data", "titles", "cases", "case_kind", "passages",
                                        "embedder", "topic_negatives", "refuse_by",
                                        "ece_answerable",
                                        "ece_all", "relevance",
                                        "never_abstain", "at_threshold", "f1_cost",
                                        "cross_fitted", "length_penalty_table") if k in report}
    cfg.save(args.reader)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from index.embedder import DEFAULT_EMBEDDER

    ap = build_parser()
    args = ap.parse_args(argv)
    if args.holdout_json:
        h = json.loads(Path(args.holdout_json).read_text())
        args.titles = h["titles"]
        args.data = args.data or h["source"]
    if args.from_rows and args.length_penalties:
        ap.error("--length-penalties needs the reader to read again; drop --from-rows")
    no_probe = ("holds no refusal probe (refusal_probe.safetensors and spanqa_probe.json; "
                "python -m qa.training.probe)")
    if args.refuse_by == "probe" and not args.from_rows and \
            RefusalProbe.load(resolve_model_path(args.reader)) is None:
        ap.error(f"--refuse-by probe: {args.reader} {no_probe}")
    rows, chosen_lp, lp_table = read_rows(args, ap)
    if args.refuse_by == "probe" and not any("probe" in s for r in rows for s in r["spans"]):
        ap.error(f"--refuse-by probe needs rows read by a reader folder with a probe; the one "
                 f"that read these {no_probe}")
    if args.save_rows:
        Path(args.save_rows).write_text("".join(json.dumps(r) + "\n" for r in rows))
    embedder = args.embedder or DEFAULT_EMBEDDER

    # the place of a gold case's passages says where the gold paragraph was put, not what a
    # retriever found: only retrieved cases (whose rows carry it) learn from it
    use_rank = (args.rank and args.cases == "retrieved" and not args.no_relevance
                and all("place" in s for r in rows for s in r["spans"]))

    def fit(rs):
        return fit_calibration(rs, not args.no_relevance, embedder,
                               span_relevance=args.cases == "retrieved", use_rank=use_rank,
                               topic_negatives=tuple(args.topic_negatives))

    cross = cross_fitted_figures(rows, fit, args)
    cal = fit(rows)
    figures = evaluate_calibration(rows, cal, args)
    if cross:
        figures["cross_fitted"] = cross
    report = {"data": Path(args.data).name if args.data else args.from_rows,
              "titles": args.titles, **{k: figures.pop(k) for k in ("cases", "case_kind", "passages")},
              "embedder": embedder, "topic_negatives": list(args.topic_negatives), **figures}
    save_calibration(args, cal, report, chosen_lp, lp_table)
    print(json.dumps({k: report[k] for k in ("cases", "refuse_by", "ece_answerable", "ece_all", "calibration",
                                             "never_abstain", "at_threshold", "f1_cost",
                                             "cross_fitted") if k in report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
