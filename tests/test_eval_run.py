"""``spanqa eval`` end to end on small hand-made data: files, report with plots, compare."""
import json

import pytest

from qa.cli import main

DATA = {"version": "v2.0", "data": [
    {"title": "Tower", "paragraphs": [
        {"context": "The Eiffel Tower is in Paris. It was finished in 1889.",
         "qas": [{"id": "q1", "question": "Where is the Eiffel Tower?",
                  "answers": [{"text": "Paris", "answer_start": 23}]},
                 {"id": "q2", "question": "When was it finished?",
                  "answers": [{"text": "1889", "answer_start": 49}]}]},
        {"context": "Its height is 330 metres.",
         "qas": [{"id": "q3", "question": "Who painted it red?", "answers": [], "is_impossible": True}]}]},
    {"title": "Mountain", "paragraphs": [
        {"context": "Kilimanjaro is in Tanzania. Its summit is Uhuru Peak.",
         "qas": [{"id": "q4", "question": "What is the summit called?",
                  "answers": [{"text": "Uhuru Peak", "answer_start": 42}]}]}]}]}


@pytest.fixture()
def data(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(DATA))
    return p


@pytest.mark.parametrize("extra", [[], ["--reader-only"], ["--scope", "corpus"]])
def test_eval_writes_every_file(data, tmp_path, tiny_reader_dir, extra, capsys):
    out = tmp_path / "run"
    assert main(["eval", str(data), "--out", str(out), "--reader", str(tiny_reader_dir),
                 "--latency-sample", "2", "--threshold", "0.3", *extra]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert set(preds) == {"q1", "q2", "q3", "q4"}
    rows = [json.loads(l) for l in (out / "per_question.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == set(preds)
    for r in rows:
        assert {"question", "golds", "prediction", "score", "em", "f1", "latency_ms"} <= set(r)
        assert preds[r["id"]] == r["prediction"]
        if "--reader-only" not in extra:
            assert "gold_rank" in r and "retrieved" in r
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["threshold"] == 0.3 and "peak_rss_mb" in m
    assert m["refusal_margin"] is None  # a threshold given replaces the calibrated rule
    report = (out / "report.md").read_text()
    for png in ("threshold.png", "latency.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
    if "--reader-only" not in extra:
        assert "recall@1" in m and (out / "recall_at_k.png").exists()
    assert "Most confident errors" in report


def test_eval_builds_its_indexes_with_the_embedder_asked_for(data, tmp_path, tiny_reader_dir,
                                                             monkeypatch):
    """``--embedder`` names the embedder of every index the run builds, and the run records
    it; without it the default is recorded."""
    from index.embedder import BASE_EMBEDDER, DEFAULT_EMBEDDER
    from index.store import DocumentStore

    used = []
    real_add = DocumentStore.add

    def add(self, docs, **kw):
        used.append(self.embedder.name)
        return real_add(self, docs, **kw)

    monkeypatch.setattr(DocumentStore, "add", add)
    for extra, want in (([], DEFAULT_EMBEDDER), (["--embedder", BASE_EMBEDDER], BASE_EMBEDDER)):
        used.clear()
        out = tmp_path / f"run{len(extra)}"
        assert main(["eval", str(data), "--out", str(out), "--reader", str(tiny_reader_dir),
                     "--latency-sample", "0", *extra]) == 0
        assert used and set(used) == {want}
        assert json.loads((out / "metrics.json").read_text())["config"]["embedder"] == want


def test_gold_passage_rank_is_found_for_a_known_layout(data, tmp_path, tiny_reader_dir):
    from eval.runner import EvalConfig, evaluate

    rows, _ = evaluate(EvalConfig(data=str(data), reader=str(tiny_reader_dir), passages=3,
                                  threshold=0.0), progress=False)
    by = {r["id"]: r for r in rows}
    # one-paragraph article: its only chunk holds the answer, at rank 1
    assert by["q4"]["gold_rank"] == 1
    assert by["q3"]["golds"] == []


def test_compare_prints_deltas_and_flips(data, tmp_path, tiny_reader_dir, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, t in ((a, "0.0"), (b, "1.0")):
        assert main(["eval", str(data), "--out", str(out), "--reader", str(tiny_reader_dir),
                     "--latency-sample", "0", "--threshold", t]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "abstain_rate" in out and "delta" in out
    # the same abstention count compares reading apart from the thresholds: N=0 for both runs
    assert "least confident" in out and "N=0" in out
    rows_b = [json.loads(l) for l in (b / "per_question.jsonl").read_text().splitlines()]
    assert all(r["prediction"] == "" for r in rows_b)  # threshold 1.0 abstains on everything


def test_runs_compared_at_the_same_number_of_abstentions():
    from eval.compare import at_abstentions

    rows = [{"best_text": "Paris", "best_score": 0.9, "golds": ["Paris"]},
            {"best_text": "Lyon", "best_score": 0.2, "golds": ["Nice"]},
            {"best_text": "1990", "best_score": 0.1, "golds": []},       # unanswerable
            {"best_text": "the red car", "best_score": 0.5, "golds": ["red car"]}]
    assert at_abstentions(rows, 0) == (50.0, 50.0)      # Paris, "the red car" (normalised)
    assert at_abstentions(rows, 1) == (75.0, 75.0)      # refusing the unanswerable one is right
    assert at_abstentions(rows, 2) == (75.0, 75.0)      # refusing the wrong "Lyon" costs nothing
    assert at_abstentions(rows, 4) == (25.0, 25.0)      # only the refusal of the unanswerable


def test_eval_refuses_a_non_squad_file(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text("[1, 2]")
    assert main(["eval", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "not a SQuAD json" in capsys.readouterr().err


def test_the_article_question_set_is_valid():
    from pathlib import Path

    from qa.squad import load_squad, questions_of

    arts = load_squad(Path(__file__).resolve().parents[1] / "eval" / "questions" / "us_weapons_in_russia.json")
    qs = questions_of(arts)
    assert len(qs) >= 40 and sum(q.is_impossible for q in qs) >= 8
    for q in qs:
        for text, start in q.answers:
            assert q.context[start:start + len(text)] == text


def test_holdout_set_keeps_every_paragraph_of_the_held_out_articles(tmp_path):
    from eval.holdout_set import main as holdout_main

    arts = [{"title": f"A{i}", "paragraphs": [
        {"context": f"Paragraph {j} of article {i}.", "qas": [
            {"id": f"{i}-{j}-{k}", "question": f"Q {i} {j} {k}?", "is_impossible": False,
             "answers": [{"text": "article", "answer_start": 15}]} for k in range(3)]}
        for j in range(4)]} for i in range(41)]  # articles 0, 20 and 40 are held out
    src = tmp_path / "squad_train_v1.1.json"
    src.write_text(json.dumps({"data": arts}))
    out = tmp_path / "ho.json"
    assert holdout_main(["--source", str(src), "--out", str(out), "--questions", "10"]) == 0
    data = json.loads(out.read_text())["data"]
    assert {a["title"] for a in data} <= {"A0", "A20", "A40"}
    assert all(len(a["paragraphs"]) == 4 for a in data)  # the whole article is searched
    ids = [q["id"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    assert len(ids) == len(set(ids)) == 10
    again = tmp_path / "again.json"
    holdout_main(["--source", str(src), "--out", str(again), "--questions", "10"])
    assert again.read_text() == out.read_text()  # seeded


def _run(d, f1s, best=None):
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"f1": 100 * sum(f1s) / len(f1s)}))
    rows = [{"id": f"q{i}", "question": "q", "golds": ["x y"], "prediction": "x y" if f else "",
             "em": f, "f1": f, "abstained": False,
             "best_text": (best or ["x y" if f else "z"] * len(f1s))[i], "best_score": 0.5}
            for i, f in enumerate(f1s)]
    (d / "per_question.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def test_compare_gives_the_f1_difference_with_a_paired_interval(tmp_path, capsys):
    from eval.compare import compare, paired_bootstrap

    same = paired_bootstrap([0, 100, 50], [0, 100, 50])
    assert (same["mean"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    up = paired_bootstrap([0] * 10, [100] * 10)
    assert (up["mean"], up["lo"], up["hi"]) == (100.0, 100.0, 100.0)
    mixed = paired_bootstrap([0] * 50 + [100] * 50, [100] * 55 + [0] * 45)
    assert mixed["mean"] == 5.0 and mixed["lo"] < 0 < mixed["hi"]  # +100 x50, 0 x5, -100 x45
    assert paired_bootstrap([0, 1, 0, 1], [1, 1, 0, 0]) == paired_bootstrap([0, 1, 0, 1],
                                                                           [1, 1, 0, 0])
    # pairing matters: B better on every question by a little is sure, though runs overlap
    a = [float(i % 7) for i in range(200)]
    tight = paired_bootstrap(a, [x + 1 for x in a])
    assert tight["lo"] == tight["hi"] == 1.0
    ra = _run(tmp_path / "a", [1.0, 0.0, 0.0, 1.0])
    rb = _run(tmp_path / "b", [1.0, 1.0, 0.0, 1.0])
    c = compare(ra, rb)
    assert c["f1_diff"]["as run"]["mean"] == 25.0 and c["f1_diff"]["as run"]["n"] == 4
    assert main(["eval", "--compare", str(ra), str(rb)]) == 0
    assert "+25.00" in capsys.readouterr().out


def test_bench_ask_refuses_bad_counts_with_one_line_and_loads_nothing():
    import subprocess
    import sys

    for bad in (["--n", "0"], ["--cold-runs", "-1"], ["--passages", "0"]):
        done = subprocess.run([sys.executable, "-m", "eval.bench_ask", *bad],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "--cold-runs must be 0 or more" in done.stderr
