"""The readers that ship inside the package (``default``: the 12-layer reader packed over the
pip-installed all-mpnet-base-v2; ``fast``: the 6-layer MiniLM reader): each loads offline,
answers the bundled article, and abstains when the article does not hold the answer."""
import json

import pytest

from qa.metrics import score
from qa.packed import DELTA_CONFIG_FILE, DELTA_WEIGHTS_FILE
from qa.pipeline import DocumentQA
from qa.reader import BUNDLED_READERS, READER_CONFIG_FILE

# Our own questions, written for this test (the eval set holds others).
ANSWERABLE = [
    ("Which US president gave Ukraine permission to strike inside Russia with American arms?",
     ["Joe Biden", "President Joe Biden", "Biden"]),
    ("Who leads NATO as its Secretary General?", ["Jens Stoltenberg"]),
    ("Which Kremlin spokesperson accused the US of escalating tensions?", ["Dmitry Peskov"]),
    ("What did Putin threaten as a possible response?", ["potential nuclear retaliation", "nuclear retaliation"]),
    ("Which European country is weighing more training for Ukrainian troops?", ["France"]),
    ("Which region is the US authorization limited to?", ["Kharkiv", "the Kharkiv region"]),
]
UNANSWERABLE = [
    "What is the name of the ship that sank in the Black Sea last week?",
    "How many tanks does Germany plan to deliver in 2025?",
]


@pytest.fixture(scope="module", params=["default", "fast"])
def qa(request):
    q = DocumentQA.default(reader=request.param)
    q.warm_up()
    return q


@pytest.mark.parametrize("name", ["default", "fast"])
def test_the_bundled_readers_are_self_describing_and_small(name):
    folder = BUNDLED_READERS[name]
    cfg = json.loads((folder / READER_CONFIG_FILE).read_text())
    assert 0 < cfg["calibration"]["threshold"] < 1
    assert (folder / "README.md").exists()
    weights = [f for f in folder.iterdir() if f.suffix == ".safetensors"]
    assert weights and sum(f.stat().st_size for f in weights) < 60_000_000


def test_the_default_reader_is_a_delta_over_its_pip_shipped_base():
    folder = BUNDLED_READERS["default"]
    meta = json.loads((folder / DELTA_CONFIG_FILE).read_text())
    assert meta["base"] == "all-mpnet-base-v2" and meta["base_sha256"]
    assert (folder / DELTA_WEIGHTS_FILE).is_file()
    assert not (folder / "model.safetensors").exists()


@pytest.mark.parametrize("question,golds", ANSWERABLE)
def test_answers_questions_about_the_article(qa, question, golds):
    a = qa.ask(question)
    assert not a.abstained, (question, a.candidates[:1])
    em, f1 = score(a.text, golds)
    assert f1 >= 0.5, (question, a.text)
    assert qa.store.documents[a.doc_id].text[a.start:a.end] == a.text


@pytest.mark.parametrize("question", UNANSWERABLE)
def test_abstains_when_the_article_cannot_answer(qa, question):
    a = qa.ask(question)
    assert a.abstained, (question, a.text, a.score)


def test_every_built_in_example_question_is_answered(qa):
    from ui.app import DEFAULT_EXAMPLES

    refused = [a.question for a in qa.ask_many(DEFAULT_EXAMPLES) if a.abstained]
    assert not refused  # a clicked example must never be met with "the document doesn't say"
