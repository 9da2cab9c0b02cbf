import json

import numpy as np
import pytest

from index.documents import document_from_text
from index.errors import CorruptStoreError, IncompatibleStoreError, StoreNotFoundError
from index.store import DocumentStore, resolve_factory

TEXTS = {
    "a": "The Danube flows through ten countries. It ends in the Black Sea.",
    "b": "Photosynthesis turns light into chemical energy. Chlorophyll absorbs red and blue light.",
    "c": "The Treaty of Westphalia was signed in 1648. It ended the Thirty Years' War.",
}


def _store(embedder, ids=("a", "b"), **kw):
    s = DocumentStore(embedder, chunk_size=32, overlap=8, **kw)
    s.add([document_from_text(TEXTS[i], id=i) for i in ids])
    return s


def _top_doc(store, embedder, query):
    return store.search(embedder.embed([query]), 1)[0][0].chunk.doc_id


def test_save_load_round_trip(tmp_path, embedder):
    s = _store(embedder)
    s.save(tmp_path / "idx")
    t = DocumentStore.load(tmp_path / "idx")
    assert [c.to_dict() for c in t.chunks] == [c.to_dict() for c in s.chunks]
    assert {d: t.documents[d].text for d in t.documents} == {d: s.documents[d].text for d in s.documents}
    np.testing.assert_allclose(t.vectors, s.vectors)
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["embedder"]["dimension"] == 384
    assert m["chunking"] == {"chunk_size": 32, "overlap": 8, "unit": "embedder tokens",
                             "sentence_aware": True}
    assert set(m["documents"]) == {"a", "b"}
    assert _top_doc(t, embedder, "Which sea does the Danube end in?") == "a"


def test_add_remove_and_noop_readd(tmp_path, embedder):
    s = _store(embedder)
    n = len(s)
    assert s.add([document_from_text(TEXTS["a"], id="a")]) == []  # unchanged: no-op
    assert len(s) == n
    assert s.add([document_from_text(TEXTS["c"], id="c")]) == ["c"]
    assert _top_doc(s, embedder, "When was the Treaty of Westphalia signed?") == "c"
    s.remove("a")
    assert "a" not in s.documents and all(c.doc_id != "a" for c in s.chunks)
    assert len(s.vectors) == len(s.chunks) == s.index.ntotal
    s.save(tmp_path / "idx")
    t = DocumentStore.load(tmp_path / "idx")
    assert set(t.documents) == {"b", "c"}
    assert _top_doc(t, embedder, "What absorbs red light?") == "b"
    with pytest.raises(KeyError):
        t.remove("zzz")


def test_changed_document_replaces_old_chunks(embedder):
    s = _store(embedder)
    s.add([document_from_text("Entirely new text about volcanoes.", id="a")])
    assert [c.text for c in s.chunks if c.doc_id == "a"] == ["Entirely new text about volcanoes."]


def test_crash_mid_save_leaves_old_index_loadable(tmp_path, embedder, monkeypatch):
    s = _store(embedder)
    s.save(tmp_path / "idx")
    s.add([document_from_text(TEXTS["c"], id="c")])

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "save", boom)  # dies after index.faiss, before chunks/manifest
    with pytest.raises(OSError):
        s.save(tmp_path / "idx")
    monkeypatch.undo()
    t = DocumentStore.load(tmp_path / "idx")
    assert set(t.documents) == {"a", "b"}
    s.save(tmp_path / "idx")  # the next save succeeds and clears the half-written generation
    assert len(list((tmp_path / "idx").glob("gen-*"))) == 1
    assert set(DocumentStore.load(tmp_path / "idx").documents) == {"a", "b", "c"}


def test_missing_corrupt_and_incompatible(tmp_path, embedder):
    with pytest.raises(StoreNotFoundError):
        DocumentStore.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError):
        DocumentStore.load(tmp_path / "empty")
    s = _store(embedder)
    root = s.save(tmp_path / "idx")
    m = json.loads((root / "manifest.json").read_text())
    gen = root / m["generation"]

    (gen / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CorruptStoreError, match="damaged"):
        DocumentStore.load(root)

    s.save(root)
    m = json.loads((root / "manifest.json").read_text())
    (root / m["generation"] / "chunks.jsonl").write_text("")
    with pytest.raises(CorruptStoreError, match="inconsistent|damaged"):
        DocumentStore.load(root)

    s.save(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptStoreError, match="unreadable"):
        DocumentStore.load(root)

    s.save(root)
    m = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(IncompatibleStoreError, match="format version"):
        DocumentStore.load(root)

    s.save(root)
    from index.embedder import Embedder
    with pytest.raises(IncompatibleStoreError, match="embedder"):
        DocumentStore.load(root, embedder=Embedder("some/other-model"))


def test_factory_strings(embedder):
    assert resolve_factory("auto", 10) == "Flat"
    assert resolve_factory("auto", 10**6) == "HNSW32"
    s = _store(embedder, factory="HNSW32")
    assert "HNSW" in type(s.index).__name__
    assert _top_doc(s, embedder, "Where does the Danube end?") == "a"
    from index.errors import SpanQAError
    with pytest.raises(SpanQAError, match="factory"):  # refused before anything is embedded
        _store(embedder, factory="NotAnIndex")
    with pytest.raises(SpanQAError, match="cannot be trained on"):  # IVF on a tiny store
        _store(embedder, factory="IVF256,Flat").index


def test_cached_store_builds_once_loads_after_and_rebuilds_what_changed_or_broke(
        tmp_path, embedder, monkeypatch, caplog):
    """What DocumentQA.default() uses for the bundled article: the first call builds and
    saves, the next loads without embedding anything, a changed file gets its own entry, and
    a damaged entry is built again with a log line instead of failing."""
    from index.store import INDEX_CACHE_DIR, cached_store

    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXTS["a"] + "\n\n" + TEXTS["c"])
    first = cached_store([doc], embedder)
    entries = list((tmp_path / "cache" / INDEX_CACHE_DIR).iterdir())
    assert len(entries) == 1
    with monkeypatch.context() as m:
        m.setattr(embedder, "embed", lambda *a, **k: pytest.fail("a cached store embeds nothing"))
        second = cached_store([doc], embedder)
    assert [c.to_dict() for c in second.chunks] == [c.to_dict() for c in first.chunks]
    np.testing.assert_array_equal(second.vectors, first.vectors)
    np.testing.assert_array_equal(second.sentence_vectors, first.sentence_vectors)
    assert _top_doc(second, embedder, "When was the Treaty of Westphalia signed?") == doc.name

    doc.write_text(TEXTS["b"])
    third = cached_store([doc], embedder)
    assert [d.text for d in third.documents.values()] == [TEXTS["b"]]
    assert len(list((tmp_path / "cache" / INDEX_CACHE_DIR).iterdir())) == 2

    entry = next(e for e in (tmp_path / "cache" / INDEX_CACHE_DIR).iterdir() if e not in entries)
    next(entry.glob("gen-*/embeddings.npy")).write_bytes(b"not an array")
    with caplog.at_level("WARNING", logger="spanqa"):
        again = cached_store([doc], embedder)
    assert "does not load" in caplog.text
    np.testing.assert_array_equal(again.vectors, third.vectors)
    assert len(DocumentStore.load(entry).chunks) == len(third.chunks)  # the entry is whole again
