"""Hostile use: concurrent writers, damaged stores, odd input, documents that try to be markup
or to cost unbounded work. Each test names the finding of issue 17 it covers. Example counts
are bounded here; ``-m slow`` runs the deeper versions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index.documents import document_from_text, load_bytes
from index.errors import CorruptStoreError, DocumentError, SpanQAError, UnknownDocumentError
from index.store import DocumentStore
from qa.cli import main
from qa.errors import EmptyQuestionError, OptionError
from qa.pipeline import DocumentQA, check_question

DEEP = os.environ.get("SPANQA_DEEP") == "1"  # the slow-marked runs set it
TEXTS = {
    "a": "The Danube flows through Vienna and Budapest before reaching the Black Sea.",
    "b": "Mount Kilimanjaro in Tanzania is the highest mountain in Africa.",
}
ROOT = Path(__file__).resolve().parents[1]


def _saved(tmp_path, embedder) -> Path:
    s = DocumentStore(embedder)
    s.add([document_from_text(t, id=k) for k, t in TEXTS.items()])
    return s.save(tmp_path / "idx")


def _gen(root: Path) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["generation"]


def _edit_json(path: Path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _edit_lines(path: Path, fn) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in fn(rows)))


def _manifest_drop_files(root: Path) -> None:
    """Pretend the store predates checksums, so the deeper checks are what must catch it."""
    _edit_json(root / "manifest.json", lambda m: {k: v for k, v in m.items() if k != "files"})


# ---- finding 2: corrupt stores fail with CorruptStoreError, never crash or lie ----------------
def _set(d, k, v):
    d = dict(d)
    d[k] = v
    return d


CORRUPTIONS = {
    "chunk names an unknown document": ("chunks.jsonl", lambda rows: [_set(rows[0], "doc_id", "zz")] + rows[1:]),
    "non-integer start": ("chunks.jsonl", lambda rows: [_set(rows[0], "start", "x")] + rows[1:]),
    "chunk text edited": ("chunks.jsonl", lambda rows: [_set(rows[0], "text", rows[0]["text"].replace("Danube", "Rhine"))] + rows[1:]),
    "two chunk lines swapped": ("chunks.jsonl", lambda rows: rows[::-1]),
    "document without id": ("documents.json", lambda docs: [{k: v for k, v in docs[0].items() if k != "id"}] + docs[1:]),
    "document without text": ("documents.json", lambda docs: [{k: v for k, v in docs[0].items() if k != "text"}] + docs[1:]),
    "documents.json an object": ("documents.json", lambda docs: {"docs": docs}),
    "page_starts a string": ("documents.json", lambda docs: [_set(docs[0], "page_starts", "12")] + docs[1:]),
    "manifest without chunking": ("manifest.json", lambda m: {k: v for k, v in m.items() if k != "chunking"}),
    "manifest without embedder": ("manifest.json", lambda m: {k: v for k, v in m.items() if k != "embedder"}),
    "embedder a string": ("manifest.json", lambda m: _set(m, "embedder", "all-MiniLM-L6-v2")),
    "generation outside the store": ("manifest.json", lambda m: _set(m, "generation", "../../etc")),
}


@pytest.mark.parametrize("checksums", [True, False], ids=["with checksums", "old store"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_corruption_is_a_clear_corrupt_store_error(case, checksums, tmp_path, embedder):
    root = _saved(tmp_path, embedder)
    name, fn = CORRUPTIONS[case]
    if not checksums:
        _manifest_drop_files(root)
    path = root / name if name == "manifest.json" else _gen(root) / name
    (_edit_lines if name.endswith(".jsonl") else _edit_json)(path, fn)
    with pytest.raises(CorruptStoreError, match="damaged.*spanqa index --rebuild"):
        DocumentStore.load(root)


def test_vectors_replaced_by_random_ones_of_the_same_shape_are_caught(tmp_path, embedder):
    import faiss

    root = _saved(tmp_path, embedder)
    gen = _gen(root)
    n = faiss.read_index(str(gen / "index.faiss")).ntotal
    rnd = np.random.default_rng(0).normal(size=(n, 384)).astype("float32")
    rnd /= np.linalg.norm(rnd, axis=1, keepdims=True)
    idx = faiss.IndexFlatIP(384)
    idx.add(rnd)
    faiss.write_index(idx, str(gen / "index.faiss"))
    with pytest.raises(CorruptStoreError, match="index.faiss does not match its checksum"):
        DocumentStore.load(root)


@settings(max_examples=60 if DEEP else 12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_corruption_never_gives_another_exception_or_answer(data, tmp_path_factory,
                                                                         embedder):
    """Flip, drop or insert bytes anywhere in any store file: the load is refused with
    CorruptStoreError, or it succeeds and answers exactly as before."""
    root = _saved(tmp_path_factory.mktemp("c"), embedder)
    question = "Where does the Danube flow?"
    before = [(h.chunk.id, round(h.score, 4)) for h in DocumentStore.load(root).search(
        embedder.embed([question]), 2)[0]]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    path = data.draw(st.sampled_from(files))
    raw = bytearray(path.read_bytes())
    pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    how = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
    if how == "flip" and raw:
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif how == "drop" and raw:
        del raw[pos]
    elif how == "insert":
        raw.insert(pos, data.draw(st.integers(0, 255)))
    else:
        del raw[pos:]
    path.write_bytes(bytes(raw))
    try:
        loaded = DocumentStore.load(root)
    except CorruptStoreError:
        return
    after = [(h.chunk.id, round(h.score, 4)) for h in loaded.search(embedder.embed([question]), 2)[0]]
    assert after == before


# ---- finding 1: concurrent writers lose nothing ------------------------------------------------
def _index_in_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "qa.cli", "index", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("rounds", [2] if not DEEP else [10])
def test_concurrent_writers_from_several_processes_lose_nothing(rounds, tmp_path):
    for r in range(rounds):
        docs = []
        for i in range(3):
            p = tmp_path / f"r{r}" / f"doc{i}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"Document {i} of round {r}: the keeper number {i}{r} is recorded here.")
            docs.append(p)
        out = tmp_path / f"store{r}"
        procs = [_index_in_process([str(d), "--out", str(out)]) for d in docs]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), results
        assert set(DocumentStore.load(out).documents) == {d.name for d in docs}


# ---- kill -9 during a save never loses the store -----------------------------------------------
_SAVER = """
import sys, time
from index.documents import document_from_text
from index.store import DocumentStore
s = DocumentStore.load(sys.argv[1])
i = 0
while True:
    i += 1
    s.add([document_from_text(f"Fact number {i}: the ledger of round {i} is balanced.", id=f"f{i}")])
    s.save(sys.argv[1])
"""


def test_kill_9_at_random_points_during_saves_leaves_a_loadable_store(tmp_path, embedder):
    root = _saved(tmp_path, embedder)
    rng = np.random.default_rng(1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for _ in range(3 if not DEEP else 12):
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(root)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(6 + float(rng.uniform(0, 3)))  # past the model load, into the save loop
        p.send_signal(signal.SIGKILL)
        p.wait()
        s = DocumentStore.load(root)
        assert {"a", "b"} <= set(s.documents)
        for c in s.chunks:
            assert s.documents[c.doc_id].text[c.start:c.end] == c.text


# ---- finding 3: files with the same name stay two documents ------------------------------------
def test_same_file_name_in_two_folders_keeps_both_and_every_offset(tmp_path, embedder):
    for sub, text in (("a", TEXTS["a"]), ("b", TEXTS["b"])):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "notes.txt").write_text(text)
    qa = DocumentQA.from_files([tmp_path / "a" / "notes.txt", tmp_path / "b" / "notes.txt"],
                               reader=None)
    docs = qa.store.documents
    assert len(docs) == 2 and "notes.txt" in docs
    assert {d.text for d in docs.values()} == set(TEXTS.values())
    for c in qa.store.chunks:
        assert docs[c.doc_id].text[c.start:c.end] == c.text
    again = qa.add_files([tmp_path / "b" / "notes.txt"])  # the same file again: a no-op
    assert again == [] and len(qa.store.documents) == 2


# ---- finding 4: odd questions ------------------------------------------------------------------
@pytest.mark.parametrize("q", ["\u200b", "\ufeff", "\x00\x07", " \u200b\u2060 ", "?!.", "\u202e"])
def test_invisible_or_letterless_questions_are_empty(q):
    with pytest.raises(EmptyQuestionError):
        check_question(q)


def test_lone_surrogates_and_non_text_are_typed():
    assert check_question("Who \udcff is it?") == "Who \ufffd is it?"
    assert check_question(b"Who is \xff it?") == "Who is \ufffd it?"
    for bad in (None, 3, ["q"]):
        with pytest.raises(EmptyQuestionError):
            check_question(bad)


@pytest.fixture(scope="module")
def tiny_qa(tiny_reader_dir):
    qa = DocumentQA.from_texts([TEXTS["a"], TEXTS["b"]], ids=["a", "b"],
                               reader=str(tiny_reader_dir))
    qa.warm_up()
    return qa


@settings(max_examples=150 if DEEP else 25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=1200))
def test_any_unicode_question_is_answered_or_refused_by_a_typed_error(tiny_qa, q):
    try:
        a = tiny_qa.ask(q, threshold=0.0)
    except SpanQAError:
        return
    assert a.abstained or any(ch.isalnum() for ch in a.text)  # never "." as an answer
    if not a.abstained:
        assert tiny_qa.store.documents[a.doc_id].text[a.start:a.end] == a.text
    for c in a.candidates:
        assert any(ch.isalnum() for ch in c.text)


@settings(max_examples=60 if DEEP else 15, deadline=None)
@given(text=st.text(max_size=400))
def test_any_unicode_document_loads_or_is_refused_by_a_typed_error(text):
    try:
        doc = document_from_text(text)
    except SpanQAError:
        return
    doc.text.encode("utf-8")  # lone surrogates never survive
    assert doc.sha256


# ---- findings 5, 6: every option checked before any model loads; no tracebacks ----------------
@pytest.mark.parametrize("argv", [
    ["ask", "--passages", "0", "q?"], ["ask", "--passages", "-1", "q?"],
    ["ask", "--passages", "1000", "q?"], ["ask", "--threshold", "-1", "q?"],
    ["ask", "--threshold", "2", "q?"], ["ask", "--threshold", "nan", "q?"],
    ["ask", "--top-k", "0", "q?"], ["index", "x.txt", "--out", "o", "--chunk-size", "0"],
    ["serve", "--port", "70000"],
])
def test_out_of_range_options_are_one_line_before_any_model(argv, capsys, monkeypatch):
    import index.embedder
    import qa.reader

    def no_models(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(qa.reader.ExtractiveReader, "warm_up", no_models)
    monkeypatch.setattr(index.embedder.Embedder, "warm_up", no_models)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spanqa: error: "), err


def test_index_option_errors_are_one_line(tmp_path, capsys):
    doc = tmp_path / "d.txt"
    doc.write_text(TEXTS["a"])
    (tmp_path / "afile").write_text("x")
    cases = [
        (["index", str(doc), "--out", str(tmp_path / "afile")], "is a file"),
        (["index", str(doc), "--out", str(tmp_path / "o1"), "--chunk-size", "16",
          "--overlap", "16"], "must be smaller"),
        (["index", str(doc), "--out", str(tmp_path / "o2"), "--factory", "NotAFactory"],
         "factory"),
        (["index", str(doc), "--out", str(tmp_path / "o3"), "--factory", "IVF256,Flat"],
         "cannot be trained"),
        (["index", "--remove", "nope", "--out", str(tmp_path / "o4")], "no index"),
    ]
    for argv, why in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.startswith("spanqa")]  # not progress bars
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in err, (argv, err)
    assert not list((tmp_path / "o2").glob("gen-*")) and not list((tmp_path / "o3").glob("gen-*"))
    assert main(["index", str(doc), "--out", str(tmp_path / "ok")]) == 0
    assert main(["index", "--out", str(tmp_path / "ok"), "--chunk-size", "64"]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["index", "--out", str(tmp_path / "ok"), "--rebuild", "--chunk-size", "64"]) == 0
    assert DocumentStore.load(tmp_path / "ok").chunk_size == 64
    assert main(["index", "--remove", "nope", "--out", str(tmp_path / "ok")]) == 2
    assert "No document 'nope'" in capsys.readouterr().err


def test_serve_refuses_a_busy_port_or_unknown_host_at_once(capsys, monkeypatch):
    import socket

    import ui.app

    def never(**kwargs):
        pytest.fail("serve() started (and would load the models) before the address was checked")

    monkeypatch.setattr(ui.app, "serve", never)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert "Cannot listen" in capsys.readouterr().err
    assert main(["serve", "--host", "no-such-host.invalid"]) == 2
    assert "not an address" in capsys.readouterr().err


def test_broken_pipe_is_silent(tiny_reader_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = (f"{sys.executable} -m qa.cli ask --reader {tiny_reader_dir} --threshold 0 "
           f"'Who is the NATO Secretary General?' 'And who approved it?' | head -c 1")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_api_options_have_ranges(tiny_qa):
    for kwargs in ({"passages": 0}, {"passages": -1}, {"passages": 1000}, {"top_k": 0},
                   {"threshold": float("nan")}, {"threshold": -1}, {"threshold": 2},
                   {"threshold": "high"}):
        with pytest.raises(OptionError):
            tiny_qa.ask("Where does the Danube flow?", **kwargs)


# ---- finding 8: bounded work per document ------------------------------------------------------
def pdf_bomb(pages: int = 40, megabytes: int = 40) -> bytes:
    """A small PDF whose pages share one compressed content stream of ``megabytes`` of text."""
    line = b"BT /F1 12 Tf 72 720 Td (" + b"spam " * 40 + b") Tj ET\n"
    body = zlib.compress(line * (megabytes * 2**20 // len(line)), 9)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", None,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream"]
    kids = []
    for _ in range(pages):
        objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                    b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>")
        kids.append(len(objs))
    objs[1] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + \
        b"] /Count %d >>" % len(kids)
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def test_pdf_bomb_is_refused_quickly_and_costs_nothing_after(tmp_path):
    from index import documents

    bomb = pdf_bomb()
    assert len(bomb) < 1_000_000
    t = time.perf_counter()
    with pytest.raises(DocumentError, match="refused"):
        documents._pdf_pages(bomb, "bomb.pdf", seconds=5)
    assert time.perf_counter() - t < 10
    with pytest.raises(DocumentError, match="took over"):  # the time budget, on its own
        documents._pdf_pages(pdf_bomb(pages=2, megabytes=2), "slow.pdf", seconds=0.05)


def test_text_files_have_a_character_budget():
    with pytest.raises(DocumentError, match="limit is 100"):
        load_bytes(b"word " * 100, "big.txt", max_chars=100)


# ---- finding 9: the small ones -----------------------------------------------------------------
def test_small_api_edges_are_typed(tiny_qa, tmp_path):
    with pytest.raises(UnknownDocumentError, match="No document 'nope'"):
        tiny_qa.remove("nope")
    with pytest.raises(DocumentError, match="list"):
        DocumentQA.from_texts("just one string")
    with pytest.raises(DocumentError, match="list"):
        DocumentQA.from_files(str(tmp_path / "x.txt"))
    with pytest.raises(EmptyQuestionError, match="list"):
        tiny_qa.ask_many("one question?")
    with pytest.raises(DocumentError) as e:
        load_bytes(b"x" * (21 * 2**20 + 1), "big.txt", max_bytes=21 * 2**20)
    assert "21.01 MiB; the limit is 21 MiB" in str(e.value)


def test_stale_manifest_temp_files_are_cleaned(tmp_path, embedder):
    root = _saved(tmp_path, embedder)
    (root / ".manifest-abc123").write_text("{half")
    DocumentStore.load(root).save(root)
    assert not list(root.glob(".manifest-*"))


@pytest.mark.slow
def test_deep_hostile_runs():
    """The deeper runs of this file (more hypothesis examples, writer rounds, kill points)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(Path(__file__)), "-m", "not slow", "-x"],
                       env={**os.environ, "SPANQA_DEEP": "1"}, capture_output=True, text=True,
                       timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:]
