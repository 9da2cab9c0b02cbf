"""Distillation: teacher logits land on the student's tokens by characters, the KD loss is a
proper divergence, and a run computes the teacher cache once and reuses it."""
import json
import random

import numpy as np
import pytest

from qa.squad import SquadQuestion
from qa.training.distill import MASKED, TeacherCache, align_to_student, distill_loss
from qa.training.reader import build_features
from qa.training.reader import main as train_main

CTX = ("Alpha facts come first. " * 30) + "The bridge was opened in 1932 by Mayor Lena Ruiz. " + ("Omega. " * 30)


def test_teacher_logits_move_to_student_tokens_by_character_offsets():
    # student: [CLS] q q [SEP] the bridge open ##ed [SEP]; the teacher has one more special
    # token before the passage and reads "opened" as a single token
    student = np.array([(-1, -1), (-1, -1), (-1, -1), (-1, -1), (0, 3), (4, 10), (11, 15), (15, 17),
                        (-1, -1)])
    teacher_offsets = [None, None, None, None, None, (0, 3), (4, 10), (11, 17), None]
    t_start = np.arange(9, dtype=np.float32) + 100  # 100, 101, ...
    t_end = np.arange(9, dtype=np.float32) + 200
    out = align_to_student(student, teacher_offsets, t_start, t_end)
    assert out.shape == (9, 2)
    assert tuple(out[0]) == (100, 200)  # no-answer position to no-answer position
    assert list(out[4]) == [105, 205] and list(out[5]) == [106, 206]
    # both pieces of "open ##ed" start where "opened" starts and end where it ends
    assert list(out[6]) == [107, 207] and list(out[7]) == [107, 207]
    assert (out[1:4] == MASKED).all() and (out[8] == MASKED).all()


def test_distill_loss_is_zero_on_agreement_positive_otherwise_and_ignores_padding():
    import torch

    torch.manual_seed(0)
    teacher = torch.randn(2, 7, 2)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    same = distill_loss(teacher[..., 0], teacher[..., 1], pad, teacher, 2.0)
    assert abs(same.item()) < 1e-6
    other = torch.randn(2, 7, 2)
    differ = distill_loss(other[..., 0], other[..., 1], pad, teacher, 2.0)
    assert differ.item() > 0.01
    junk = other.clone()
    junk[1, 5:] = 50.0  # whatever the student says on padding does not count
    assert torch.allclose(distill_loss(junk[..., 0], junk[..., 1], pad, teacher, 2.0), differ)


def test_cache_restarts_when_the_data_changes(tmp_path):
    c = TeacherCache(tmp_path, n_windows=4, width=8, fingerprint="a", teacher="t")
    c.mark(4)
    assert TeacherCache(tmp_path, 4, 8, "a", "t").complete
    assert not TeacherCache(tmp_path, 4, 8, "b", "t").complete


@pytest.fixture
def train_file(tmp_path):
    data = {"version": "v2.0", "data": [{"title": "B", "paragraphs": [{"context": CTX, "qas": [
        {"id": f"q{i}", "question": "Who opened the bridge?",
         "answers": [{"text": "Lena Ruiz", "answer_start": CTX.index("Lena Ruiz")}]} for i in range(6)]}]}]}
    p = tmp_path / "train.json"
    p.write_text(json.dumps(data))
    return p


def test_training_with_a_teacher_caches_its_logits_once(tmp_path, train_file, tiny_reader_dir, capsys):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out = tmp_path / "run"
    args = ["--train", str(train_file), "--out", str(out), "--base", str(tiny_reader_dir),
            "--teacher", str(tiny_reader_dir), "--max-seq-len", "64", "--doc-stride", "24",
            "--batch-size", "4", "--max-steps", "2", "--save-every", "0", "--eval-every", "0"]
    assert train_main(args) == 0
    meta = json.loads((out / "teacher" / "meta.json").read_text())
    assert meta["done"] == meta["n_windows"] > 0
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["teacher"] == str(tiny_reader_dir) and cfg["training"]["distill_alpha"] == 0.5

    # teacher == student's tokenizer and weights here, so the aligned logits of a window are
    # the teacher's own logits on that very window, wherever the student can point
    tok = AutoTokenizer.from_pretrained(tiny_reader_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_reader_dir).eval()
    q = json.loads(train_file.read_text())["data"][0]["paragraphs"][0]["qas"][0]
    qs = [SquadQuestion(f"q{i}", q["question"], CTX, "B", 0, [("Lena Ruiz", CTX.index("Lena Ruiz"))])
          for i in range(6)]
    feats = build_features(tok, qs, 64, 24, random.Random(42), keep_offsets=True)
    cached = np.load(out / "teacher" / "logits.npy")
    assert len(cached) == len(feats)
    w = feats[0]
    with torch.no_grad():
        o = model(input_ids=torch.tensor([w.input_ids]), token_type_ids=torch.tensor([w.token_type_ids]))
    points = [0] + [t for t, (s, _e) in enumerate(w.source[1]) if s >= 0]
    assert np.allclose(cached[0, points, 0], o.start_logits[0, points].numpy(), atol=1e-2)
    assert np.allclose(cached[0, points, 1], o.end_logits[0, points].numpy(), atol=1e-2)

    capsys.readouterr()
    assert train_main(args) == 0
    assert "[teacher] reusing" in capsys.readouterr().out
