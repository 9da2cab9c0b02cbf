"""Follow-up questions: the rules that make them self-contained, and a conversation through
the API and the terminal chat."""
import pytest

from qa.conversation import Turn, rewrite
from qa.types import Answer


def turn(question: str, answer: str) -> Turn:
    return Turn(question, question, Answer(question=question, text=answer, score=0.9,
                                           abstained=not answer, no_answer_score=0.1))


@pytest.mark.parametrize("prev_q,prev_a,follow,read_as", [
    ("Who is the Kremlin spokesperson?", "Dmitry Peskov", "When did he say that?",
     "When did Dmitry Peskov say that?"),
    ("Who is the NATO Secretary General?", "Jens Stoltenberg", "And the Kremlin spokesperson?",
     "Who is the Kremlin spokesperson?"),
    ("Who is the NATO Secretary General?", "Jens Stoltenberg", "What about the US Defense Secretary?",
     "Who is the US Defense Secretary?"),
    ("Who approved the recommendation?", "Biden", "Who backed it?", "Who backed the recommendation?"),
    ("In what year was Nikola Tesla born?", "1856", "In what country was he born?",
     "In what country was Nikola Tesla born?"),
    ("Whose visit laid the groundwork?", "Antony Blinken", "What did his visit highlight?",
     "What did Antony Blinken's visit highlight?"),
    ("What is the capital of Kenya?", "Nairobi", "What mountain is near it?",
     "What mountain is near Nairobi?"),
    ("Who approved the recommendation?", "Joe Biden", "When?",
     "When Joe Biden approved the recommendation?"),
])
def test_follow_ups_are_made_self_contained(prev_q, prev_a, follow, read_as):
    assert rewrite(follow, [turn(prev_q, prev_a)]) == (read_as, True)


@pytest.mark.parametrize("question", [
    "Who is the Russian president?", "What is the population of Kharkiv?",
    "Which city is the focus of the fighting near the border?",
    "How are chloroplasts similar to mitochondria in their own DNA?",
])
def test_stand_alone_questions_are_never_rewritten(question):
    assert rewrite(question, [turn("Who is the NATO Secretary General?", "Jens Stoltenberg")]) == \
        (question, False)
    assert rewrite(question, []) == (question, False)


def test_conversation_api_keeps_history_and_reads_follow_ups_in_context(tiny_reader_dir):
    from qa import DocumentQA

    qa = DocumentQA.default(reader=str(tiny_reader_dir))
    conv = qa.chat()
    first = conv.ask("Who is the Kremlin spokesperson?", threshold=0.0)
    assert first.read_as == "Who is the Kremlin spokesperson?"
    second = conv.ask("What did he accuse the US and NATO of?", threshold=0.0)
    assert second.read_as.startswith("What did ") and " he " not in second.read_as
    assert first.passage_id in {p.chunk.id for p in second.passages}  # its passage is read again
    assert [t.question for t in conv.history] == ["Who is the Kremlin spokesperson?",
                                                  "What did he accuse the US and NATO of?"]
    conv.reset()
    assert conv.history == []
    third = conv.ask("What did he accuse the US and NATO of?", threshold=0.0)
    assert third.read_as == "What did he accuse the US and NATO of?"  # no history: as asked


def test_terminal_chat_says_how_a_follow_up_was_read(tiny_reader_dir, monkeypatch, capsys):
    from qa.cli import main

    lines = iter(["Who is the Kremlin spokesperson?", "What did he accuse the US of?", "/new",
                  "What did he accuse the US of?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--reader", str(tiny_reader_dir), "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("Read as: What did ") == 1 and "(a new conversation)" in out


def test_reply_shows_how_a_rewritten_question_was_read():
    from ui.render import answer_messages

    a = Answer(question="When did he say it?", text="Friday", score=0.9, abstained=False,
               no_answer_score=0.1, doc_id="d", title="T", passage_text="on Friday", start=3,
               end=9, passage_start=3, passage_end=9, read_as="When did Dmitry Peskov say it?")
    assert "Read as: “When did Dmitry Peskov say it?”" in answer_messages(a)[0]["content"]
    a.read_as = a.question
    assert "Read as" not in answer_messages(a)[0]["content"]
