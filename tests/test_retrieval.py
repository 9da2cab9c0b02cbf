"""Retrieval finds a planted fact in a synthetic multi-page document."""
from index.documents import load_bytes
from index.store import DocumentStore
from qa.retriever import Retriever
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
    assert passages[0].score >= passages[1].score >= passages[2].score


def test_bm25_prefers_rare_exact_terms():
    from qa.retriever import BM25

    bm = BM25(["the cat sat on the mat", "a report on quarterly budgets",
               "serial number XK-4471 was recorded", "cats and dogs"])
    s = bm.scores("What serial number was recorded, XK-4471?")
    assert int(s.argmax()) == 2 and s[1] == 0


def test_hybrid_and_dense_rank_a_store_and_follow_its_changes(embedder):
    from index.documents import document_from_text

    texts = [f"Filler paragraph {i} about gardens, weather and local markets." for i in range(30)]
    texts[17] = "The vault code for the museum is ZQ-99-ALPHA, set by curator Ines Rask."
    store = DocumentStore(embedder, chunk_size=24, overlap=0)
    store.add([document_from_text(t, id=f"d{i}") for i, t in enumerate(texts)])
    for mode in ("hybrid", "dense"):
        top = Retriever(store, top_k=3, mode=mode).retrieve("Who set the vault code ZQ-99-ALPHA?")
        assert top[0].chunk.doc_id == "d17" and len(top) == 3
    r = Retriever(store, top_k=3)
    r.retrieve("vault code")
    store.remove("d17")  # the BM25 cache must notice
    assert all(p.chunk.doc_id != "d17" for p in r.retrieve("Who set the vault code ZQ-99-ALPHA?"))
