"""Retrieval finds a planted fact in a synthetic multi-page document."""
import json
from dataclasses import replace

import numpy as np
import pytest

from index.documents import load_bytes
from index.errors import CorruptStoreError
from index.store import DocumentStore
from qa.retriever import TWO_SEARCH_FUSION, FusionConfig, Retriever, fuse, score_fuse
from tests.conftest import make_pdf

FILLER = [
    "The committee reviewed quarterly budgets for regional libraries and parks.",
    "Rainfall in the northern valley was slightly above the ten year average.",
    "Local schools extended their afternoon music and sports programmes.",
    "The bus network added two evening routes to the eastern suburbs.",
    "A new bakery opened near the central market square last spring.",
    "Volunteers repaired the footbridge over the river after the storm.",
]
FACT = "The lighthouse keeper, Marta Okonkwo, restored the brass lens in 1911."


def test_planted_fact_is_retrieved_first_with_its_page(embedder):
    pages = [" ".join(FILLER[(i + j) % len(FILLER)] for j in range(4)) for i in range(12)]
    pages[8] = pages[8] + " " + FACT
    doc = load_bytes(make_pdf(pages), "town.pdf")
    store = DocumentStore(embedder, chunk_size=48, overlap=8)
    store.add([doc])
    assert len(store) >= 10
    passages = Retriever(store, top_k=3).retrieve("Who restored the brass lens of the lighthouse?")
    top = passages[0]
    assert "Marta Okonkwo" in top.chunk.text and top.rank == 1
    assert top.chunk.page == 9
    assert [p.rank for p in passages] == [1, 2, 3]
    # a passage's score is its chunk's cosine similarity (the confidence model reads it),
    # whatever place the fusion gave it
    q = embedder.embed(["Who restored the brass lens of the lighthouse?"])[0]
    rows = [store.chunks.index(p.chunk) for p in passages]
    assert [round(p.score, 5) for p in passages] == [round(x, 5) for x in store.similarity(q, rows)]


def test_bm25_prefers_rare_exact_terms_and_stems():
    from index.lexical import LexicalIndex

    bm = LexicalIndex.build(["the cat sat on the mat", "a report on quarterly budgets",
                             "serial number XK-4471 was recorded", "cats and dogs"])
    s = bm.scores(["What serial number was recorded, XK-4471?", "Which cat?", "the of and"])
    assert int(s[0].argmax()) == 2 and s[0][1] == 0
    assert s[1][0] > 0 and s[1][3] > 0 and s[1][1] == 0  # "cat" matches "cats" by its stem
    assert not s[2].any()  # stop words alone match nothing


def test_lexical_index_of_stop_words_only_matches_nothing(tmp_path):
    from index.lexical import LexicalIndex

    bm = LexicalIndex.build(["the of and", "a an"])
    assert not bm.scores(["the"]).any()
    bm.save(tmp_path / "bm")
    assert not LexicalIndex.load(tmp_path / "bm", 2).scores(["and"]).any()


def test_weighted_rrf_fusion():
    from qa.retriever import FusionConfig, fuse

    dense, lexical = [1, 2, 3], [3, 4]
    assert fuse([dense, lexical], [1.0, 1.0], 60) == [3, 1, 2, 4]  # in both lists wins
    assert fuse([dense, lexical], [1.0, 0.0], 60)[:3] == [1, 2, 3]  # weight 0: dense order
    assert fuse([dense, lexical], [0.2, 1.0], 60)[:2] == [3, 4]
    assert fuse([[5, 6]], [1.0], 0)[0] == 5
    with pytest.raises(ValueError):
        FusionConfig(pool=0)
    with pytest.raises(ValueError):
        FusionConfig(rrf_k=float("nan"))


def test_hybrid_and_dense_rank_a_store_and_follow_its_changes(embedder):
    from index.documents import document_from_text

    texts = [f"Filler paragraph {i} about gardens, weather and local markets." for i in range(30)]
    texts[17] = "The vault code for the museum is ZQ-99-ALPHA, set by curator Ines Rask."
    store = DocumentStore(embedder, chunk_size=24, overlap=0)
    store.add([document_from_text(t, id=f"d{i}") for i, t in enumerate(texts)])
    for mode in ("hybrid", "dense", "sentence", "lexical"):
        top = Retriever(store, top_k=3, mode=mode).retrieve("Who set the vault code ZQ-99-ALPHA?")
        assert top[0].chunk.doc_id == "d17"
        assert len(top) == (1 if mode == "lexical" else 3)  # BM25 keeps only matching chunks
    r = Retriever(store, top_k=3)
    r.retrieve("vault code")
    store.remove("d17")  # the BM25 cache must notice
    assert all(p.chunk.doc_id != "d17" for p in r.retrieve("Who set the vault code ZQ-99-ALPHA?"))


def test_store_round_trip_keeps_the_lexical_index(embedder, tmp_path):
    from index.documents import document_from_text

    texts = [f"Filler paragraph {i} about gardens, weather and local markets." for i in range(12)]
    texts[5] = "The harbour master, Olu Bankole, logged the freighter Kestrel at dawn."
    store = DocumentStore(embedder, chunk_size=24, overlap=0)
    store.add([document_from_text(t, id=f"d{i}") for i, t in enumerate(texts)])
    query = ["Who logged the freighter Kestrel?"]
    before = store.lexical_search(query, 3)[0]
    store.save(tmp_path / "s")
    gen = next((tmp_path / "s").glob("gen-*"))
    assert (gen / "bm25" / "params.index.json").is_file()
    loaded = DocumentStore.load(tmp_path / "s")
    assert loaded._lexical is not None  # read from disk, not rebuilt
    after = loaded.lexical_search(query, 3)[0]
    assert [(h.chunk.id, round(h.score, 5)) for h in after] == \
        [(h.chunk.id, round(h.score, 5)) for h in before]
    assert after[0].chunk.doc_id == "d5"


def test_store_saved_without_a_lexical_index_still_loads_and_answers(embedder, tmp_path):
    """Stores written before the lexical index existed have no bm25/ folder."""
    import json
    import shutil

    from index.documents import document_from_text

    store = DocumentStore(embedder, chunk_size=24, overlap=0)
    store.add([document_from_text("The vault code is ZQ-99-ALPHA.", id="v"),
               document_from_text("Gardens bloom in spring near the market.", id="g")])
    store.save(tmp_path / "old")
    shutil.rmtree(next((tmp_path / "old").glob("gen-*")) / "bm25")
    manifest = tmp_path / "old" / "manifest.json"  # nor the file checksums of later saves
    m = json.loads(manifest.read_text())
    del m["files"], m["lexical"]
    manifest.write_text(json.dumps(m))
    loaded = DocumentStore.load(tmp_path / "old")
    top = Retriever(loaded, top_k=1).retrieve("What is the vault code ZQ-99-ALPHA?")
    assert top[0].chunk.doc_id == "v"
    loaded.save(tmp_path / "old")  # the next save writes the lexical index
    assert (next((tmp_path / "old").glob("gen-*")) / "bm25").is_dir()


def test_index_built_with_the_old_embedder_keeps_loading_and_answering(tmp_path, tiny_reader_dir):
    """Stores built before the fine-tuned retriever name all-MiniLM-L6-v2 in their manifest:
    they load with it and answer; `spanqa index --rebuild` moves them to today's default."""
    from index.documents import document_from_text
    from index.embedder import BASE_EMBEDDER, DEFAULT_EMBEDDER, shared_embedder
    from qa import DocumentQA
    from qa.cli import main

    old = DocumentStore(shared_embedder(BASE_EMBEDDER), chunk_size=24, overlap=0)
    old.add([document_from_text("The vault code is ZQ-99-ALPHA, set by curator Ines Rask.", id="v"),
             document_from_text("Gardens bloom in spring near the market square.", id="g")])
    old.save(tmp_path / "old")
    qa = DocumentQA.load(tmp_path / "old", reader=str(tiny_reader_dir), passages=1)
    assert qa.store.embedder.name == BASE_EMBEDDER
    a = qa.ask("Who set the vault code?", threshold=0.0)
    assert a.doc_id == "v" and qa.store.documents["v"].text[a.start:a.end] == a.text
    assert main(["index", "--rebuild", "--out", str(tmp_path / "old")]) == 0
    assert DocumentStore.load(tmp_path / "old").embedder.name == DEFAULT_EMBEDDER


# ---- the sentence search ------------------------------------------------------------------
BURIED = ("The annual report covers budgets, staffing, roads, library hours, parks and the "
          "new recycling scheme in detail. The council also heard updates on bus timetables and "
          "school meals. Dr Ama Mensah was appointed harbour pilot in March. Street lighting "
          "and drainage repairs take up the remaining pages of the report.")


def _sentence_store(embedder):
    from index.documents import document_from_text

    texts = [f"Filler paragraph {i} about gardens, weather and local markets." for i in range(8)]
    texts += ["Harbour news: the ferry boats were repainted, and the harbour office moved.", BURIED]
    store = DocumentStore(embedder, chunk_size=96, overlap=0)
    store.add([document_from_text(t, id=f"d{i}") for i, t in enumerate(texts)])
    return store


def test_sentence_search_scores_a_chunk_by_its_best_sentence(embedder):
    store = _sentence_store(embedder)
    q = embedder.embed(["Who was appointed harbour pilot?"])
    hit = store.sentence_search(q, 3)[0][0]
    assert hit.chunk.doc_id == "d9"
    sentence = embedder.embed(["Dr Ama Mensah was appointed harbour pilot in March."])[0]
    assert hit.score == pytest.approx(float(sentence @ q[0]), abs=1e-4)  # that sentence's score
    row = next(i for i, c in enumerate(store.chunks) if c.doc_id == "d9")
    assert hit.score > float(store.vectors[row] @ q[0])  # above the whole chunk's similarity
    # every chunk has its sentences, in chunk order, and nothing else
    assert list(np.unique(store.sentence_rows)) == list(range(len(store)))
    assert np.all(np.diff(store.sentence_rows) >= 0)
    assert len(store.sentence_vectors) == len(store.sentence_rows) == len(store) + 3


def test_fusion_of_four_searches_on_a_synthetic_document(embedder):
    """The buried sentence's chunk comes first by hybrid search, by score and by rank; each
    fusion is what its formula gives from the four searches, and a weight of 0 leaves that
    search out."""
    store = _sentence_store(embedder)
    question = "Who was appointed harbour pilot?"
    vec = embedder.embed([question])
    chunk, sentence = store.chunk_scores(vec)[0], store.sentence_scores(vec)[0]
    lexical = store.lexical_scores([question])[0]
    sentence_lexical = store.sentence_lexical_scores([question])[0]
    f = FusionConfig()
    assert f.method == "score" and f.sentence_lexical_weight > 0
    z = (f.dense_weight * chunk + f.sentence_weight * sentence
         + f.lexical_weight * lexical / lexical.max()
         + f.sentence_lexical_weight * sentence_lexical / sentence_lexical.max())
    hybrid = Retriever(store, top_k=3).retrieve(question)
    assert hybrid[0].chunk.doc_id == "d9"
    assert [store.chunks.index(p.chunk) for p in hybrid] == list(np.argsort(-z, kind="stable")[:3])
    assert score_fuse(chunk, sentence, lexical, replace(f, sentence_weight=0), 3,
                      sentence_lexical) == \
        list(np.argsort(-(z - f.sentence_weight * sentence), kind="stable")[:3])
    without = z - f.sentence_lexical_weight * sentence_lexical / sentence_lexical.max()
    assert score_fuse(chunk, sentence, lexical, f, 3) == \
        list(np.argsort(-without, kind="stable")[:3])  # no sentence BM25 given: left out

    rows = {m: [h.row for h in hits[0]] for m, hits in (
        ("dense", store.search(vec, 20)), ("sentence", store.sentence_search(vec, 20)),
        ("lexical", store.lexical_search([question], 20)),
        ("sentence_lexical", store.sentence_lexical_search([question], 20)))}
    r = FusionConfig(method="rrf", dense_weight=1.0, sentence_weight=2.0, lexical_weight=2.0,
                     sentence_lexical_weight=0.5)
    by_rank = Retriever(store, top_k=3, fusion=r).retrieve(question)
    want = fuse([rows["dense"], rows["sentence"], rows["lexical"], rows["sentence_lexical"]],
                [1.0, 2.0, 2.0, 0.5], r.rrf_k)[:3]
    assert [store.chunks.index(p.chunk) for p in by_rank] == want and want[0] == 9
    two = Retriever(store, top_k=3, fusion=TWO_SEARCH_FUSION).retrieve(question)
    t = TWO_SEARCH_FUSION
    want2 = fuse([rows["dense"], rows["lexical"]], [t.dense_weight, t.lexical_weight], t.rrf_k)[:3]
    assert [store.chunks.index(p.chunk) for p in two] == want2
    with pytest.raises(ValueError, match="method"):
        FusionConfig(method="borda")


def test_sentence_bm25_scores_a_chunk_by_its_best_sentence(embedder):
    """A chunk's sentence BM25 is its best sentence's BM25 over an index of sentences, so
    the chunk where the question's words meet in one sentence beats the one where they are
    spread over several, which chunk BM25 cannot tell apart."""
    from index.documents import document_from_text
    from index.lexical import SENTENCE_BM25, LexicalIndex

    texts = ["The pilot boat left early. Much later the harbour closed for the winter.",
             "Later that winter the harbour pilot boat left early.",
             "Gardens bloom in spring near the market square."]
    store = DocumentStore(embedder, chunk_size=96, overlap=0)
    store.add([document_from_text(t, id=f"d{i}") for i, t in enumerate(texts)])
    assert len(store) == 3 and len(store.sentence_texts()) == len(store.sentence_rows) == 4
    q = ["harbour pilot boat"]
    chunk_bm25, best = store.lexical_scores(q)[0], store.sentence_lexical_scores(q)[0]
    per_sentence = LexicalIndex.build(store.sentence_texts(), *SENTENCE_BM25).scores(q)[0]
    want = [per_sentence[store.sentence_rows == c].max() for c in range(len(store))]
    np.testing.assert_allclose(best, want, rtol=1e-6)
    assert best[1] > best[0] > 0 == best[2]
    assert chunk_bm25[0] > 0 and chunk_bm25[1] > 0  # both chunks hold all three words
    hits = store.sentence_lexical_search(q, 3)[0]
    assert [h.chunk.doc_id for h in hits] == ["d1", "d0"]  # chunks matching nothing left out


def test_store_round_trip_keeps_the_sentence_bm25_and_older_stores_build_it(embedder, tmp_path):
    import shutil

    store = _sentence_store(embedder)
    q = ["Who was appointed harbour pilot?"]
    before = store.sentence_lexical_scores(q)
    store.save(tmp_path / "s")
    gen = next((tmp_path / "s").glob("gen-*"))
    assert (gen / "bm25_sentences" / "params.index.json").is_file()
    loaded = DocumentStore.load(tmp_path / "s")
    assert loaded._sentence_lexical is not None  # read from disk, not rebuilt
    np.testing.assert_allclose(loaded.sentence_lexical_scores(q), before, rtol=1e-6)
    assert loaded.sentence_lexical._bm25.k1 == 1.2  # its own BM25 settings travel with it
    # a store saved with sentence vectors but before the sentence BM25 existed
    manifest = tmp_path / "s" / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["sentences"]["lexical_folder"]
    m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("bm25_sentences/")}
    manifest.write_text(json.dumps(m))
    shutil.rmtree(gen / "bm25_sentences")
    old = DocumentStore.load(tmp_path / "s")
    assert old._sentence_lexical is None
    np.testing.assert_allclose(old.sentence_lexical_scores(q), before, rtol=1e-6)  # built
    assert Retriever(old, top_k=1).retrieve(q[0])[0].chunk.doc_id == "d9"
    old.save(tmp_path / "s")  # the next save writes it
    gen = next((tmp_path / "s").glob("gen-*"))
    assert (gen / "bm25_sentences" / "params.index.json").is_file()
    old.remove("d8")  # the cached index must follow the store's sentences
    assert old.sentence_lexical.n == len(old.sentence_rows)


def test_a_sentence_bm25_of_other_sentences_is_damage(embedder, tmp_path):
    import shutil

    from index.lexical import LexicalIndex

    store = _sentence_store(embedder)
    store.save(tmp_path / "s")
    gen = next((tmp_path / "s").glob("gen-*"))

    shutil.rmtree(gen / "bm25_sentences")
    LexicalIndex.build(["one harbour sentence", "and another"]).save(gen / "bm25_sentences")
    _drop_checksums(tmp_path / "s")  # so the store's own check is what catches it
    with pytest.raises(CorruptStoreError, match="bm25_sentences"):
        DocumentStore.load(tmp_path / "s")


def test_store_round_trip_keeps_the_sentence_vectors_and_removal_renumbers_them(embedder, tmp_path):
    store = _sentence_store(embedder)
    q = embedder.embed(["Who was appointed harbour pilot?"])
    before = [(h.chunk.id, round(h.score, 5)) for h in store.sentence_search(q, 5)[0]]
    store.save(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["sentences"]["n"] == len(store.sentence_rows)
    loaded = DocumentStore.load(tmp_path / "s")
    assert [(h.chunk.id, round(h.score, 5)) for h in loaded.sentence_search(q, 5)[0]] == before
    np.testing.assert_array_equal(loaded.sentence_rows, store.sentence_rows)
    loaded.remove("d8")  # rows after the removed chunk move up; its sentences go
    fresh = DocumentStore(embedder, chunk_size=96, overlap=0)
    fresh.add([loaded.documents[d] for d in loaded.documents])
    np.testing.assert_array_equal(loaded.sentence_rows, fresh.sentence_rows)
    np.testing.assert_allclose(loaded.sentence_vectors, fresh.sentence_vectors, atol=1e-5)
    loaded.save(tmp_path / "s")
    again = DocumentStore.load(tmp_path / "s")
    assert again.sentence_search(q, 1)[0][0].chunk.doc_id == "d9"


def test_store_saved_before_sentence_vectors_loads_answers_and_rebuilds(tmp_path, tiny_reader_dir,
                                                                       embedder):
    from qa import DocumentQA
    from qa.cli import main

    store = _sentence_store(embedder)
    store.save(tmp_path / "old")
    gen = next((tmp_path / "old").glob("gen-*"))
    for name in ("sentences.npy", "sentence_rows.npy"):
        (gen / name).unlink()
    manifest = tmp_path / "old" / "manifest.json"  # as an older spanqa wrote it
    m = json.loads(manifest.read_text())
    del m["sentences"]
    m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("sentence")}
    manifest.write_text(json.dumps(m))
    old = DocumentStore.load(tmp_path / "old")
    assert not old.has_sentences and old.sentence_search(embedder.embed(["x"]), 3) == [[]]
    qa = DocumentQA.load(tmp_path / "old", reader=str(tiny_reader_dir), passages=2)
    a = qa.ask("Who was appointed harbour pilot?", threshold=0.0)  # the two-search fusion
    assert qa.store.documents[a.doc_id].text[a.start:a.end] == a.text
    assert Retriever(old, top_k=2, mode="sentence").retrieve("harbour pilot")  # falls back
    assert Retriever(old).fusion == TWO_SEARCH_FUSION  # the fusion tuned for two searches
    assert Retriever(store).fusion == FusionConfig()
    m["sentences"] = {"n": 12}  # a manifest that promises sentence vectors it lacks is damage
    manifest.write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError, match="sentence vectors are missing"):
        DocumentStore.load(tmp_path / "old")
    assert main(["index", "--rebuild", "--out", str(tmp_path / "old")]) == 0
    assert DocumentStore.load(tmp_path / "old").has_sentences


def _drop_checksums(root) -> None:
    """Remove the manifest's file checksums, which would catch any edit first."""
    manifest = root / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["files"]
    manifest.write_text(json.dumps(m))


def test_damaged_sentence_rows_are_caught(tmp_path, embedder):
    store = _sentence_store(embedder)
    store.save(tmp_path / "s")
    gen = next((tmp_path / "s").glob("gen-*"))
    rows = np.load(gen / "sentence_rows.npy")
    np.save(gen / "sentence_rows.npy", rows[::-1].copy(), allow_pickle=False)
    _drop_checksums(tmp_path / "s")  # so the store's own check is what catches it
    with pytest.raises(CorruptStoreError, match="sentence_rows.npy"):
        DocumentStore.load(tmp_path / "s")


def test_building_a_lexical_index_does_not_turn_on_bm25s_debug_logging(caplog):
    """bm25s sets its own logger to DEBUG on import; an application logging at INFO must not
    get a line per index built (a training run builds thousands)."""
    import logging

    from index.lexical import LexicalIndex

    with caplog.at_level(logging.INFO):
        LexicalIndex.build(["the cat sat", "a dog ran"]).scores(["cat"])
    assert logging.getLogger("bm25s").getEffectiveLevel() == logging.WARNING
    assert not [r for r in caplog.records if r.name.startswith("bm25s")]
