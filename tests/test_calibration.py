"""Calibration: the fit recovers what the data say, the relevance term is used only with the
embedder it was fitted for, and ``calibrate-reader`` writes a usable config into the folder."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from index.embedder import DEFAULT_EMBEDDER
from qa import DocumentQA
from qa.calibration import Calibration, expected_calibration_error
from qa.reader import READER_CONFIG_FILE, ExtractiveReader
from qa.training.calibrate import choose_threshold, fit_platt, length_penalty_scores
from qa.training.calibrate import main as calibrate_main
from tests.conftest import calibrate_each_rule


def test_fit_platt_recovers_three_weights_and_calibrates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3)) * [2.0, 1.0, 0.2] + [5.0, 1.0, 0.5]
    true_w, true_b = np.array([0.5, -1.0, 10.0]), -5.0
    p = 1 / (1 + np.exp(-(x @ true_w + true_b)))
    y = rng.random(4000) < p
    *w, b = fit_platt([tuple(r) for r in x], list(y), steps=6000, lr=0.2, l2=0.0)
    assert np.allclose(w, true_w, rtol=0.1, atol=0.1) and abs(b - true_b) < 1.0
    # as the topic model (features: logit, logit - null, relevance) with a "right" part of ~1
    cal = Calibration(span_weight=0.0, bias=50.0, topic_span_weight=w[0], topic_margin_weight=w[1],
                      topic_relevance_weight=w[2], topic_bias=b, relevance_default=0.4)
    conf = [cal.confidence(a, a - m, r) for a, m, r in x]  # null = logit - margin
    assert expected_calibration_error(conf, list(y)) < 0.03
    assert cal.confidence(1.0, 0.0, None) == cal.confidence(1.0, 0.0, 0.4)


def test_confidence_is_right_times_on_topic_and_old_folders_keep_their_meaning():
    old = Calibration.from_dict({"span_weight": 0.2, "margin_weight": 0.1, "bias": -1.0, "threshold": 0.4})
    assert not old.has_topic_model and old.on_topic(5.0, 1.0, 0.0) == 1.0
    assert abs(old.confidence(5.0, 1.0) - 1 / (1 + math.exp(-(0.2 * 5 + 0.1 * 4 - 1.0)))) < 1e-12
    cal = Calibration(span_weight=0.2, bias=-1.0, topic_relevance_weight=10.0, topic_bias=-4.0)
    assert cal.confidence(5.0, 1.0, 0.1) < 0.05 < 0.4 < cal.confidence(5.0, 1.0, 0.8)
    assert abs(cal.confidence(5.0, 1.0, 0.8) - cal.right(5.0, 1.0) * cal.on_topic(5.0, 1.0, 0.8)) < 1e-12


def test_relevance_only_counts_for_the_embedder_it_was_fitted_with():
    cal = Calibration(topic_relevance_weight=3.0, relevance_model="all-MiniLM-L6-v2")
    assert cal.accepts_relevance_from("sentence-transformers/all-MiniLM-L6-v2")
    assert cal.accepts_relevance_from("/models/all_minilm_l6_v2/")
    assert not cal.accepts_relevance_from("all-mpnet-base-v2")
    assert not Calibration().accepts_relevance_from("all-MiniLM-L6-v2")  # no weight, no use
    d = json.loads(json.dumps(cal.to_dict()))
    assert Calibration.from_dict(d) == cal  # the model name survives as a string


def _reader_with(tiny_reader_dir, tmp_path, calibration: dict):
    d = tmp_path / "reader"
    shutil.copytree(tiny_reader_dir, d)
    (d / READER_CONFIG_FILE).write_text(json.dumps({"calibration": calibration}))
    return str(d)


def test_pipeline_hands_passage_similarity_to_the_calibration(tiny_reader_dir, tmp_path):
    # A calibration that trusts only relevance: similar passages pass, dissimilar ones abstain.
    reader = _reader_with(tiny_reader_dir, tmp_path, {
        "span_weight": 0.0, "bias": 20.0, "topic_relevance_weight": 40.0, "topic_bias": -12.0,
        "threshold": 0.5, "relevance_default": 0.0, "relevance_model": DEFAULT_EMBEDDER})
    qa = DocumentQA.from_texts(["The Eiffel Tower in Paris was finished in 1889 for the World's Fair."],
                               reader=reader)
    on_topic = qa.ask("When was the Eiffel Tower in Paris finished?")
    off_topic = qa.ask("Which enzyme digests starch in saliva?")
    assert not on_topic.abstained and on_topic.score > 0.5
    assert off_topic.abstained
    # the reader on its own knows no similarity and uses the default: everything abstains
    alone = ExtractiveReader(reader).predict("When was the Eiffel Tower finished?",
                                             ["The Eiffel Tower in Paris was finished in 1889."])
    assert alone.abstained


def test_calibrate_reader_writes_weights_threshold_and_figures(tiny_reader_dir, tmp_path):
    ctx = {t: [f"{t} fact number {i}: the {t.lower()} value was {100 + i} in the survey." for i in range(3)]
           for t in ("Rivers", "Mountains", "Deserts")}
    data = {"version": "v2.0", "data": [{"title": t, "paragraphs": [
        {"context": c, "qas": [
            {"id": f"{t}{i}a", "question": f"What was the {t.lower()} value in fact {i}?",
             "answers": [{"text": str(100 + i), "answer_start": c.index(str(100 + i))}]},
            {"id": f"{t}{i}u", "question": f"Who wrote {t.lower()} fact {i}?", "answers": [],
             "is_impossible": True}]} for i, c in enumerate(cs)]} for t, cs in ctx.items()]}
    path = tmp_path / "held.json"
    path.write_text(json.dumps(data))
    reader = _reader_with(tiny_reader_dir, tmp_path, {})
    report = tmp_path / "report.json"
    assert calibrate_main(["--reader", reader, "--data", str(path), "--report", str(report)]) == 0
    cfg = json.loads((tmp_path / "reader" / READER_CONFIG_FILE).read_text())
    cal = Calibration.from_dict(cfg["calibration"])
    assert cal.relevance_model == DEFAULT_EMBEDDER and 0 < cal.relevance_default < 1
    assert 0 <= cal.threshold < 1
    rep = json.loads(report.read_text())
    assert rep["cases"] == 9 + 9 + 9  # answerable, unanswerable, wrong document
    assert cal.has_topic_model
    assert rep["at_threshold"]["wrong_document"]["abstain_rate"] >= 0.95 or cal.threshold == 0.995
    assert 0 <= rep["ece_answerable"] <= 1 and "f1_cost" in cfg["calibration_report"]
    # refitting from the saved rows gives the same calibration without reading again
    rows = tmp_path / "rows.jsonl"
    assert calibrate_main(["--reader", reader, "--data", str(path), "--save-rows", str(rows)]) == 0
    first = json.loads((tmp_path / "reader" / READER_CONFIG_FILE).read_text())["calibration"]
    assert calibrate_main(["--reader", reader, "--from-rows", str(rows)]) == 0
    assert json.loads((tmp_path / "reader" / READER_CONFIG_FILE).read_text())["calibration"] == first
    # choosing the length penalty first writes the chosen one and its table into the folder
    assert calibrate_main(["--reader", reader, "--data", str(path),
                           "--length-penalties", "0", "0.3"]) == 0
    cfg = json.loads((tmp_path / "reader" / READER_CONFIG_FILE).read_text())
    table = cfg["calibration_report"]["length_penalty_table"]
    assert [r["length_penalty"] for r in table] == [0.0, 0.3]
    assert cfg["length_penalty"] == max(table, key=lambda r: r["f1"])["length_penalty"]


def test_length_penalty_scores_decode_the_same_logits_once_per_penalty():
    # [CLS] q [SEP] alpha beta gamma delta [SEP]: raw scores favour "beta gamma delta" (10.0)
    # over "beta" (9.5); the gold answer is "beta".
    passage = "alpha beta gamma delta"
    offs = [None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    s, e = np.full(8, -5.0), np.full(8, -5.0)
    s[4], e[4], e[6] = 5.0, 4.5, 5.0
    table = length_penalty_scores(np.array([s]), np.array([e]), [offs], [0], [passage],
                                  [["beta"]], [0.0, 0.5], max_answer_len=30, top_n=5)
    assert [r["length_penalty"] for r in table] == [0.0, 0.5]
    assert table[0]["em"] == 0.0 and math.isclose(table[0]["f1"], 50.0)  # 1 of 3 tokens right
    assert table[1]["em"] == 100.0 and table[1]["f1"] == 100.0


def test_span_model_fitted_on_retrieved_passages_learns_to_rank_by_relevance():
    """Spans of relevant passages are right more often at the same logit: fitted on every
    top span of retrieved passage sets, the span model gives relevance a positive weight and
    ranks an equal-logit span of a relevant passage first."""
    from qa.training.calibrate import fit_calibration

    rng = np.random.default_rng(1)
    rows = []
    for _ in range(600):
        spans = []
        for _ in range(5):
            logit, rel = rng.normal(6, 2), rng.uniform(0.1, 0.9)
            right = rng.random() < 1 / (1 + np.exp(-(0.6 * logit + 8 * rel - 9)))
            spans.append({"logit": logit, "null": 0.0, "relevance": rel, "em": float(right),
                          "f1": float(right)})
        rows.append({"kind": "answerable", "spans": spans})
    cal = fit_calibration(rows, use_relevance=True, relevance_model="m", span_relevance=True)
    assert cal.relevance_weight > 3.0
    assert cal.right(6.0, 0.0, 0.8) > cal.right(6.0, 0.0, 0.2)
    plain = fit_calibration(rows, use_relevance=True, relevance_model="m")
    assert plain.relevance_weight == 0.0


def test_span_model_learns_the_retrievers_ranking_when_asked_and_old_configs_ignore_it():
    """Spans of the retriever's first passage are right more often than an equal-logit,
    equal-similarity span of its fifth: fitted with ``use_rank`` the span model gives
    ``1 / place`` a positive weight and its default stands in for unknown places; a config
    written before the rank term (no such keys) scores every place alike."""
    from qa.training.calibrate import fit_calibration

    rng = np.random.default_rng(2)
    rows = []
    for _ in range(600):
        spans = []
        for place in range(1, 6):
            logit = rng.normal(6, 2)
            right = rng.random() < 1 / (1 + np.exp(-(0.6 * logit + 4 / place - 5)))
            spans.append({"logit": logit, "null": 0.0, "relevance": 0.5, "place": place,
                          "em": float(right), "f1": float(right)})
        rows.append({"kind": "answerable", "spans": spans})
    cal = fit_calibration(rows, use_relevance=True, relevance_model="m", span_relevance=True,
                          use_rank=True)
    assert cal.rank_weight > 1.0 and 0.2 < cal.rank_default < 1.0
    assert cal.right(6.0, 0.0, 0.5, place=1) > cal.right(6.0, 0.0, 0.5, place=5)
    assert cal.right(6.0, 0.0, 0.5) == cal.right(6.0, 0.0, 0.5, place=1 / cal.rank_default)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    without = fit_calibration(rows, use_relevance=True, relevance_model="m", span_relevance=True)
    assert without.rank_weight == 0.0
    old = Calibration.from_dict({"span_weight": 0.2, "bias": -1.0, "relevance_weight": 1.0})
    assert old.confidence(6.0, 0.0, 0.5, place=1) == old.confidence(6.0, 0.0, 0.5, place=5)


def test_scoring_ranks_by_place_only_for_passages_in_the_retrievers_order():
    from qa.scoring import RawSpan, score_spans

    cal = Calibration(span_weight=0.5, bias=-3.0, rank_weight=2.0, rank_default=0.5)
    raw = [[RawSpan(0, "Paris", 0, 5, 6.0, 0.0), RawSpan(3, "Lyon", 0, 4, 6.2, 0.0)]]
    ranked = score_spans(raw, cal, 0.0, 2, relevance=[[0.5] * 4], ranked=True)[0]
    assert [s.text for s in ranked.spans] == ["Paris", "Lyon"]  # place 1 outweighs 0.2 logit
    plain = score_spans(raw, cal, 0.0, 2, relevance=[[0.5] * 4])[0]
    assert [s.text for s in plain.spans] == ["Lyon", "Paris"]  # places unknown: logits decide


def test_calibrate_reader_on_retrieved_passages(tiny_reader_dir, tmp_path):
    """--cases retrieved: each question reads what the retriever finds in its article's index
    (and wrong-document cases what it finds in another's); the span model gets a relevance
    weight and the report says how the cases were made."""
    ctx = {t: [f"Fact {i} about {t.lower()}: the {t.lower()} value is {100 + i}. " * 2 for i in range(4)]
           for t in ("Rivers", "Mountains")}
    data = {"version": "v2.0", "data": [{"title": t, "paragraphs": [
        {"context": c, "qas": [{"id": f"{t}{i}", "question": f"What is the {t.lower()} value in fact {i}?",
                                "answers": [{"text": str(100 + i), "answer_start": c.index(str(100 + i))}]}]}
        for i, c in enumerate(cs)]} for t, cs in ctx.items()]}
    path = tmp_path / "held.json"
    path.write_text(json.dumps(data))
    reader = _reader_with(tiny_reader_dir, tmp_path, {})
    report = tmp_path / "report.json"
    rows = tmp_path / "rows.jsonl"
    assert calibrate_main(["--reader", reader, "--data", str(path), "--report", str(report),
                           "--cases", "retrieved", "--passages", "2", "--save-rows", str(rows),
                           "--rank"]) == 0
    rep = json.loads(report.read_text())
    assert rep["case_kind"] == "retrieved" and rep["passages"] == 2 and rep["cases"] == 8 + 8
    cfg = json.loads((tmp_path / "reader" / READER_CONFIG_FILE).read_text())
    assert cfg["calibration_report"]["case_kind"] == "retrieved"
    # every span knows its passage's place, and the span model used it (1 / place averaged)
    places = [s["place"] for line in rows.read_text().splitlines() for s in json.loads(line)["spans"]]
    assert places and set(places) <= {1, 2}
    assert 0.5 <= cfg["calibration"]["rank_default"] <= 1.0


def test_threshold_meets_the_wrong_document_goal_then_spends_the_f1_budget_on_refusals():
    # hand-made curve: wrong-document refusals reach 95% at 0.2; answerable F1 falls by
    # 0.4 per 0.1 of threshold from there
    def at(t):
        return {"wrong_document": {"abstain_rate": min(1.0, t / 0.2 * 0.95)},
                "answerable": {"f1": 80.0 - max(0.0, t - 0.2) * 4}}

    grid = [round(i * 0.05, 2) for i in range(20)]
    assert choose_threshold(at, grid, 0.95, 0.0) == 0.2  # no budget: the wrong-document rule
    assert choose_threshold(at, grid, 0.95, 1.0) == 0.45  # 80 - 0.25*4 = 79: within 1 point
    assert choose_threshold(at, grid, 0.95, 0.3) == 0.25
    # the wrong-document goal wins over the budget when it alone costs more
    assert choose_threshold(lambda t: {"wrong_document": {"abstain_rate": t},
                                       "answerable": {"f1": 80 - 10 * t}}, grid, 0.9, 1.0) == 0.9


def _rows_of(title, rng, shift=0.0):
    """Hand-made calibration rows of one article: answerable cases have a high logit when
    right, unanswerable and wrong-document ones lower logits (plus ``shift``)."""
    rows = []
    for i in range(60):
        right = i % 3 != 0
        logit = (8.0 if right else 4.0) + rng.normal()
        rows.append({"kind": "answerable", "title": title, "spans": [
            {"logit": logit, "null": 0.0, "relevance": 0.6, "em": float(right), "f1": float(right)}]})
        rows.append({"kind": "unanswerable", "title": title, "spans": [
            {"logit": 3.0 + shift + rng.normal(), "null": 0.0, "relevance": 0.6, "em": 0.0, "f1": 0.0}]})
        rows.append({"kind": "wrong_document", "title": title, "spans": [
            {"logit": 2.0 + rng.normal(), "null": 0.0, "relevance": 0.1, "em": 0.0, "f1": 0.0}]})
    return rows


def test_cross_fitted_figures_never_judge_an_article_by_its_own_fit():
    from argparse import Namespace

    from qa.training.calibrate import cross_fitted_figures, fit_calibration

    rng = np.random.default_rng(1)
    # article C's unanswerable questions look like right answers: a fit that saw them would
    # learn a higher threshold, one that did not refuses fewer of them
    rows = _rows_of("A", rng) + _rows_of("B", rng) + _rows_of("C", rng, shift=5.0)
    args = Namespace(wrong_doc_target=0.95, max_f1_cost=2.0, refuse_by="confidence")
    seen = []

    def fit(rs):
        seen.append({r["title"] for r in rs})
        return fit_calibration(rs, True, "e", span_relevance=True)

    cross = cross_fitted_figures(rows, fit, args)
    assert seen == [{"B", "C"}, {"A", "C"}, {"A", "B"}]  # each fit lacks the article it judges
    assert cross["articles"] == 3
    assert cross["unanswerable"]["n"] == cross["answerable"]["n"] == 180
    assert 0.0 <= cross["unanswerable"]["abstain_rate"] <= 1.0
    assert cross["wrong_document"]["abstain_rate"] > 0.9
    assert abs(cross["f1_cost"] - (cross["answerable"]["f1_never_abstain"]
                                   - cross["answerable"]["f1"])) < 1e-9
    # rows without titles (saved by older versions) have no cross-fitted figures
    assert cross_fitted_figures([dict(r, title="") for r in rows], fit, args) is None
    assert cross_fitted_figures([r for r in rows if r["title"] == "A"], fit, args) is None


def test_span_choice_scores_each_calibration_on_saved_spans(tmp_path, capsys):
    """eval.span_choice compare: the span a calibration ranks first, from saved rows, with
    the passages read limited to the first k: a rank-aware calibration takes the first
    passage's span, a logit-only one the higher logit."""
    from eval.span_choice import main as span_choice
    from eval.span_choice import pick

    spans = [{"logit": 6.0, "null": 0.0, "relevance": 0.5, "place": 1, "alnum": True, "em": 1.0, "f1": 1.0},
             {"logit": 6.5, "null": 0.0, "relevance": 0.5, "place": 2, "alnum": True, "em": 0.0, "f1": 0.5}]
    plain = Calibration(span_weight=0.5, bias=-3.0, threshold=0.1)
    ranked = Calibration(span_weight=0.5, bias=-3.0, rank_weight=2.0, threshold=0.1)
    assert pick(spans, plain)[0]["place"] == 2 and pick(spans, ranked)[0]["place"] == 1
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "q", "title": "T", "spans": spans}) + "\n")
    configs = []
    for name, cal in (("plain", plain), ("ranked", ranked)):
        configs.append(tmp_path / f"{name}.json")
        configs[-1].write_text(json.dumps({"calibration": cal.to_dict()}))
    assert span_choice(["compare", str(rows)] + [str(c) for c in configs]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "first 2 passages: never abstaining EM 0.00 F1 50.00" in out[2]
    assert "first 2 passages: never abstaining EM 100.00 F1 100.00" in out[5]
    assert "first 1 passages: never abstaining EM 100.00" in out[1]


def test_on_topic_learns_unanswerable_questions_only_when_asked():
    """On-topic unanswerable questions look answerable to the embedder (high similarity) and
    differ in the reader's margin over its no-answer logit: fitted with them as negatives
    the on-topic model scores a low-margin span lower than without, and wrong documents stay
    low."""
    from qa.training.calibrate import fit_calibration

    rng = np.random.default_rng(5)

    def row(kind, margin, rel):
        logit = rng.normal(6, 1)
        right = kind == "answerable" and rng.random() < 0.7
        return {"kind": kind, "title": "t", "spans": [{
            "logit": logit, "null": logit - margin, "relevance": rel, "place": 1,
            "em": float(right), "f1": float(right)}]}

    rows = ([row("answerable", rng.normal(4, 1.5), rng.normal(0.6, 0.1)) for _ in range(400)]
            + [row("unanswerable", rng.normal(0, 1.5), rng.normal(0.6, 0.1)) for _ in range(400)]
            + [row("wrong_document", rng.normal(3, 1.5), rng.normal(0.2, 0.1)) for _ in range(400)])
    plain = fit_calibration(rows, use_relevance=True, relevance_model="m")
    both = fit_calibration(rows, use_relevance=True, relevance_model="m",
                           topic_negatives=("wrong_document", "unanswerable"))
    assert both.topic_margin_weight > plain.topic_margin_weight
    low, high = (6.0, 6.0), (6.0, 2.0)  # (logit, null): margin 0 and margin 4
    assert both.on_topic(*low, 0.6) < 0.5 * plain.on_topic(*low, 0.6)
    assert both.on_topic(*high, 0.6) > 0.7
    assert both.on_topic(6.0, 3.0, 0.2) < 0.3  # wrong documents stay refused


def test_recalibrating_for_a_new_embedder_keeps_the_old_calibration_for_old_stores(tmp_path):
    """A reader recalibrated with a new default embedder keeps the calibration fitted with the
    old one, and stores built with the old embedder are scored with it (their similarities
    are on its scale); any other embedder gets the current one. Saved and loaded, unchanged."""
    from qa.reader import ReaderConfig

    old = Calibration(span_weight=0.2, topic_relevance_weight=9.0, threshold=0.33,
                      relevance_model="spanqa-retriever")
    new = Calibration(span_weight=0.3, topic_relevance_weight=7.0, threshold=0.29,
                      relevance_model="spanqa-retriever-2")
    cfg = ReaderConfig(calibration=old)
    cfg.set_calibration(new)
    assert cfg.calibration == new
    assert cfg.calibration_for("spanqa-retriever") == old
    assert cfg.calibration_for("spanqa-retriever-2") == new
    assert cfg.calibration_for("all-MiniLM-L6-v2") == new and cfg.calibration_for(None) == new
    cfg.save(tmp_path)
    again = ReaderConfig.load(tmp_path)
    assert again.calibration == new and again.other_calibrations == {"spanqa-retriever": old}
    again.set_calibration(Calibration(span_weight=0.4, topic_relevance_weight=7.0,
                                      relevance_model="spanqa-retriever-2"))  # refit: no copy
    assert list(again.other_calibrations) == ["spanqa-retriever"]


def test_the_refusal_margin_refuses_what_the_reader_rates_below_no_answer():
    """The calibrated rule refuses a confident span whose logit is far below its passage's
    no-answer logit; a caller's threshold replaces the whole rule (0 never abstains); older
    folders, without a margin, refuse by confidence alone; the margin survives JSON."""
    from qa.scoring import RawSpan, score_spans

    cal = Calibration(span_weight=0.5, bias=-2.0, threshold=0.2, refusal_margin=-1.0)
    conf = cal.confidence(8.0, 10.0)
    assert conf > 0.8  # the fitted confidence alone would answer
    assert cal.refuses(conf, 8.0, 10.0)  # margin -2 < -1
    assert not cal.refuses(cal.confidence(8.0, 8.5), 8.0, 8.5)  # margin -0.5
    assert not cal.refuses(conf, 8.0, 10.0, threshold=0.5)  # the caller's threshold alone
    assert cal.refuses(0.1, 9.0, 0.0)  # below the threshold, whatever the margin
    old = Calibration.from_dict({"span_weight": 0.5, "bias": -2.0, "threshold": 0.2})
    assert old.refusal_margin is None and not old.refuses(conf, 8.0, 10.0)
    for c in (cal, old):
        assert Calibration.from_dict(json.loads(json.dumps(c.to_dict()))) == c

    def spans(logit, null):
        return [[RawSpan(0, "Paris", 0, 5, logit, null), RawSpan(0, "...", 6, 9, logit + 1, null)]]

    (refused,) = score_spans(spans(8.0, 10.0), cal, None, 3)
    assert refused.abstained and refused.spans[0].text == "Paris"  # the guess is kept
    assert refused.no_answer_score == pytest.approx(1 - conf)
    (answered,) = score_spans(spans(8.0, 10.0), cal, 0.0, 3)
    assert not answered.abstained
    # a passage with nothing but punctuation to offer is refused even at threshold 0
    (empty,) = score_spans([[RawSpan(0, "...", 6, 9, 9.0, 0.0)]], cal, 0.0, 3)
    assert empty.abstained and not empty.spans


def test_the_margin_takes_what_the_budget_leaves():
    from qa.training.calibrate import choose_margin

    # answerable F1 falls by 1 point per unit of margin above -4; the threshold cost 0.5
    def at(m):
        if m is None:
            return {"answerable": {"f1": 80.0}}
        return {"answerable": {"f1": 79.5 - max(0.0, m + 4)}}

    grid = [x / 2 for x in range(-16, 17)]
    assert choose_margin(at, grid, 2.0) == -2.5
    assert choose_margin(at, grid, 0.5) == -4.0
    assert choose_margin(at, grid, 0.4) is None  # the threshold alone spent it


def test_calibrate_reader_can_spend_the_budget_on_the_margin(tiny_reader_dir, tmp_path):
    """On-topic unanswerable questions that differ from answerable ones only in the reader's
    margin: ``--refuse-by margin`` leaves the threshold at the wrong-document floor, fits a
    refusal margin within the F1 budget, refuses more of them than the confidence threshold
    does at the same budget, and writes a rule the reader then applies."""
    rng = np.random.default_rng(11)

    def row(kind, title, margin, rel):
        logit = rng.normal(6, 1)
        right = kind == "answerable" and rng.random() < 0.7
        return {"kind": kind, "title": title, "spans": [{
            "logit": logit, "null": logit - margin, "relevance": rel,
            "em": float(right), "f1": float(right)}]}

    rows = [row(k, t, rng.normal(m, 1.5), rng.normal(r, 0.1)) for t in ("A", "B") for _ in range(300)
            for k, m, r in (("answerable", 4, 0.6), ("unanswerable", 0, 0.6), ("wrong_document", 3, 0.2))]
    reports = calibrate_each_rule(tiny_reader_dir, rows, ("confidence", "margin"), tmp_path)
    assert all(r["cross_fitted"]["articles"] == 2 for r in reports.values())
    conf, marg = reports["confidence"], reports["margin"]
    assert conf["calibration"]["refusal_margin"] is None
    m = marg["calibration"]["refusal_margin"]
    assert m is not None and marg["calibration"]["threshold"] <= conf["calibration"]["threshold"]
    assert (marg["at_threshold"]["unanswerable"]["abstain_rate"]
            > conf["at_threshold"]["unanswerable"]["abstain_rate"] + 0.1)
    assert "refusal_margin" in marg["curve"][0]
    from qa.reader import ReaderConfig

    cal = ReaderConfig.load(str(tmp_path / "margin")).calibration
    assert cal.refusal_margin == m
    assert cal.refuses(0.99, 5.0, 5.0 - m + 0.5) and not cal.refuses(0.99, 5.0, 5.0 - m - 0.5)


def test_refusal_curve_compares_the_two_rules_on_saved_rows(tmp_path, capsys):
    """eval.refusal_curve: on rows where only the reader's margin tells unanswerable questions
    from answerable ones, the margin rule refuses more of them within the budget than the
    confidence threshold; a bad spec is a one-line error."""
    from eval.refusal_curve import main as refusal_curve

    rng = np.random.default_rng(3)
    rows = []
    for kind, margin, rel in (("answerable", 4, 0.6), ("unanswerable", 0, 0.6), ("wrong_document", 3, 0.2)):
        for _ in range(300):
            logit, m = rng.normal(6, 1), rng.normal(margin, 1.5)
            right = kind == "answerable" and rng.random() < 0.7
            rows.append({"kind": kind, "title": "t", "spans": [{
                "logit": logit, "null": logit - m, "relevance": rng.normal(rel, 0.1), "place": 1,
                "em": float(right), "f1": float(right)}]})
    saved = tmp_path / "rows.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from qa.training.calibrate import fit_calibration

    folder = tmp_path / "reader"
    folder.mkdir()
    cal = fit_calibration(rows, True, "e")
    (folder / READER_CONFIG_FILE).write_text(json.dumps({"calibration": cal.to_dict()}))
    png = tmp_path / "curve.png"
    assert refusal_curve([f"{saved}:{folder}:tiny", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    by = {line.split()[2]: [float(x) for x in line.split()[3:] if x != "/"]
          for line in out.splitlines() if line.startswith("  tiny")}
    assert by["margin"][1] > by["confidence"][1] + 10  # within 2 F1
    assert all(a <= b for a, b in zip(by["margin"], by["margin"][1:]))  # more budget, more refused
    assert png.stat().st_size > 0
    assert refusal_curve([f"{saved}"]) == 2
    assert "ROWS:READER" in capsys.readouterr().err
    saved.write_text('{"kind": "answerable"}\n')  # rows without spans: an error, not a traceback
    assert refusal_curve([f"{saved}:{folder}"]) == 2
    assert "not calibrate-reader rows" in capsys.readouterr().err


def test_retrieved_cases_are_the_same_in_every_process(tmp_path):
    """The held-out cases (their order and the wrong documents drawn) depend on the seed alone,
    not on the process's string hashing, so a calibration run can be repeated and its saved
    rows matched to the cases."""
    data = {"version": "v2.0", "data": [{"title": t, "paragraphs": [
        {"context": f"The {t.lower()} report {i} says the figure is {10 * i}. " * 2,
         "qas": [{"id": f"{t}{i}", "question": f"What figure does the {t.lower()} report {i} give?",
                  "answers": [{"text": str(10 * i), "answer_start": 0}]}]}
        for i in range(3)]} for t in ("Rivers", "Mountains", "Lakes", "Deserts", "Forests")]}
    path = tmp_path / "held.json"
    path.write_text(json.dumps(data))
    script = (
        "import json, random, sys\n"
        "from index.embedder import shared_embedder\n"
        "from qa.squad import load_squad\n"
        "from qa.training.calibrate import build_retrieved_cases\n"
        f"cases = build_retrieved_cases(load_squad({str(path)!r}), shared_embedder(), random.Random(7), 100, 2)\n"
        "print(json.dumps([[c.kind, c.title, c.question, c.passages] for c in cases]))\n")
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        outs.add(run.stdout.strip().splitlines()[-1])
    assert len(outs) == 1
    cases = json.loads(outs.pop())
    assert len(cases) == 15 + 15 and {c[0] for c in cases} == {"answerable", "wrong_document"}
