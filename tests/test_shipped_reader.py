"""The reader that ships inside the package: loads offline, answers the bundled article, and
abstains when the article does not hold the answer."""
import json

import pytest

from qa.metrics import score
from qa.pipeline import DocumentQA
from qa.reader import DEFAULT_READER_DIR, READER_CONFIG_FILE

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


@pytest.fixture(scope="module")
def qa():
    q = DocumentQA.default()
    q.warm_up()
    return q


def test_the_bundled_reader_is_self_describing():
    cfg = json.loads((DEFAULT_READER_DIR / READER_CONFIG_FILE).read_text())
    assert 0 < cfg["calibration"]["threshold"] < 1
    assert (DEFAULT_READER_DIR / "model.safetensors").stat().st_size < 60_000_000
    assert (DEFAULT_READER_DIR / "README.md").exists()


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
