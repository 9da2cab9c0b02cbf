"""The no-answer feature study's pieces: the refusal-within-budget figure, features, cross-fitting."""
import json

import numpy as np
import pytest

from eval.noanswer_features import cross_fitted, features, main, read_rows, refused_within, sentence_of, study


def test_refused_within_stops_at_the_f1_budget():
    # answerable: scores .9 .8 .3 with F1 1, 1, .6 (mean 86.67); unanswerable: .2 .5 .85
    scores = [0.9, 0.8, 0.3, 0.2, 0.5, 0.85]
    f1 = [1.0, 1.0, 0.6, 0.0, 0.0, 0.0]
    answerable = [True, True, True, False, False, False]
    # no budget: every answerable question must stay answered, so only .2 is refused
    assert refused_within(scores, f1, answerable, 0.0) == (pytest.approx(1 / 3), 0.3)
    # refusing the .3 answer costs exactly 20 points (.6 / 3): then .2 and .5 go too
    refused, t = refused_within(scores, f1, answerable, 20.0)
    assert refused == pytest.approx(2 / 3) and t == 0.8
    assert refused_within(scores, f1, answerable, 19.9)[0] == pytest.approx(1 / 3)


def test_refused_within_needs_both_kinds():
    with pytest.raises(ValueError):
        refused_within([0.1, 0.2], [1.0, 1.0], [True, True], 2.0)


def test_sentence_of_takes_every_sentence_the_span_touches():
    text = "Warsaw is old. It was rebuilt in 1945. Krakow is older."
    assert sentence_of(text, text.index("1945"), text.index("1945") + 4) == "It was rebuilt in 1945."
    start = text.index("rebuilt")
    assert sentence_of(text, start, text.index("older")) == text[text.index("It"):]


def _row(question, sentence, **kw):
    row = {"question": question, "sentence": sentence, "logits": [3.0, 1.0], "null": -2.0,
           "s_logit": 2.5, "s_null": -1.0, "s_same": True, "text": "1945"}
    row.update(kw)
    return row


def test_features_see_names_the_sentence_lacks_and_negation():
    f = features(_row("When was Warsaw not rebuilt by Poland?", "Warsaw was rebuilt in 1945."))
    assert f["margin"] == 5.0 and f["gap"] == 2.0 and f["s_margin"] == 3.5
    assert f["missing"] == 1.0  # Poland; "When" is the question's first word, not a name
    assert f["negation"] == 1.0
    assert f["coverage"] == 0.5  # of warsaw, not, rebuilt, poland the sentence has two
    g = features(_row("When wasn't it rebuilt?", "It was rebuilt in 1945.", b_logit=1.0,
                      b_null=0.0, b_text="1946"))
    assert g["negation"] == 1.0 and g["b_margin"] == 1.0 and g["agree"] == 0.0
    assert features(_row("When was it rebuilt?", "It was rebuilt."))["negation"] == 0.0


def test_cross_fitted_scores_never_see_their_own_group():
    # groups a and b: label follows x; group c: the opposite. A fit that saw c's labels would
    # score c's rows by them; cross-fitted, c is scored by what a and b taught.
    x = np.array([[v] for v in (-2.0, -1.0, 1.0, 2.0) * 3])
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0], bool)
    groups = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    s = cross_fitted(x, y, groups)
    assert s[8] < s[9] < 0.5 < s[10] < s[11]


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        answerable = i % 2 == 0
        margin = rng.normal(3.0 if answerable else -3.0, 0.5)
        rows.append(_row("Who rebuilt it?", "It was rebuilt.", title="ab"[i % 4 // 2],
                         answerable=answerable, f1=1.0 if answerable else 0.0,
                         logits=[margin, margin - 1], null=0.0))
    return rows


def test_study_refuses_all_when_the_margin_separates_the_kinds():
    results = {r["features"]: r["refused"] for r in study(_rows(), budgets=(0.0,))}
    assert results["margin alone, no fit"] == [1.0]
    assert results["span logit, margin over no-answer"] == [1.0]
    assert "+ second reader's logit and margin" not in results  # no second reader's logits


def test_main_refits_saved_rows_and_reports_a_missing_file(tmp_path, capsys):
    saved = tmp_path / "rows.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert main(["--from-rows", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "40 questions (20 answerable" in out and "| margin alone, no fit | 100.0%" in out
    assert main(["--from-rows", str(tmp_path / "nope.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_read_rows_gives_every_feature_the_study_needs(tiny_reader):
    from qa.squad import SquadQuestion

    ctx = "Warsaw was rebuilt after the war. The old town opened in 1955."
    qs = [SquadQuestion("1", "When did the old town open?", ctx, "Warsaw", 0, [("1955", 57)]),
          SquadQuestion("2", "When did the new town open?", ctx, "Warsaw", 0, [])]
    rows = read_rows(tiny_reader, qs, second=tiny_reader, batch=1)
    assert [r["answerable"] for r in rows] == [True, False]
    for r in rows:
        assert r["text"] in ctx and r["sentence"] in ctx
        assert r["b_text"] == r["text"]  # the same reader twice agrees with itself
        assert set(features(r)) >= {"margin", "s_margin", "coverage", "b_margin", "agree"}
    assert rows[1]["f1"] == 0.0  # nothing is right for an unanswerable question
