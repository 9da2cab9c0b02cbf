"""A visitor's chat (ui.session) and the page's text helpers, without a browser: questions
wait their turn, retry/undo act on the last turn, a new document leaves a divider, feedback
lands in the log, copy gives plain text, the document view highlights the answer."""
import json
import threading

import pytest

from index.documents import document_from_text
from qa.pipeline import DocumentQA
from qa.types import Answer
from ui.render import THINKING, document_view, highlighted_passage, plain_answer, trimmed, word_bounds
from ui.session import ChatSession
from ui.suggest import answerable_examples, candidate_questions

TEXT = ("The bridge over the Vltava was opened in 1932 by Mayor Lena Ruiz. "
        "Lena Ruiz said the bridge would carry trams. The Kovar Museum stands next to it.")


@pytest.fixture(scope="module")
def qa(tiny_reader_dir, embedder):
    q = DocumentQA.from_texts([TEXT], ids=["bridge.txt"], reader=str(tiny_reader_dir))
    q.warm_up()
    return q


def test_questions_show_at_once_and_are_answered_in_the_order_asked(qa):
    chat = ChatSession(qa)
    assert not chat.submit("   ")  # nothing shown for a blank question
    assert chat.submit("Who opened the bridge?") and chat.submit("When was it opened?")
    assert [m["content"] for m in chat.messages if m["role"] == "assistant"] == [THINKING, THINKING]
    chat.answer_pending(passages=3, threshold=0.0)
    assert THINKING not in [m["content"] for m in chat.messages]
    users = [i for i, m in enumerate(chat.messages) if m["role"] == "user"]
    assert len(users) == 2 and users[0] == 0
    assert [t.answer.question for t in chat.turns] == ["Who opened the bridge?", "When was it opened?"]
    assert chat.turns[1].answer.read_as  # the second was read in the light of the first
    # the second question's reply comes after the second question, not mixed with the first's
    assert all(m["role"] == "assistant" for m in chat.messages[users[1] + 1:])


def test_a_question_sent_while_another_is_answered_waits_and_is_not_lost(qa):
    chat = ChatSession(qa)
    chat.submit("Who opened the bridge?")
    worker = threading.Thread(target=chat.answer_pending, args=(3, 0.0))
    with chat._lock:  # the first answer is "in progress"
        worker.start()
        chat.submit("What will the bridge carry?")
    worker.join(60)
    chat.answer_pending(3, 0.0)  # the second question's own event: nothing left to do
    assert len(chat.turns) == 2 and all(t.answer is not None for t in chat.turns)
    assert THINKING not in [m["content"] for m in chat.messages]


def test_undo_and_retry_act_on_the_last_turn_and_the_conversation(qa):
    chat = ChatSession(qa)
    for q in ("Who opened the bridge?", "When was it opened?"):
        chat.submit(q)
    chat.answer_pending(3, 0.0)
    n_first = len(chat.turns[0].replies) + 1
    assert chat.undo() == "When was it opened?"
    assert len(chat.messages) == n_first and len(chat.conv.history) == 1
    chat.retry(3, 0.0)
    assert [t.question for t in chat.turns] == ["Who opened the bridge?"]
    assert len(chat.conv.history) == 1 and chat.turns[0].answer is chat.conv.history[0].answer
    chat.clear()
    assert chat.messages == [] and chat.turns == [] and chat.conv.history == []
    assert chat.undo() == ""  # nothing to undo: no error


def test_a_new_document_leaves_a_divider_and_the_chat_stays(qa, tiny_reader_dir, embedder):
    chat = ChatSession(qa)
    chat.submit("Who opened the bridge?")
    chat.answer_pending(3, 0.0)
    before = len(chat.messages)
    other = DocumentQA.from_texts(["Otters live in the river."], ids=["otters.txt"], reader=qa.reader)
    chat.use(other)
    assert chat.uploaded and len(chat.messages) == before + 1
    assert "New document" in chat.messages[-1]["content"] and "Otters live" in chat.messages[-1]["content"]
    chat.loading = "big.pdf"  # a question asked while another upload is indexing says so
    chat.submit("Where do otters live?")
    chat.answer_pending(3, 0.0)
    assert "still loading" in chat.turns[-1].replies[0]["content"]
    chat.use(qa)
    assert not chat.uploaded and "Back to the bundled document" in chat.messages[-1]["content"]
    assert chat.conv.history == []  # a new document, a new conversation


def test_feedback_goes_to_the_log_only_when_there_is_one(qa, tmp_path):
    chat = ChatSession(qa)
    chat.submit("Who opened the bridge?")
    chat.answer_pending(3, 0.0)
    assert chat.feedback(1, True) is None  # no log: nothing written
    log = tmp_path / "fb" / "feedback.jsonl"
    chat = ChatSession(qa, feedback_log=log)
    chat.submit("Who opened the bridge?")
    chat.answer_pending(3, 0.0)
    assert chat.feedback(0, True) is None  # the user's own message is not an answer
    assert chat.feedback(99, False) is None
    rec = chat.feedback(1, False)
    saved = [json.loads(line) for line in log.read_text().splitlines()]
    assert saved == [rec] and rec["liked"] is False and rec["question"] == "Who opened the bridge?"
    assert TEXT[rec["start"]:rec["end"]] == rec["answer"]


def test_copy_gives_the_answer_and_citation_as_plain_text_and_the_document_view_marks_it(qa):
    chat = ChatSession(qa)
    assert chat.copy_text() == "" and chat.document_html() == ""
    chat.submit("Who opened the bridge?")
    chat.answer_pending(3, 0.0)
    a = chat.turns[0].answer
    text = chat.copy_text()
    assert a.text in text and a.title in text and f"characters {a.start}\u2013{a.end}" in text
    assert "<" not in text and "&#" not in text
    html = chat.document_html()
    assert html.count('id="doc-answer"') == 1


def test_plain_answer_of_an_abstention_says_so():
    a = Answer(question="Why?", text="", score=0.0, abstained=True, no_answer_score=1.0)
    assert plain_answer(a) == "Why?\nThe document doesn't say."


def test_passages_are_trimmed_at_word_boundaries_and_keep_line_breaks():
    text = "alpha beta gamma\ndelta epsilon zeta eta theta"
    lo, hi = word_bounds(text, 2, 30)
    assert text[lo:hi] == "beta gamma\ndelta epsilon"
    assert trimmed(text, 25) == "alpha beta gamma<br>delta…"  # not cut inside "epsilon"
    assert trimmed(text, 20) == "alpha beta gamma…" and trimmed(text, 99) == "alpha beta gamma<br>delta epsilon zeta eta theta"
    html = highlighted_passage("one two three four five six", 8, 13, context=5)
    assert html.startswith("…two ") and "four…" in html and "<mark" in html
    view = document_view("a\nb <b>c</b> d", "T", 4, 12)
    assert '<mark id="doc-answer" class="spanqa-answer">&#60;b&#62;c' in view and "a<br>" in view


def test_candidate_questions_ask_about_people_and_organisations():
    qs = candidate_questions(document_from_text(TEXT))
    assert "Who is Lena Ruiz?" in qs and "What is the Kovar Museum?" in qs
    assert "What did Lena Ruiz say?" in qs and "What happened in 1932?" in qs
    odd = candidate_questions(document_from_text(
        "Ancient Egyptian art reached the United States. The United States bought Ancient "
        "Egyptian tombs. Boats on the Nile River carried them."))
    assert not any("Ancient" in q or "United States" in q for q in odd)
    assert "Where is the Nile River?" in odd


def test_only_confidently_answered_examples_are_offered(qa):
    doc = next(iter(qa.store.documents.values()))
    assert answerable_examples(qa, doc, min_confidence=1.01) == []  # none is that sure
    kept = answerable_examples(qa, doc, min_confidence=0.0)
    assert kept and set(kept) <= set(candidate_questions(doc, 10))
