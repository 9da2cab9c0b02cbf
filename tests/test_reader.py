"""The reader's real code path (tokenise, window, batch, decode) on a tiny random model."""
import json
import shutil

import pytest

from qa.errors import ModelNotFoundError, QuestionTooLongError
from qa.reader import READER_CONFIG_FILE, ExtractiveReader

LONG = " ".join(f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(120))


def test_spans_are_exact_substrings_of_their_passage(tiny_reader):
    passages = ["The capital of Norway is Oslo.", LONG, "Short one."]
    res = tiny_reader.predict("What is the capital of Norway?", passages, top_k=10)
    assert res.spans
    for s in res.spans:
        assert passages[s.passage][s.char_start:s.char_end] == s.text
        assert 0.0 <= s.score <= 1.0
    scores = [s.score for s in res.spans]
    assert scores == sorted(scores, reverse=True)


def test_all_windows_of_one_question_go_through_the_model_in_one_batch(tiny_reader, monkeypatch):
    calls = []
    real = tiny_reader.model.forward

    def counting(*a, **k):
        calls.append(k["input_ids"].shape[0])
        return real(*a, **k)

    monkeypatch.setattr(tiny_reader.model, "forward", counting)
    tiny_reader.predict("Which topic?", [LONG, "Another passage.", "A third."])
    assert len(calls) == 1 and calls[0] > 3  # the long passage alone needs several windows


def test_long_passage_answers_come_from_every_window(tiny_reader):
    res = tiny_reader.predict("Which sentence?", [LONG], top_k=200)
    assert max(s.char_end for s in res.spans) > len(LONG) // 2


def test_question_longer_than_the_window(tiny_reader):
    with pytest.raises(QuestionTooLongError, match="tokens"):
        tiny_reader.predict("why " * 300, ["Some passage."])


def test_unknown_model_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match="No model folder"):
        ExtractiveReader(str(tmp_path / "nope")).warm_up()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        ExtractiveReader(str(tmp_path / "empty")).warm_up()


def test_model_folder_config_drives_threshold(tiny_reader_dir, tmp_path):
    d = tmp_path / "reader"
    shutil.copytree(tiny_reader_dir, d)
    (d / READER_CONFIG_FILE).write_text(json.dumps(
        {"max_seq_len": 128, "doc_stride": 32, "calibration": {"span_weight": 0.0, "bias": -3.0,
                                                               "threshold": 0.5}}))
    r = ExtractiveReader(str(d))
    res = r.predict("What is it?", ["It is a test passage about cats."])
    assert r.config.max_seq_len == 128
    assert res.abstained and all(abs(s.score - 0.0474) < 1e-3 for s in res.spans)
    assert not r.predict("What is it?", ["A cat."], threshold=0.01).abstained


def test_reader_config_round_trips_every_key(tmp_path):
    from qa.reader import ReaderConfig

    raw = {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 30, "length_penalty": 0.02,
           "top_n_per_window": 10, "batch_size": 16, "runtime": "onnx", "first_passages": 2,
           "first_cut": 0.6,
           "calibration": {**ReaderConfig().calibration.to_dict(), "threshold": 0.07},
           "training": {"base": "x", "steps": 3}, "calibration_report": {"ece_answerable": 0.05}}
    (tmp_path / READER_CONFIG_FILE).write_text(json.dumps(raw))
    cfg = ReaderConfig.load(tmp_path)
    assert cfg.max_seq_len == 384 and cfg.calibration.threshold == 0.07 and cfg.runtime == "onnx"
    cfg.save(tmp_path)
    assert json.loads((tmp_path / READER_CONFIG_FILE).read_text()) == raw


def test_unknown_or_bad_reader_settings_are_errors_at_construction(tiny_reader_dir):
    from qa.errors import OptionError

    with pytest.raises(OptionError, match="Unknown reader setting.*max_seq_length"):
        ExtractiveReader(str(tiny_reader_dir), max_seq_length=512)
    with pytest.raises(OptionError, match="doc_stride"):
        ExtractiveReader(str(tiny_reader_dir), doc_stride=-3)
    r = ExtractiveReader(str(tiny_reader_dir), max_seq_len=128)
    r.warm_up()
    assert r.config.max_seq_len == 128
