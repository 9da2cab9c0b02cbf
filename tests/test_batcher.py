"""Concurrent questions answered together (qa.batcher): each caller gets the answer ask()
would give, batches form under load, and one caller's bad question is its error alone."""
import threading

import pytest

from qa.batcher import AskBatcher
from qa.errors import EmptyQuestionError
from qa.pipeline import DocumentQA

TEXT = ("The bridge over the Vltava was opened in 1932 by Mayor Lena Ruiz. Lena Ruiz said the "
        "bridge would carry trams. The Kovar Museum stands next to it and opened in 1901.")
QUESTIONS = ["Who opened the bridge?", "When was the bridge opened?", "What will it carry?",
             "What stands next to the bridge?", "When did the museum open?", "Who is Lena Ruiz?"]


@pytest.fixture(scope="module")
def qa(tiny_reader_dir, embedder):
    q = DocumentQA.from_texts([TEXT], ids=["bridge.txt"], reader=str(tiny_reader_dir))
    q.warm_up()
    return q


def _ask_all(batcher, qa, questions, **kw):
    out, errors = [None] * len(questions), [None] * len(questions)
    start = threading.Barrier(len(questions))

    def one(i):
        start.wait()
        try:
            out[i] = batcher.ask(qa, questions[i], **kw)
        except Exception as exc:  # noqa: BLE001
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out, errors


def test_concurrent_questions_get_their_own_answers_in_batches(qa):
    batcher = AskBatcher(max_batch=8, max_wait=0.2)
    got, errors = _ask_all(batcher, qa, QUESTIONS * 2, threshold=0.0)
    assert errors == [None] * len(got)
    alone = {q: qa.ask(q, threshold=0.0) for q in QUESTIONS}
    for a in got:
        want = alone[a.question]
        assert (a.text, a.start, a.end, a.doc_id) == (want.text, want.start, want.end, want.doc_id)
        assert a.score == pytest.approx(want.score, abs=1e-4)
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes) == len(got)


def test_a_bad_question_is_its_callers_error_alone(qa):
    batcher = AskBatcher(max_batch=8, max_wait=0.2)
    got, errors = _ask_all(batcher, qa, ["Who opened the bridge?", "   ", "Who is Lena Ruiz?"],
                           threshold=0.0)
    assert isinstance(errors[1], EmptyQuestionError) and errors[0] is None and errors[2] is None
    assert got[0].text and got[2].text


def test_a_failing_batch_is_retried_one_question_at_a_time(qa, monkeypatch):
    real = DocumentQA.ask_many

    def flaky(self, questions, *a, **kw):
        if len(questions) > 1 or "museum" in questions[0]:
            raise RuntimeError("boom")
        return real(self, questions, *a, **kw)

    monkeypatch.setattr(DocumentQA, "ask_many", flaky)
    batcher = AskBatcher(max_batch=8, max_wait=0.2)
    got, errors = _ask_all(batcher, qa, ["Who opened the bridge?", "When did the museum open?"],
                           threshold=0.0)
    assert got[0] is not None and errors[0] is None
    assert isinstance(errors[1], RuntimeError) and got[1] is None


def test_settings_are_checked_before_queueing():
    with pytest.raises(ValueError):
        AskBatcher(max_batch=0)
