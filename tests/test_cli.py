"""The CLI: end to end in a subprocess, and every bad input as one clear line with exit 2."""
import json
import os
import subprocess
import sys

import pytest

from qa.cli import main
from qa.pipeline import DEFAULT_DOCUMENT


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "qa.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_ask_json_end_to_end_on_the_default_article(tiny_reader_dir):
    r = run_cli("ask", "--json", "--reader", str(tiny_reader_dir), "--threshold", "0",
                "Who authorized Ukraine to use US weapons?")
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    doc = DEFAULT_DOCUMENT.read_text(encoding="utf-8")
    assert a["text"] and a["text"] in doc
    assert a["passage_text"][a["passage_start"]:a["passage_end"]] == a["text"]
    assert a["title"].startswith("Biden Greenlights")
    assert 0 <= a["score"] <= 1 and a["passages"]


def test_index_then_ask_from_the_index(tmp_path, tiny_reader_dir, capsys):
    doc = tmp_path / "note.md"
    doc.write_text("# Garden\n\nThe tomatoes were planted on the ninth of May.", encoding="utf-8")
    assert main(["index", str(doc), "--out", str(tmp_path / "idx")]) == 0
    assert "1 documents" in capsys.readouterr().out
    assert main(["index", str(doc), "--out", str(tmp_path / "idx")]) == 0  # unchanged: no-op
    assert "0 added or updated" in capsys.readouterr().out
    assert main(["ask", "--index", str(tmp_path / "idx"), "--reader", str(tiny_reader_dir),
                 "--json", "--threshold", "0", "When were the tomatoes planted?"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["doc_id"] == "note.md" and a["text"] in doc.read_text()
    assert main(["index", "--remove", "note.md", "--out", str(tmp_path / "idx")]) == 0
    assert "0 documents" in capsys.readouterr().out


def _bad(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02\x03")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "manifest.json").write_text("{broken")
    return {
        "empty question": ["ask", "   "],
        "question too long": ["ask", "why " * 400],
        "binary file": ["ask", "--doc", str(tmp_path / "bin.txt"), "q?"],
        "not UTF-8": ["ask", "--doc", str(tmp_path / "latin.txt"), "q?"],
        "empty document": ["ask", "--doc", str(tmp_path / "empty.txt"), "q?"],
        "missing index": ["ask", "--index", str(tmp_path / "nope"), "q?"],
        "corrupt index": ["ask", "--index", str(tmp_path / "corrupt"), "q?"],
        "unknown model": ["ask", "--reader", str(tmp_path / "no-model"), "q?"],
        "missing file": ["index", str(tmp_path / "nofile.txt"), "--out", str(tmp_path / "o")],
    }


@pytest.mark.parametrize("case", [
    "empty question", "question too long", "binary file", "not UTF-8", "empty document",
    "missing index", "corrupt index", "unknown model", "missing file"])
def test_bad_input_is_one_clear_line(case, tmp_path, tiny_reader_dir, capsys):
    argv = _bad(tmp_path)[case]
    if argv[0] == "ask" and "--reader" not in argv:
        argv = argv[:1] + ["--reader", str(tiny_reader_dir)] + argv[1:]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spanqa: error: "), err
    assert "Traceback" not in err[0]


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    r = run_cli("ask", "--index", str(tmp_path / "nope"), "question?")
    assert r.returncode == 2
    assert r.stderr.strip() == f"spanqa: error: No index at {tmp_path / 'nope'}."


def test_ask_json_with_the_shipped_reader_on_the_default_article():
    r = run_cli("ask", "--json", "Who is the NATO Secretary General?")
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert a["text"] == "Jens Stoltenberg" and not a["abstained"]
    doc = DEFAULT_DOCUMENT.read_text(encoding="utf-8")
    assert doc[a["start"]:a["end"]] == a["text"]
    assert {"score", "passage_text", "passage_start", "passage_end", "candidates", "passages"} <= set(a)
