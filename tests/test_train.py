"""Training: labels point at the answer's tokens, and a run checkpoints and resumes."""
import json
import random

from qa.squad import SquadQuestion
from qa.train import build_features, main as train_main, pick_target

CTX = ("Alpha facts come first. " * 30) + "The bridge was opened in 1932 by Mayor Lena Ruiz. " + ("Omega. " * 30)


def test_labels_cover_exactly_the_answer(tiny_reader):
    tok = tiny_reader.tokenizer
    start = CTX.index("Lena Ruiz")
    q = SquadQuestion("1", "Who opened the bridge?", CTX, "t", 0, [("Lena Ruiz", start)])
    feats = build_features(tok, [q], max_seq_len=64, doc_stride=24, rng=random.Random(0))
    pos = [f for f in feats if f[2] != 0]
    neg = [f for f in feats if f[2] == 0]
    assert pos and len(neg) <= 1  # at most one no-answer window per answerable question
    # the labelled tokens decode to the answer
    ids, _tt, s, e = pos[0]
    assert tok.decode(ids[s:e + 1]).lower() == "lena ruiz"


def test_unanswerable_questions_point_every_window_at_no_answer(tiny_reader):
    q = SquadQuestion("2", "Who painted it?", CTX, "t", 0, [])
    feats = build_features(tiny_reader.tokenizer, [q], 64, 24, random.Random(0))
    assert len(feats) > 3 and all(f[2] == 0 and f[3] == 0 for f in feats)


def test_pick_target_prefers_the_majority_answer():
    q = SquadQuestion("3", "q", "c", "t", 0, [("in 1932", 10), ("1932", 13), ("1932", 13)])
    assert pick_target(q) == ("1932", 13)


def test_train_checkpoints_and_resumes(tmp_path, tiny_reader_dir, capsys):
    data = {"version": "v2.0", "data": [{"title": "B", "paragraphs": [{"context": CTX, "qas": [
        {"id": f"q{i}", "question": "Who opened the bridge?",
         "answers": [{"text": "Lena Ruiz", "answer_start": CTX.index("Lena Ruiz")}]} for i in range(12)]}]}]}
    p = tmp_path / "train.json"
    p.write_text(json.dumps(data))
    out = tmp_path / "run"
    common = ["--train", str(p), "--dev", str(p), "--out", str(out), "--base", str(tiny_reader_dir),
              "--max-seq-len", "64", "--doc-stride", "24", "--batch-size", "4", "--epochs", "3",
              "--eval-limit", "4", "--save-every", "2", "--eval-every", "100"]
    assert train_main(common + ["--max-steps", "4"]) == 0
    state = out / "checkpoint" / "state.pt"
    assert state.exists() and (out / "model" / "spanqa_reader.json").exists()
    capsys.readouterr()
    assert train_main(common + ["--max-steps", "6", "--resume"]) == 0
    assert "[resume] from step 4" in capsys.readouterr().out
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in log)
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["max_seq_len"] == 64 and cfg["training"]["steps"] == 6
