"""--reader cascade: the first reader answers what it is sure of, the second the rest, and
each answer says which one answered (with that reader's own calibration)."""
import json

import pytest

import qa.pipeline as pipeline
from qa.errors import OptionError
from qa.pipeline import DocumentQA

TEXT = "The bridge over the Vltava was opened in 1932 by Mayor Lena Ruiz. It carries trams."


@pytest.fixture()
def cascade_with_cut(tmp_path, monkeypatch, tiny_reader_dir, embedder):
    def make(cut: float, first: str = "first"):
        import shutil

        a, b = tmp_path / "first", tmp_path / "then"
        for d in (a, b):
            if not d.exists():
                shutil.copytree(tiny_reader_dir, d)
        spec = tmp_path / "cascade.json"
        spec.write_text(json.dumps({"first": str(a), "then": str(b), "cut": cut}))
        monkeypatch.setattr(pipeline, "CASCADE_FILE", spec)
        return DocumentQA.from_texts([TEXT], ids=["bridge.txt"], reader="cascade"), a, b
    return make


def test_sure_answers_stay_with_the_first_reader_the_rest_go_on(cascade_with_cut):
    qa, first, then = cascade_with_cut(0.0)  # every answer is sure enough
    a = qa.ask("Who opened the bridge?", threshold=0.0)
    assert a.reader == str(first)
    qa, first, then = cascade_with_cut(1.01)  # none is
    a = qa.ask("Who opened the bridge?", threshold=0.0)
    assert a.reader == str(then) and a.to_dict()["reader"] == str(then)
    assert qa.to_dict()["cascade"]["cut"] == 1.01
    mixed = qa.ask_many(["Who opened the bridge?", "What does it carry?"], threshold=0.0)
    assert {x.reader for x in mixed} == {str(then)}


def test_what_the_first_reader_would_refuse_goes_on(cascade_with_cut):
    """However sure its confidence, an answer the first reader's calibrated rule refuses (here
    by its refusal margin) is read again by the second reader."""
    from qa.reader import READER_CONFIG_FILE

    qa, first, then = cascade_with_cut(0.0)  # every confidence is sure enough
    cfg = json.loads((first / READER_CONFIG_FILE).read_text()) if (first / READER_CONFIG_FILE).exists() else {}
    cfg["calibration"] = {**cfg.get("calibration", {}), "threshold": 0.0, "refusal_margin": 1e6}
    (first / READER_CONFIG_FILE).write_text(json.dumps(cfg))
    qa, first, then = cascade_with_cut(0.0)
    assert qa.ask("Who opened the bridge?").reader == str(then)
    assert qa.ask("Who opened the bridge?", threshold=0.0).reader == str(first)


def test_a_broken_cascade_file_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "cascade.json"
    bad.write_text("{}")
    monkeypatch.setattr(pipeline, "CASCADE_FILE", bad)
    with pytest.raises(OptionError, match="cascade"):
        pipeline.cascade_spec()


def test_the_cut_is_simulated_from_a_fast_and_a_default_run():
    from eval.tune_cascade import simulate

    def row(text, conf, f1):
        return {"best_text": text, "best_score": conf, "f1": f1, "em": float(f1 == 1.0)}

    fast = {"a": row("x", 0.9, 1.0), "b": row("y", 0.3, 0.0), "c": row("", 0.0, 0.0)}
    full = {"a": row("x", 0.8, 0.5), "b": row("z", 0.7, 1.0), "c": row("w", 0.6, 1.0)}
    kept_a = simulate(fast, full, 0.5)  # the fast reader keeps "a" only
    assert kept_a["fast_share"] == pytest.approx(100 / 3) and kept_a["f1"] == pytest.approx(100.0)
    alone = simulate(fast, full, 2.0)  # nothing kept: the default reader's F1
    assert alone["fast_share"] == 0 and alone["f1"] == pytest.approx(250 / 3)
    # an empty fast answer is never kept, whatever the cut
    assert simulate(fast, full, 0.0)["fast_share"] == pytest.approx(200 / 3)
