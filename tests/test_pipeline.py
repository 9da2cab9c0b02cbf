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


def _staged_qa(tiny_reader_dir, first: int, cut: float):
    from qa.reader import ExtractiveReader

    reader = ExtractiveReader(str(tiny_reader_dir), first_passages=first, first_cut=cut)
    texts = TEXTS + ["The Louvre is a museum in Paris. It opened in 1793.",
                     "Lake Victoria borders Tanzania, Uganda and Kenya."]
    return DocumentQA.from_texts(texts, reader=reader, passages=4)


def _spans(a):
    return [(c.passage_id, c.text, round(c.score, 5)) for c in [a, *a.candidates]]


def test_staged_reading_reads_the_rest_only_below_the_cut(tiny_reader_dir, embedder, monkeypatch):
    qs = ["Where is the Eiffel Tower?", "What is the summit called?"]
    full = _staged_qa(tiny_reader_dir, 0, 0.0)
    everything = full.ask_many(qs, top_k=5, threshold=0.0)
    # a cut no confidence reaches: every question reads all its passages, as in one read
    always = _staged_qa(tiny_reader_dir, 1, 1.0)
    seen = []
    real = always.reader.read_spans
    monkeypatch.setattr(always.reader, "read_spans",
                        lambda q, ps: seen.append([len(p) for p in ps]) or real(q, ps))
    staged = always.ask_many(qs, top_k=5, threshold=0.0)
    assert seen == [[1, 1], [3, 3]]
    assert [_spans(a) for a in staged] == [_spans(a) for a in everything]
    # a cut every answer passes (threshold 0): only the first passage is read
    never = _staged_qa(tiny_reader_dir, 1, 0.0)
    first_only = never.ask_many(qs, top_k=5, threshold=0.0)
    for a, b in zip(first_only, everything):
        assert {c.passage_id for c in [a, *a.candidates]} == {b.passages[0].chunk.id}
        assert len(a.passages) == 4  # the passages retrieved are all still shown


def test_staged_reading_reads_on_before_refusing(tiny_reader_dir, embedder, monkeypatch):
    """A question the calibrated rule would refuse (here by its refusal margin, every
    confidence past the cut) reads the rest of its passages first; with the caller's own
    threshold, the rule and so the extra read are off."""
    qs = ["Where is the Eiffel Tower?", "What is the summit called?"]
    qa = _staged_qa(tiny_reader_dir, 1, 0.0)
    qa.reader.warm_up()
    cal = qa.reader.config.calibration_for(qa.store.embedder.name)
    cal.threshold, cal.refusal_margin = 0.0, 1e6  # no span beats no-answer by a million
    seen = []
    real = qa.reader.read_spans
    monkeypatch.setattr(qa.reader, "read_spans", lambda q, ps: seen.append([len(p) for p in ps]) or real(q, ps))
    refused = qa.ask_many(qs, top_k=5)
    assert seen == [[1, 1], [3, 3]] and all(a.abstained and a.candidates for a in refused)
    seen.clear()
    answered = qa.ask_many(qs, top_k=5, threshold=0.0)
    assert seen == [[1, 1]] and not any(a.abstained for a in answered)


def test_staged_reading_settings_are_checked(tiny_reader_dir):
    from qa.errors import OptionError
    from qa.reader import ExtractiveReader

    with pytest.raises(OptionError, match="first_cut"):
        ExtractiveReader(str(tiny_reader_dir), first_cut=1.5)
    with pytest.raises(OptionError, match="first_passages"):
        ExtractiveReader(str(tiny_reader_dir), first_passages=-1)


def test_read_all_turns_staged_reading_off(tiny_reader_dir, tmp_path, monkeypatch):
    import shutil

    from qa.cli import reader_env
    from qa.reader import READ_ALL_ENV, ExtractiveReader, ReaderConfig

    folder = tmp_path / "staged"
    shutil.copytree(tiny_reader_dir, folder)
    ReaderConfig(first_passages=2, first_cut=0.5).save(folder)
    monkeypatch.setenv(READ_ALL_ENV, "0")  # recorded, so the teardown restores what was there
    r = ExtractiveReader(str(folder))
    r.warm_up()
    assert (r.config.first_passages, r.config.first_cut) == (2, 0.5)
    reader_env(None, True)  # what `spanqa ask --read-all` does
    r = ExtractiveReader(str(folder))
    r.warm_up()
    assert r.config.first_passages == 0
