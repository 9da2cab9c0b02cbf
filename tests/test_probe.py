"""The refusal probe's training step: the fit folded into one weight vector, the ``<s>`` states
read the same whatever the batching, and the command's files and errors."""
import json

import numpy as np
import pytest

from qa.errors import SpanQAError
from qa.training.probe import PROBE_CONFIG, PROBE_FILE, auc, cls_states, fit_probe, main, read_states


def _planted(n, rng, d=40):
    """States whose projection on one direction decides the target, plus two scalars."""
    direction = np.zeros(d)
    direction[3] = 1.0
    states = rng.normal(size=(n, d)) * 5 + 100
    scalars = rng.normal(size=(n, 2))
    logit = (states - 100) @ direction + 0.5 * scalars[:, 1]
    target = rng.random(n) < 1 / (1 + np.exp(-2 * logit))
    return states, scalars, target


def test_the_folded_probe_finds_a_planted_direction_and_keeps_its_intercept():
    rng = np.random.default_rng(0)
    states, scalars, target = _planted(3000, rng)
    sw, cw, b = fit_probe(states, scalars, target, k=40, l2=1e-4)
    s = states @ sw + scalars @ cw + b
    # an unpenalised intercept makes the mean predicted probability the observed rate
    assert abs((1 / (1 + np.exp(-s))).mean() - target.mean()) < 1e-4
    new_s, new_c, new_t = _planted(2000, np.random.default_rng(1))
    held = new_s @ sw + new_c @ cw + b
    assert auc(held[new_t], held[~new_t]) > 0.85
    assert np.argmax(np.abs(sw)) == 3 and cw[1] > 0


def test_the_folded_probe_does_not_care_about_the_states_scale():
    rng = np.random.default_rng(2)
    states, scalars, target = _planted(1500, rng)
    sw, cw, b = fit_probe(states, scalars, target, k=8, l2=0.1)
    sw2, cw2, b2 = fit_probe(states * 1000 - 7, scalars, target, k=8, l2=0.1)
    np.testing.assert_allclose(states @ sw + b, (states * 1000 - 7) @ sw2 + b2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cw, cw2, rtol=1e-6)


def test_a_probe_needs_both_kinds():
    with pytest.raises(SpanQAError):
        fit_probe(np.ones((5, 3)), np.ones((5, 2)), np.ones(5), k=2, l2=0.1)


def test_auc_counts_ties_half():
    assert auc(np.array([2.0, 3.0]), np.array([1.0])) == 1.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_states_are_the_same_read_alone_or_in_a_batch(tiny_reader_dir):
    from qa.reader import ExtractiveReader

    questions = ["Where is the river?", "How tall is the mountain?", "Who built the bridge?"]
    passages = ["The river runs past the old mill. " * 3, "The mountain is 900 m tall. " * 60,
                "Engineers built the bridge in 1901."]
    batched = ExtractiveReader(str(tiny_reader_dir), runtime="torch", batch_size=2)
    rows = read_states(batched, questions, passages, (1, 2))
    alone = ExtractiveReader(str(tiny_reader_dir), runtime="torch")
    for i, row in enumerate(rows):
        one = read_states(alone, [questions[i]], [passages[i]], (1, 2))[0]
        assert row["state"].shape == (2 * 32,)
        np.testing.assert_allclose(row["state"], one["state"], atol=1e-4)
        assert row["logit"] == pytest.approx(one["logit"], abs=1e-4)
        assert 0 <= row["char_start"] <= row["char_end"] <= len(passages[i])
    # the long passage has several windows; its state is the one of its best span's window
    assert len({tuple(np.round(r["state"][:4], 4)) for r in rows}) == 3
    with pytest.raises(SpanQAError), cls_states(alone.model, (1, 1)):
        pass


def _squad(path, with_unanswerable=True):
    paras = []
    for i in range(6):
        # half the paragraphs are the answer alone, so even the random reader gets some right
        ctx = str(10 + i) if i % 2 else f"The report {i} gives the figure {10 + i} for {1990 + i}."
        qas = [{"id": f"a{i}", "question": f"What figure does report {i} give?",
                "answers": [{"text": str(10 + i), "answer_start": ctx.index(str(10 + i))}]}]
        if with_unanswerable:
            qas.append({"id": f"u{i}", "question": f"Who wrote report {i}?", "answers": [],
                        "is_impossible": True})
        paras.append({"context": ctx, "qas": qas})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "Reports",
                                                             "paragraphs": paras}]}))
    return path


def test_the_command_writes_a_probe_the_reader_folder_could_carry(tiny_reader_dir, tmp_path, capsys):
    from safetensors.numpy import load_file

    data = _squad(tmp_path / "d.json")
    out = tmp_path / "probe"
    assert main(["--reader", str(tiny_reader_dir), "--data", str(data), "--k", "4",
                 "--out", str(out)]) == 0
    weights = load_file(str(out / PROBE_FILE))
    cfg = json.loads((out / PROBE_CONFIG).read_text())
    assert cfg["layers"] == [1, 2] and cfg["hidden"] == 32
    assert weights["state_weight"].shape == (64,) and weights["scalar_weight"].shape == (2,)
    assert all(np.isfinite(w).all() for w in weights.values())
    assert cfg["trained_on"]["questions"] == 12 and cfg["trained_on"]["unanswerable"] == 6
    assert 0.0 <= cfg["in_sample_auc_right_vs_unanswerable"] <= 1.0
    assert '"layers": [1, 2]' in capsys.readouterr().out


def test_the_command_refuses_data_without_unanswerable_questions(tiny_reader_dir, tmp_path, capsys):
    data = _squad(tmp_path / "d.json", with_unanswerable=False)
    assert main(["--reader", str(tiny_reader_dir), "--data", str(data), "--out",
                 str(tmp_path / "p")]) == 2
    assert "no unanswerable questions" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
