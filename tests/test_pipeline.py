"""The public API over a tiny random reader: shapes, spans and errors, not accuracy."""
import pytest

from qa import Answer, DocumentQA
from qa.errors import EmptyQuestionError, QuestionTooLongError

TEXTS = ["The Eiffel Tower is in Paris. It was finished in 1889.",
         "Mount Kilimanjaro is in Tanzania. Its summit is Uhuru Peak."]


@pytest.fixture(scope="module")
def qa(tiny_reader_dir, embedder):
    return DocumentQA.from_texts(TEXTS, ids=["paris", "kili"], reader=str(tiny_reader_dir))


def test_answer_is_a_span_of_the_document_and_the_passage(qa):
    a = qa.ask("Where is Kilimanjaro?", threshold=0.0)
    assert isinstance(a, Answer) and not a.abstained
    doc = qa.store.documents[a.doc_id]
    assert doc.text[a.start:a.end] == a.text
    assert a.passage_text[a.passage_start:a.passage_end] == a.text
    assert a.title == doc.title and a.passage_id.startswith(a.doc_id)
    assert [p.rank for p in a.passages] == list(range(1, len(a.passages) + 1))
    assert {p.chunk.doc_id for p in a.passages} <= {"paris", "kili"}
    assert len(a.candidates) <= 2
    d = a.to_dict()
    assert d["text"] == a.text and d["passages"][0]["text"]


def test_ask_many_matches_ask(qa):
    qs = ["Where is the Eiffel Tower?", "What is the summit called?"]
    many = qa.ask_many(qs, threshold=0.0)
    assert [a.question for a in many] == qs
    one = qa.ask(qs[1], threshold=0.0)
    assert (many[1].text, many[1].start) == (one.text, one.start)
    assert many[1].score == pytest.approx(one.score, abs=1e-5)


def test_abstention_keeps_candidates_and_passages(qa):
    a = qa.ask("Where is the Eiffel Tower?", threshold=1.0)
    assert a.abstained and a.text == "" and a.start is None
    assert a.passages and a.candidates


@pytest.mark.parametrize("q", ["", "   ", "\n\t"])
def test_empty_question(qa, q):
    with pytest.raises(EmptyQuestionError):
        qa.ask(q)


def test_too_long_question(qa):
    with pytest.raises(QuestionTooLongError):
        qa.ask("word " * 400)


def test_save_load_and_add(qa, tmp_path, tiny_reader_dir):
    qa.save(tmp_path / "idx")
    loaded = DocumentQA.load(tmp_path / "idx", reader=str(tiny_reader_dir))
    assert set(loaded.store.documents) == {"paris", "kili"}
    assert loaded.add_texts(["Lake Baikal is the deepest lake."], ids=["baikal"]) == ["baikal"]
    assert loaded.retriever.retrieve("deepest lake")[0].chunk.doc_id == "baikal"
    assert loaded.reader is qa.reader  # models are shared, not loaded twice
