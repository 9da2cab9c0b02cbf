"""The SQuAD metric and the evaluation aggregates on hand-made cases."""
import pytest

from eval.metrics import at_threshold, ece, reliability, summarize
from qa.metrics import exact_match, normalize_answer, score, token_f1


def test_normalisation_follows_the_official_rules():
    assert normalize_answer("The  Cat, an apple & A dog!") == "cat apple dog"
    assert normalize_answer("Theory") == "theory"  # 'the' only as a word


def test_exact_match_and_f1():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert token_f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("London", "Paris") == 0.0
    assert score("1889", ["in 1889", "1889"]) == (1.0, 1.0)  # best over golds
    em, f1 = score("in 1889", ["1889"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)


def test_unanswerable_scores_only_the_empty_answer():
    assert score("", []) == (1.0, 1.0)
    assert score("Paris", []) == (0.0, 0.0)
    assert score("", ["Paris"]) == (0.0, 0.0)


def _row(golds, pred, best, conf, rank=None, lat=10.0):
    em, f1 = score(pred, golds)
    return {"id": str(id(golds)) + pred, "golds": golds, "prediction": pred, "best_text": best,
            "best_score": conf, "em": em, "f1": f1, "latency_ms": lat, "gold_rank": rank,
            "retrieved": ["c1", "c2", "c3"]}


def test_summary_splits_abstention_and_retrieval():
    rows = [
        _row(["Paris"], "Paris", "Paris", 0.9, rank=1, lat=10),
        _row(["1889"], "1890", "1890", 0.6, rank=3, lat=20),
        _row(["Oslo"], "", "Bergen", 0.2, rank=None, lat=30),
        _row([], "", "Rome", 0.1, lat=40),
        _row([], "Milan", "Milan", 0.8, lat=50),
    ]
    m = summarize(rows, seconds=2.0)
    assert m["n"] == 5 and m["n_has_answer"] == 3 and m["n_no_answer"] == 2
    assert m["em"] == pytest.approx(100 * 2 / 5)
    assert m["has_ans_em"] == pytest.approx(100 / 3)
    assert m["no_ans_acc"] == pytest.approx(50.0)
    assert m["abstain_rate"] == pytest.approx(40.0)
    assert m["abstain_precision"] == pytest.approx(50.0)  # 2 abstentions, 1 on an unanswerable
    assert m["abstain_recall"] == pytest.approx(50.0)  # 1 of 2 unanswerables
    assert m["recall@1"] == pytest.approx(100 / 3) and m["recall@3"] == pytest.approx(200 / 3)
    assert "recall@5" not in m  # only 3 passages were retrieved
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["latency_ms"]["p50"] == 30 and m["questions_per_second"] == 2.5


def test_threshold_sweep_rescoring():
    rows = [_row(["Paris"], "Paris", "Paris", 0.9), _row([], "Rome", "Rome", 0.3)]
    assert at_threshold(rows, 0.0)["f1"] == pytest.approx(50.0)
    assert at_threshold(rows, 0.5)["f1"] == pytest.approx(100.0)
    assert at_threshold(rows, 0.95)["abstain_rate"] == pytest.approx(100.0)


def test_reliability_and_ece():
    rows = [_row(["a"], "a", "a", 0.95), _row(["a"], "b", "b", 0.95),
            _row(["a"], "a", "a", 0.15), _row(["a"], "b", "b", 0.15)]
    rel = reliability(rows)
    assert [(b["n"], b["accuracy"]) for b in rel] == [(2, 0.5), (2, 0.5)]
    assert ece(rows) == pytest.approx(0.5 * 0.35 + 0.5 * 0.45)
