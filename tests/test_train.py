"""Training: labels point at the answer's tokens, and a run checkpoints and resumes."""
import json
import random

import numpy as np
import pytest

from qa.squad import SquadQuestion
from qa.training.reader import (
    ReaderTrainingArgs,
    answer_removed_negatives,
    build_features,
    build_parser,
    collate,
    due,
    freeze_lower_layers,
    other_paragraph_negatives,
    parameter_groups,
    pick_target,
    span_loss,
    wrong_document_negatives,
)
from qa.training.reader import main as train_main

CTX = ("Alpha facts come first. " * 30) + "The bridge was opened in 1932 by Mayor Lena Ruiz. " + ("Omega. " * 30)


@pytest.fixture(scope="module")
def tiny_hf(tiny_reader_dir):
    """The tiny reader as training loads it: transformers' tokenizer and model (the reader's
    own runtime builds :mod:`qa.encoders` modules, which do not train)."""
    from types import SimpleNamespace

    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny_reader_dir),
                           model=AutoModelForQuestionAnswering.from_pretrained(tiny_reader_dir))


def test_labels_cover_exactly_the_answer(tiny_hf):
    tok = tiny_hf.tokenizer
    start = CTX.index("Lena Ruiz")
    q = SquadQuestion("1", "Who opened the bridge?", CTX, "t", 0, [("Lena Ruiz", start)])
    feats = build_features(tok, [q], max_seq_len=64, doc_stride=24, rng=random.Random(0))
    pos = [f for f in feats if f.spans != [(0, 0)]]
    neg = [f for f in feats if f.spans == [(0, 0)]]
    assert pos and len(neg) <= 1  # at most one no-answer window per answerable question
    # the labelled tokens decode to the answer
    s, e = pos[0].spans[0]
    assert tok.decode(pos[0].input_ids[s:e + 1]).lower() == "lena ruiz"


def test_every_distinct_gold_answer_is_a_target_majority_first(tiny_hf):
    tok = tiny_hf.tokenizer
    short, full = CTX.index("Lena Ruiz"), CTX.index("Mayor Lena Ruiz")
    q = SquadQuestion("1", "Who opened the bridge?", CTX, "t", 0,
                      [("Mayor Lena Ruiz", full), ("Lena Ruiz", short), ("Lena Ruiz", short)])
    feats = build_features(tok, [q], max_seq_len=64, doc_stride=24, rng=random.Random(0))
    w = next(f for f in feats if f.spans != [(0, 0)])
    texts = [tok.decode(w.input_ids[s:e + 1]).lower() for s, e in w.spans]
    assert texts == ["lena ruiz", "mayor lena ruiz"]


def test_unanswerable_questions_point_every_window_at_no_answer(tiny_hf):
    q = SquadQuestion("2", "Who painted it?", CTX, "t", 0, [])
    feats = build_features(tiny_hf.tokenizer, [q], 64, 24, random.Random(0))
    assert len(feats) > 3 and all(f.spans == [(0, 0)] for f in feats)


def test_span_loss_is_the_usual_loss_for_one_gold_and_lower_with_more(tiny_hf):
    import torch

    model = tiny_hf.model.float().eval()
    tok = tiny_hf.tokenizer
    q = SquadQuestion("1", "Who opened the bridge?", CTX, "t", 0, [("Lena Ruiz", CTX.index("Lena Ruiz"))])
    feats = build_features(tok, [q], 64, 24, random.Random(0))
    pos = next(f for f in feats if f.spans != [(0, 0)])
    one = collate([pos], [0], tok.pad_token_id, "cpu")
    s, e = pos.spans[0]
    with torch.no_grad():
        ours = span_loss(model, one).item()
        inputs = {k: v for k, v in one.items() if k not in ("spans", "span_mask")}
        hf = model(**inputs, start_positions=torch.tensor([s]), end_positions=torch.tensor([e])).loss.item()
        # adding a second acceptable span can only make the window more likely to be right
        two = collate([pos._replace(spans=[(s, e), (s - 1, e)])], [0], tok.pad_token_id, "cpu")
        both = span_loss(model, two).item()
    assert abs(ours - hf) < 1e-4  # no padding in a one-window batch, so the masks change nothing
    assert both < ours


def test_wrong_document_negatives_come_from_other_articles_and_are_unanswerable():
    qs = [SquadQuestion(f"{t}{i}", f"When did the {t} river flood the valley?", f"The {t} river flooded the valley in 19{i}.",
                        t, i, [(f"19{i}", 26)]) for t in ("Nile", "Rhine", "Volga") for i in range(10, 20)]
    negs = wrong_document_negatives(qs, 0.5, random.Random(0))
    assert len(negs) == 15
    by_id = {q.id: q for q in qs}
    for n in negs:
        src = by_id[n.id.removesuffix("-wrongdoc")]
        assert n.is_impossible and n.question == src.question
        assert n.title != src.title and n.context not in {q.context for q in qs if q.title == src.title}
    assert wrong_document_negatives(qs, 0.0, random.Random(0)) == []


def test_other_paragraph_negatives_stay_in_the_article_and_never_hold_a_gold_answer():
    paras = {
        "Nile": ["The Nile flooded the valley in 1910.", "The Nile valley was flooded by farmers' canals.",
                 "Cairo sits on the Nile.", "The valley floods recorded in 1910 were the worst."],
        "Rhine": ["The Rhine valley flooded in 1910 as well."],
    }
    qs = [SquadQuestion("n1", "When did the Nile flood the valley?", paras["Nile"][0], "Nile", 0, [("1910", 30)]),
          SquadQuestion("r1", "When did the Rhine valley flood?", paras["Rhine"][0], "Rhine", 0, [("1910", 23)])]
    qs += [SquadQuestion(f"n{i}", "Where is Cairo?", c, "Nile", 0, []) for i, c in enumerate(paras["Nile"][1:], 2)]
    negs = other_paragraph_negatives(qs, 1.0, random.Random(0))
    # the Rhine article has no other paragraph; the Nile question gets the nearest paragraph
    # of its own article that lacks "1910" (not the one that holds it, though it shares more words)
    assert [(n.id, n.context, n.is_impossible) for n in negs] == [
        ("n1-otherpara", "The Nile valley was flooded by farmers' canals.", True)]
    assert other_paragraph_negatives(qs, 0.0, random.Random(0)) == []


def test_unanswerable_questions_are_reasked_of_the_nearest_other_paragraph_of_their_article():
    paras = ["The Nile flooded the valley in 1910.", "Cairo sits on the Nile delta.",
             "Valley floods along the Nile ruined the cotton of 1910."]
    qs = [SquadQuestion("a1", "When did the Nile flood the valley?", paras[0], "Nile", 0, [("1910", 30)]),
          SquadQuestion("u1", "When did the Nile valley freeze?", paras[0], "Nile", 0, []),
          SquadQuestion("u2", "Who founded Cairo?", paras[1], "Nile", 1, []),
          SquadQuestion("a3", "What did floods ruin?", paras[2], "Nile", 2, [("the cotton", 33)]),
          SquadQuestion("r1", "When did the Rhine freeze?", "The Rhine froze in 1963.", "Rhine", 0, [])]
    negs = other_paragraph_negatives(qs, 1.0, random.Random(0), unanswerable=True)
    # only the unanswerable questions are re-asked, each of the paragraph of its own article
    # sharing the most words with it (never its own); the one-paragraph Rhine article gives none
    assert sorted((n.id, n.context, n.is_impossible) for n in negs) == [
        ("u1-otherpara", paras[2], True), ("u2-otherpara", paras[0], True)]


def test_answer_removed_negatives_cut_the_answer_sentence_and_keep_the_rest():
    ctx = ("The Nile rises in Burundi. It floods every summer. The Aswan dam was finished in 1970. "
           "Farmers grow cotton on its banks.")
    start = ctx.index("1970")
    twice = "The dam opened in 1970. Work began in 1960. It cost less than the 1970 budget."
    qs = [SquadQuestion("d", "When was the Aswan dam finished?", ctx, "Nile", 3, [("1970", start)]),
          SquadQuestion("t", "When did the dam open?", twice, "Nile", 4, [("1970", twice.index("1970"))]),
          SquadQuestion("s", "When did it open?", "It opened in 1970.", "Nile", 5, [("1970", 13)]),
          SquadQuestion("u", "Who built the pyramids?", ctx, "Nile", 3, [])]
    negs = answer_removed_negatives(qs, 1.0, random.Random(0))
    # "t" still says 1970 after the cut, "s" has no sentence left, "u" has no answer to cut
    assert [(n.id, n.context, n.title, n.is_impossible) for n in negs] == [
        ("d-cut", "The Nile rises in Burundi. It floods every summer. Farmers grow cotton on its banks.",
         "Nile", True)]
    assert answer_removed_negatives(qs, 0.0, random.Random(0)) == []


def test_freezing_lower_layers_leaves_the_top_and_the_head_trainable(tiny_hf):
    import copy

    model = copy.deepcopy(tiny_hf.model)  # 2 encoder layers
    assert freeze_lower_layers(model, 0) == 0
    frozen = freeze_lower_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad) > 0
    assert "qa_outputs.weight" in trainable and "bert.encoder.layer.1.output.dense.weight" in trainable
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in trainable)
    # the optimiser sees only what trains
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.01)
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tiny_hf):
    model = tiny_hf.model  # 2 encoder layers
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.01, layer_decay=0.5)
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    wd_of = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert sorted(lr_of) == sorted(names.values())  # every parameter, each once
    assert sum(len(g["params"]) for g in groups) == len(names)
    assert lr_of["qa_outputs.weight"] == 1e-3
    assert lr_of["bert.encoder.layer.1.output.dense.weight"] == 1e-3 * 0.5
    assert lr_of["bert.encoder.layer.0.output.dense.weight"] == 1e-3 * 0.25
    assert lr_of["bert.embeddings.word_embeddings.weight"] == 1e-3 * 0.125
    assert wd_of["bert.encoder.layer.0.output.LayerNorm.weight"] == 0.0
    assert wd_of["bert.encoder.layer.0.output.dense.bias"] == 0.0
    assert wd_of["bert.encoder.layer.0.output.dense.weight"] == 0.01
    # off: one learning rate, decayed parameters first (the order older checkpoints resume in)
    flat = parameter_groups(model, lr=1e-3, weight_decay=0.01)
    assert [(g["lr"], g["weight_decay"]) for g in flat] == [(1e-3, 0.01), (1e-3, 0.0)]


def test_pick_target_prefers_the_majority_answer():
    q = SquadQuestion("3", "q", "c", "t", 0, [("in 1932", 10), ("1932", 13), ("1932", 13)])
    assert pick_target(q) == ("1932", 13)


def test_periodic_actions_run_every_n_steps_and_after_the_last_and_zero_means_only_last():
    assert [s for s in range(1, 11) if due(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 11) if due(s, 0, 10)] == [10]  # --save-every 0 used to divide by zero


def _bridge_set(tmp_path, n: int):
    """A SQuAD file of ``n`` copies of one answerable question about CTX."""
    data = {"version": "v2.0", "data": [{"title": "B", "paragraphs": [{"context": CTX, "qas": [
        {"id": f"q{i}", "question": "Who opened the bridge?",
         "answers": [{"text": "Lena Ruiz", "answer_start": CTX.index("Lena Ruiz")}]}
        for i in range(n)]}]}]}
    p = tmp_path / "train.json"
    p.write_text(json.dumps(data))
    return p


def test_train_checkpoints_and_resumes(tmp_path, tiny_reader_dir, capsys):
    p = _bridge_set(tmp_path, 12)
    out = tmp_path / "run"
    common = ["--train", str(p), "--dev", str(p), "--out", str(out), "--base", str(tiny_reader_dir),
              "--max-seq-len", "64", "--doc-stride", "24", "--batch-size", "4", "--epochs", "3",
              "--eval-limit", "4", "--save-every", "2", "--eval-every", "100"]
    assert train_main(common + ["--max-steps", "4"]) == 0
    state = out / "checkpoint" / "state.pt"
    assert state.exists() and (out / "model" / "spanqa_reader.json").exists()
    capsys.readouterr()
    # a save stopped between its renames: the last whole checkpoint is moved aside, and the
    # new one is half written
    (out / "checkpoint").rename(out / "checkpoint.old")
    (out / "checkpoint.new").mkdir()
    (out / "checkpoint.new" / "model.safetensors").write_bytes(b"half")
    assert train_main(common + ["--max-steps", "6", "--resume"]) == 0
    assert "[resume] from step 4" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint"]
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in log)
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["max_seq_len"] == 64 and cfg["training"]["steps"] == 6
    # the training time is summed over resumed runs: pretend the first ones took 100 minutes
    import torch

    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    torch.save({**state, "minutes": 100.0}, out / "checkpoint" / "state.pt")
    assert train_main(common + ["--max-steps", "7", "--resume"]) == 0
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["steps"] == 7 and cfg["training"]["minutes"] >= 100.0


def test_bf16_training_keeps_fp32_weights_and_moves_them(tmp_path, tiny_reader_dir):
    from safetensors.numpy import load_file

    p = _bridge_set(tmp_path, 8)
    out = tmp_path / "run"
    assert train_main(["--train", str(p), "--out", str(out), "--base", str(tiny_reader_dir),
                       "--max-seq-len", "64", "--doc-stride", "24", "--batch-size", "4",
                       "--max-steps", "3", "--lr", "1e-3", "--save-every", "3", "--bf16"]) == 0
    before = load_file(str(tiny_reader_dir / "model.safetensors"))
    after = load_file(str(out / "checkpoint" / "model.safetensors"))
    head = next(k for k in after if k.startswith("qa_outputs") and k.endswith("weight"))
    assert after[head].dtype == np.float32
    assert np.abs(after[head] - before[head]).max() > 0
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["bf16"] is True


def test_training_settings_are_validated_and_their_defaults_live_in_one_place(capsys):
    with pytest.raises(ValueError, match="wrong_doc_frac"):
        ReaderTrainingArgs(train=["x.json"], out="o", wrong_doc_frac=1.5)
    with pytest.raises(ValueError, match="doc_stride"):
        ReaderTrainingArgs(train=["x.json"], out="o", max_seq_len=64, doc_stride=64)
    given = build_parser().parse_args(["--train", "a.json:2", "--out", "o", "--lr", "3e-5"])
    assert ReaderTrainingArgs(**vars(given)) == ReaderTrainingArgs(train=["a.json:2"], out="o", lr=3e-5)
    with pytest.raises(SystemExit):  # a bad value is a one-line usage error, before any loading
        train_main(["--train", "a.json", "--out", "o", "--unanswerable-frac", "2"])
    assert "unanswerable_frac must be between 0 and 1" in capsys.readouterr().err


def test_a_time_budget_cuts_the_run_to_what_fits_and_a_resume_keeps_that_length(
        tmp_path, tiny_reader_dir, capsys):
    p = _bridge_set(tmp_path, 60)
    out = tmp_path / "run"
    common = ["--train", str(p), "--out", str(out), "--base", str(tiny_reader_dir),
              "--max-seq-len", "64", "--doc-stride", "24", "--batch-size", "2",
              "--save-every", "5", "--eval-every", "0", "--max-minutes", "0.0001"]
    assert train_main(common) == 0
    assert "[budget]" in capsys.readouterr().out
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["steps_planned"] > 25
    assert cfg["training"]["steps"] == 25  # 5 steps, then 20 timed: all that fit
    assert train_main(common + ["--resume"]) == 0
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["steps"] == 25  # not the length first planned


def test_a_driver_can_stop_the_loop_early_and_still_gets_a_checkpoint_an_eval_and_a_model(
        tmp_path, tiny_reader_dir):
    from qa.training.reader import ReaderTrainer

    class StopsAtThree(ReaderTrainer):
        def should_stop(self):
            return self.step >= 3

    p = _bridge_set(tmp_path, 40)
    out = tmp_path / "run"
    args = ReaderTrainingArgs(train=[str(p)], dev=str(p), out=str(out), base=str(tiny_reader_dir),
                              max_seq_len=64, doc_stride=24, batch_size=2, save_every=0,
                              eval_every=0, eval_limit=4)
    StopsAtThree(args).run()
    assert torch_load_step(out) == 3
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["eval"]["n"] for r in log if "eval" in r] == [40]  # all of dev, once
    cfg = json.loads((out / "model" / "spanqa_reader.json").read_text())
    assert cfg["training"]["steps"] == 3 and cfg["training"]["steps_planned"] > 3


def torch_load_step(out) -> int:
    import torch

    return int(torch.load(out / "checkpoint" / "state.pt", weights_only=True)["step"])
