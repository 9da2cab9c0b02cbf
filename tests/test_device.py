"""The GPU route (qa/training/device.py): a bundle cut into calls that fit the device tool,
staged back together on the machine, trained there in the background and collected here. The
machine is simulated: each call gets a fresh copy of the tree and only its own call folder."""
import json
import shutil
import subprocess
import sys

import pytest

from qa.errors import SpanQAError
from qa.training import device
from qa.training.reader import budget_steps, lr_factor
from tests.test_train import CTX

QUESTION = "Who opened the bridge?"


def _train_file(tmp_path, n=12):
    answer = {"text": "Lena Ruiz", "answer_start": CTX.index("Lena Ruiz")}
    data = {"version": "v2.0", "data": [{"title": "B", "paragraphs": [{"context": CTX, "qas": [
        {"id": f"q{i}", "question": QUESTION, "answers": [answer]} for i in range(n)]}]}]}
    p = tmp_path / "bridge_train.json"
    p.write_text(json.dumps(data))
    return p


def test_pieces_fill_each_call_up_to_its_capacity_and_cover_every_file_in_order():
    sizes = [10, 0, 250, 95, 40]
    plan = device.plan_pieces(sizes, capacity=100, overhead=5)
    used = {}
    for size, pieces in zip(sizes, plan):
        assert [off for _, off, _ in pieces] == [sum(n for _, _, n in pieces[:i])
                                                for i in range(len(pieces))]
        assert sum(n for _, _, n in pieces) == size
        for call, _, n in pieces:
            used[call] = used.get(call, 0) + n + 5
    assert all(u <= 100 for u in used.values())
    calls = [c for pieces in plan for c, _, _ in pieces]
    assert calls == sorted(calls) and max(calls) == 5  # 395 bytes + 8 pieces x 5: 435 > 400
    assert plan[0] == [(1, 0, 10)]  # the first file (the data) travels first


def _bundle(tmp_path, tiny_reader_dir, monkeypatch, extra=()):
    monkeypatch.chdir(tmp_path)
    train = _train_file(tmp_path)
    options = ["--train", f"{train}:2", "--dev", str(train), "--out", "ignored",
               "--init", str(tiny_reader_dir), "--max-seq-len", "64", "--doc-stride", "24",
               "--batch-size", "4", "--max-steps", "3", "--eval-every", "0", *extra]
    return device.bundle(options, out=tmp_path / ".device", wait_s=120, capacity=2_000_000)


def _send(tmp_path, call: int):
    """A fresh tree on the 'machine' holding only the ``call``-th folder."""
    tree = tmp_path / "machine"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / ".device").mkdir(parents=True)
    shutil.copytree(tmp_path / ".device" / f"call{call}", tree / ".device" / f"call{call}")
    return tree


def test_a_bundle_staged_call_by_call_comes_back_byte_for_byte(tmp_path, tiny_reader_dir,
                                                               monkeypatch):
    m = _bundle(tmp_path, tiny_reader_dir, monkeypatch)
    assert m["calls"] >= 3  # the tiny reader alone exceeds two calls of 2 MB
    assert m["args"]["train"] == ["data/bridge_train.json:2"] and m["args"]["init"] == "init"
    for c in range(1, m["calls"] + 1):
        size = sum(p.stat().st_size for p in (tmp_path / ".device" / f"call{c}").iterdir()
                   if p.name != "manifest.json")
        assert size <= 2_000_000
    stage = tmp_path / "stage"
    for c in range(1, m["calls"] + 1):
        device.stage(_send(tmp_path, c) / ".device", stage)
        assert device.missing(m, stage) or c == m["calls"]
    assert device.missing(m, stage) == []
    for f in m["files"]:
        if f["dest"].startswith("init/"):
            name = f["dest"].split("/", 1)[1]
            assert (stage / f["dest"]).read_bytes() == (tiny_reader_dir / name).read_bytes()
    assert not list((stage / "parts").iterdir())


def test_a_damaged_part_is_refused(tmp_path, tiny_reader_dir, monkeypatch):
    m = _bundle(tmp_path, tiny_reader_dir, monkeypatch)
    tree = _send(tmp_path, 2)
    part = next(p for p in (tree / ".device" / "call2").iterdir() if p.name != "manifest.json")
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(SpanQAError, match="damaged"):
        device.stage(tree / ".device", tmp_path / "stage")
    assert m["calls"] >= 2


def test_bundle_options_are_checked_here_not_on_the_machine(tmp_path, tiny_reader_dir,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = _train_file(tmp_path)
    with pytest.raises(SpanQAError, match="needs --init"):
        device.bundle(["--train", str(train), "--out", "o"], out=tmp_path / ".d", capacity=10**6)
    with pytest.raises(SpanQAError, match="No data file"):
        device.bundle(["--train", "nowhere.json", "--out", "o", "--init", str(tiny_reader_dir)],
                      out=tmp_path / ".d", capacity=10**6)
    with pytest.raises(SpanQAError, match="--base must be one of"):
        device.bundle(["--train", str(train), "--out", "o", "--init", str(tiny_reader_dir),
                       "--base", str(tiny_reader_dir)], out=tmp_path / ".d", capacity=10**6)
    with pytest.raises(ValueError, match="doc_stride"):
        device.bundle(["--train", str(train), "--out", "o", "--init", str(tiny_reader_dir),
                       "--max-seq-len", "64", "--doc-stride", "64"], out=tmp_path / ".d",
                      capacity=10**6)


def test_the_machine_trains_in_the_background_and_the_result_collects_into_a_reader(
        tmp_path, tiny_reader_dir, monkeypatch):
    """Every call runs the one command; the first starts the run, the last waits for it and
    returns the reader in parts; collect joins them into a folder spanqa reads."""
    from qa.reader import ExtractiveReader

    (tiny_reader_dir / "spanqa_reader.json").write_text(json.dumps(
        {"length_penalty": 0.05, "first_passages": 2, "first_cut": 0.6}))
    m = _bundle(tmp_path, tiny_reader_dir, monkeypatch)
    (tiny_reader_dir / "spanqa_reader.json").unlink()
    out = tmp_path / "out"
    env = {**__import__("os").environ, device.STAGE_ENV: str(tmp_path / "stage"),
           "PYTHONPATH": str(device.Path(device.__file__).parents[2])}
    starts = 0
    for c in range(1, m["calls"] + 1):
        tree = _send(tmp_path, c)
        for pkg in ("qa", "index"):  # the code travels with the tree
            (tree / pkg).symlink_to(device.Path(device.__file__).parents[2] / pkg)
        cmd = [sys.executable, "-m", "qa.training.device", "there", "--out", str(out)]
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        starts += "training started" in done.stdout
        assert (out / "result.json").exists() == (c == m["calls"])  # only the last waits
    assert starts == 1  # started once, as soon as the data and the init reader were in
    summary = device.collect(out, tmp_path / "got")
    assert summary["status"] == "ok" and summary["steps"] == 3
    reader_dir = tmp_path / "got" / "reader"
    cfg = json.loads((reader_dir / "spanqa_reader.json").read_text())
    assert cfg["length_penalty"] == 0.05 and cfg["first_passages"] == 2  # carried from init
    assert cfg["training"]["steps"] == 3
    assert (tmp_path / "got" / "train_log.jsonl").exists()
    from safetensors.numpy import load_file

    before = load_file(str(tiny_reader_dir / "model.safetensors"))["qa_outputs.weight"]
    after = load_file(str(reader_dir / "model.safetensors"))["qa_outputs.weight"]
    assert abs(after.astype("float32") - before).max() > 1e-4  # trained there
    reader = ExtractiveReader(str(reader_dir))
    reader.warm_up()
    res = reader.predict(QUESTION, [CTX], top_k=3)
    assert res.spans and all(s.text in CTX for s in res.spans)
    # a part damaged on the way back is refused
    part = out / summary["parts"][0]["name"]
    part.write_bytes(part.read_bytes()[:-1] + b"x")
    with pytest.raises(SpanQAError, match="damaged"):
        device.collect(out, tmp_path / "again")


def test_slim_takes_big_files_out_of_what_is_sent_and_unslim_puts_them_back(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    git = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "small.txt").write_text("code")
    (tmp_path / "big.bin").write_bytes(b"\0" * (2 * 2**20))
    git("add", ".")
    git("commit", "-qm", "x")
    assert device.tree_bytes() > 2 * 2**20
    (tmp_path / "big.bin").write_bytes(b"\1" * (2 * 2**20))  # uncommitted: refused
    with pytest.raises(SpanQAError, match="big.bin"):
        device.slim()
    git("checkout", "big.bin")
    assert device.slim() == ["big.bin"]
    assert device.tree_bytes() == 4 and (tmp_path / "big.bin").exists()
    assert git("status", "--porcelain") == "D  big.bin\n"  # staged only, file untouched
    assert device.unslim() == ["big.bin"]
    assert git("status", "--porcelain") == "" and device.tree_bytes() > 2 * 2**20
    assert "spanqa device slim" not in (tmp_path / ".git" / "info" / "exclude").read_text()


def test_a_time_budget_shortens_the_schedule_and_it_still_decays_to_zero():
    assert budget_steps(1.0, elapsed_s=10, seconds_per_step=0.5, done=25) == 125
    assert budget_steps(0.001, elapsed_s=10, seconds_per_step=0.5, done=25) == 25  # never fewer
    assert [round(lr_factor(s, 10, 0.2), 2) for s in range(10)] == [
        0.5, 1.0, 1.0, 0.88, 0.75, 0.62, 0.5, 0.38, 0.25, 0.12]
    assert lr_factor(10, 10, 0.2) == 0.0


def test_a_call_too_small_for_any_piece_is_an_error_not_a_loop():
    with pytest.raises(SpanQAError, match="too little room"):
        device.plan_pieces([10], capacity=100, overhead=60)


def test_featurising_in_parallel_gives_the_same_windows_for_any_number_of_workers(
        tiny_reader_dir):
    from transformers import AutoTokenizer

    from qa.squad import SquadQuestion

    tok = AutoTokenizer.from_pretrained(tiny_reader_dir)
    start = CTX.index("Lena Ruiz")
    qs = [SquadQuestion(f"q{i}", f"{QUESTION} ({i})", CTX, "B", 0, [("Lena Ruiz", start)])
          for i in range(9)]
    one = device.featurize_parallel(tok, qs, 64, 24, seed=3, workers=1, chunk=2)
    two = device.featurize_parallel(tok, qs, 64, 24, seed=3, workers=2, chunk=2)
    assert [f.input_ids for f in one] == [f.input_ids for f in two]
    assert [f.spans for f in one] == [f.spans for f in two]
    assert sum(f.spans != [(0, 0)] for f in one) >= 9  # every question keeps its answer
    other = device.featurize_parallel(tok, qs, 64, 24, seed=4, workers=1, chunk=2)
    assert [f.input_ids for f in other] != [f.input_ids for f in one]  # the seed draws negatives


def test_the_steps_here_run_from_the_repository_root_only(tmp_path, monkeypatch, capsys):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert device.main(["slim"]) == 2
    assert "repository's root" in capsys.readouterr().err


def test_a_stage_left_by_another_bundle_is_cleared_not_mixed_in(tmp_path, tiny_reader_dir,
                                                                monkeypatch, capsys):
    stage = tmp_path / "stage"
    with pytest.raises(SpanQAError, match="Nothing to stage"):
        device.stage(tmp_path / "empty", stage)
    first = _bundle(tmp_path, tiny_reader_dir, monkeypatch)
    device.stage(_send(tmp_path, 1) / ".device", stage)
    (stage / "DONE").write_text("{}")  # the old run's end
    second = _bundle(tmp_path, tiny_reader_dir, monkeypatch, extra=["--seed", "7"])
    assert second["id"] != first["id"]
    device.stage(_send(tmp_path, 1) / ".device", stage)
    assert "held another bundle" in capsys.readouterr().out
    assert not (stage / "DONE").exists()
    assert json.loads((stage / "manifest.json").read_text())["id"] == second["id"]
