"""The refusal probe on the answering path (qa/probe.py): every span gets the probe's logit from
the window it was found in, the same in torch and ONNX; a calibrated probe threshold refuses;
``calibrate-reader --refuse-by probe`` chooses it with the confidence threshold; a folder whose
probe is missing or broken says so."""
import json
import shutil

import numpy as np
import pytest

from qa import DocumentQA
from qa.calibration import Calibration
from qa.errors import ModelNotFoundError
from qa.probe import PROBE_CONFIG, PROBE_FILE, RefusalProbe
from qa.reader import READER_CONFIG_FILE, ExtractiveReader, ReaderConfig
from qa.scoring import RawSpan, score_spans
from qa.training.calibrate import choose_probe
from qa.training.calibrate import main as calibrate_main
from tests.conftest import calibrate_each_rule

QUESTION = "When was the tower built?"
PASSAGES = ["The Eiffel Tower is in Paris. It was built in 1889 by Gustave Eiffel's company for "
            "the World's Fair, and for forty years it was the tallest structure in the world.",
            "Gustave Eiffel's engineers Maurice Koechlin and Emile Nouguier designed the tower."]
HIDDEN = 32  # the tiny reader's (tests/conftest.py)


def _write_probe(folder, layers=(1, 2), seed=0, bias=0.1, hidden=HIDDEN):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    save_file({"state_weight": rng.normal(size=len(layers) * hidden).astype(np.float32),
               "scalar_weight": np.array([0.3, -0.5], np.float32),
               "bias": np.array([bias], np.float32)}, str(folder / PROBE_FILE))
    (folder / PROBE_CONFIG).write_text(json.dumps({"layers": list(layers), "hidden": hidden}))


@pytest.fixture()
def probed(tiny_reader_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPANQA_RUNTIME", raising=False)
    folder = tmp_path / "reader"
    shutil.copytree(tiny_reader_dir, folder)
    _write_probe(folder)
    return folder


def _manual_probe_scores(folder, spans):
    """The probe logit of each span, from transformers' own hidden states (not spanqa's hooks)
    of the window each span is read in: one window per passage here."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    w = load_file(str(folder / PROBE_FILE))
    out = []
    for s in spans:
        enc = tok(QUESTION, PASSAGES[s.passage], return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states
        states = torch.cat([h[1][0, 0], h[2][0, 0]]).numpy()
        out.append(float(states @ w["state_weight"] + w["scalar_weight"][0] * s.logit
                         + w["scalar_weight"][1] * (s.logit - s.null_logit) + w["bias"][0]))
    return out


def test_every_span_gets_the_probe_of_its_window_in_torch_and_onnx(probed):
    pytest.importorskip("onnxruntime")
    got = {}
    for runtime in ("torch", "onnx"):
        reader = ExtractiveReader(str(probed), runtime=runtime)
        (spans,) = reader.read_spans([QUESTION], [PASSAGES])
        assert reader.runtime == runtime and reader.probe.layers == (1, 2)
        assert spans and all(s.probe is not None for s in spans)
        got[runtime] = {(s.passage, s.char_start, s.char_end): s.probe for s in spans}
        if runtime == "torch":
            np.testing.assert_allclose([s.probe for s in spans],
                                       _manual_probe_scores(probed, spans), atol=1e-4)
    assert got["torch"].keys() == got["onnx"].keys()
    np.testing.assert_allclose(list(got["onnx"].values()), list(got["torch"].values()), atol=1e-4)
    # the reader's answers carry it too
    (result,) = ExtractiveReader(str(probed)).predict_many([QUESTION], [PASSAGES], top_k=2)
    assert result.spans[0].probe == pytest.approx(
        got["torch"][(result.spans[0].passage, result.spans[0].char_start,
                      result.spans[0].char_end)], abs=1e-4)


def test_a_folder_without_a_probe_reads_as_before(tiny_reader_dir):
    reader = ExtractiveReader(str(tiny_reader_dir), runtime="torch")
    (spans,) = reader.read_spans([QUESTION], [PASSAGES])
    assert reader.probe is None and spans and all(s.probe is None for s in spans)


def test_onnx_exports_with_states_under_their_own_key(probed):
    from qa.onnx_backend import export_key

    assert export_key(probed, "onnx") != export_key(probed, "onnx", (1, 2)) != \
        export_key(probed, "onnx", (2,))


def _set_calibration(folder, **fields):
    cfg = ReaderConfig.load(folder)
    cfg.calibration = Calibration(**{**cfg.calibration.to_dict(), **fields})
    cfg.save(folder)


def test_the_probe_threshold_refuses_through_the_python_api(probed):
    _set_calibration(probed, threshold=0.0, span_weight=0.0, bias=5.0, probe_threshold=-1e9)
    def ask():  # a reader of its own: the shared one would keep the first calibration
        return DocumentQA.from_texts([" ".join(PASSAGES)],
                                     reader=ExtractiveReader(str(probed))).ask(QUESTION)

    assert not ask().abstained
    _set_calibration(probed, probe_threshold=1e9)
    assert ask().abstained


def test_a_calibration_that_needs_a_missing_probe_fails_to_load(probed):
    _set_calibration(probed, probe_threshold=0.5)
    (probed / PROBE_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match="half|without the other"):
        ExtractiveReader(str(probed)).warm_up()
    (probed / PROBE_CONFIG).unlink()
    with pytest.raises(ModelNotFoundError, match="refuses by a refusal probe"):
        ExtractiveReader(str(probed)).warm_up()


def test_a_probe_that_does_not_match_its_config_is_refused(probed):
    _write_probe(probed, layers=(1, 2), hidden=HIDDEN + 1)
    (probed / PROBE_CONFIG).write_text(json.dumps({"layers": [1, 2], "hidden": HIDDEN}))
    with pytest.raises(ModelNotFoundError, match="does not match"):
        RefusalProbe.load(probed)
    (probed / PROBE_CONFIG).write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="cannot be read"):
        RefusalProbe.load(probed)


def test_a_probe_reading_a_layer_the_reader_lacks_fails_clearly(probed):
    from qa.errors import SpanQAError

    _write_probe(probed, layers=(1, 5))
    with pytest.raises(SpanQAError, match="within the reader's 1..2"):
        ExtractiveReader(str(probed), runtime="torch").read_spans([QUESTION], [PASSAGES])


def test_scoring_refuses_below_the_probe_threshold_unless_the_caller_sets_one():
    cal = Calibration(span_weight=0.5, bias=-2.0, threshold=0.2, probe_threshold=0.0)
    spans = [[RawSpan(0, "Paris", 0, 5, 9.0, 0.0, probe=-0.5)]]
    (refused,) = score_spans(spans, cal, None, 3)
    assert refused.abstained and refused.spans[0].probe == -0.5
    (answered,) = score_spans(spans, cal, 0.0, 3)  # the caller's threshold replaces the rule
    assert not answered.abstained
    (kept,) = score_spans([[RawSpan(0, "Paris", 0, 5, 9.0, 0.0, probe=0.5)]], cal, None, 3)
    assert not kept.abstained
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert Calibration.from_dict({"threshold": 0.2}).probe_threshold is None


def test_choose_probe_spends_the_budget_where_it_refuses_most():
    # unanswerable refusals grow with both thresholds; F1 falls 1 point per 0.1 of threshold
    # above 0.3 and 1 point per unit of probe threshold above 0
    def at(t, u):
        wrong = 0.5 if t < 0.3 else 0.98
        f1 = 80.0 - (10 * max(0.0, t - 0.3) if t else 0) - (max(0.0, u) if u is not None else 0)
        unans = (0.1 if t else 0) + 0.3 * max(0.0, t - 0.3) + (0.2 * max(0.0, u) if u is not None else 0)
        return {"answerable": {"f1": f1}, "unanswerable": {"abstain_rate": unans},
                "wrong_document": {"abstain_rate": wrong}}

    grid = [round(x * 0.05, 2) for x in range(20)]
    t, u = choose_probe(at, grid, list(np.linspace(-3, 7, 101)), 0.97, 2.0)
    # the probe buys 0.2 a point, the threshold 0.03: all the budget goes to the probe
    assert t == 0.3 and u == pytest.approx(2.0, abs=0.051)
    t, u = choose_probe(at, grid, [5.0, 6.0], 0.97, 2.0)  # no probe threshold fits the budget
    assert (t, u) == (0.3, None)


def test_calibrate_reader_can_spend_the_budget_on_the_probe(probed, tmp_path):
    """Unanswerable questions the reader's scores cannot tell from answerable ones, but the
    probe can: ``--refuse-by probe`` refuses far more of them than the confidence threshold at
    the same budget, and the reader then applies the rule it wrote."""
    rng = np.random.default_rng(5)

    def row(kind, title, probe_mean, rel):
        logit = rng.normal(6, 1)
        right = kind == "answerable" and rng.random() < 0.7
        span = {"logit": logit, "null": logit - 3, "relevance": rel, "em": float(right),
                "f1": float(right), "probe": rng.normal(probe_mean, 1.0)}
        return {"kind": kind, "title": title, "spans": [span]}

    rows = [row(k, t, p, rng.normal(r, 0.1)) for t in ("A", "B") for _ in range(300)
            for k, p, r in (("answerable", 3, 0.6), ("unanswerable", -1, 0.6),
                            ("wrong_document", 2, 0.2))]
    reports = calibrate_each_rule(probed, rows, ("confidence", "probe"), tmp_path)
    conf, prob = reports["confidence"], reports["probe"]
    assert conf["calibration"]["probe_threshold"] is None
    u = prob["calibration"]["probe_threshold"]
    assert u is not None and "probe_threshold" in prob["curve"][0]
    assert (prob["at_threshold"]["unanswerable"]["abstain_rate"]
            > conf["at_threshold"]["unanswerable"]["abstain_rate"] + 0.3)
    assert prob["cross_fitted"]["unanswerable"]["abstain_rate"] > 0.5
    cal = ReaderConfig.load(tmp_path / "probe").calibration
    assert cal.probe_threshold == u
    assert cal.refuses(0.99, 5.0, 2.0, probe=u - 0.1) and not cal.refuses(0.99, 5.0, 2.0, probe=u + 0.1)


def test_refusing_by_probe_needs_rows_with_probe_scores(tiny_reader_dir, tmp_path):
    saved = tmp_path / "rows.jsonl"
    saved.write_text(json.dumps({"kind": "answerable", "title": "A", "spans": [
        {"logit": 5.0, "null": 1.0, "relevance": 0.5, "em": 1.0, "f1": 1.0}]}) + "\n")
    reader = tmp_path / "reader"
    shutil.copytree(tiny_reader_dir, reader)
    before = (reader / READER_CONFIG_FILE).exists()
    with pytest.raises(SystemExit):
        calibrate_main(["--reader", str(reader), "--from-rows", str(saved), "--refuse-by", "probe"])
    with pytest.raises(SystemExit):  # and a folder without a probe stops before reading
        calibrate_main(["--reader", str(reader), "--data", str(saved), "--refuse-by", "probe"])
    assert (reader / READER_CONFIG_FILE).exists() == before


def test_refusal_curve_draws_the_probe_rule_from_rows_that_carry_it(tmp_path, capsys):
    from eval.refusal_curve import frontier
    from eval.refusal_curve import main as refusal_curve
    from qa.training.calibrate import fit_calibration

    rng = np.random.default_rng(9)
    rows = []
    for kind, probe_mean, rel in (("answerable", 3, 0.6), ("unanswerable", -1, 0.6),
                                  ("wrong_document", 2, 0.2)):
        for _ in range(300):
            logit = rng.normal(6, 1)
            right = kind == "answerable" and rng.random() < 0.7
            rows.append({"kind": kind, "title": "t", "spans": [{
                "logit": logit, "null": logit - 3, "relevance": rng.normal(rel, 0.1), "place": 1,
                "em": float(right), "f1": float(right), "probe": rng.normal(probe_mean, 1.0)}]})
    saved = tmp_path / "rows.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "reader"
    folder.mkdir()
    (folder / READER_CONFIG_FILE).write_text(json.dumps(
        {"calibration": fit_calibration(rows, True, "e").to_dict()}))
    png = tmp_path / "curve.png"
    assert refusal_curve([f"{saved}:{folder}:tiny", "--out", str(png)]) == 0
    by = {line.split()[2]: [float(x) for x in line.split()[3:] if x != "/"]
          for line in capsys.readouterr().out.splitlines() if line.startswith("  tiny")}
    assert by["probe"][1] > by["confidence"][1] + 30  # within 2 F1
    assert all(a <= b for a, b in zip(by["probe"], by["probe"][1:]))
    assert png.stat().st_size > 0
    # the frontier: only points meeting the wrong-document goal, each better than all cheaper
    pts = [(1.0, 20.0, 99.0), (0.5, 30.0, 99.0), (2.0, 25.0, 99.0), (3.0, 50.0, 90.0), (4.0, 40.0, 98.0)]
    assert frontier(pts, 0.97) == [(0.5, 30.0, 99.0), (4.0, 40.0, 98.0)]
