"""One visitor's chat: the transcript, questions waiting their turn, the document asked.

The page keeps a :class:`ChatSession` per visitor (in ``gr.State``, passed by reference, so
two events of one visitor see the same object). A question is shown at once with a
"Thinking…" placeholder (:meth:`ChatSession.submit`); answers are filled in strictly in the
order asked, one at a time per visitor (:meth:`ChatSession.answer_pending`), so a second
question sent while the first is being answered waits its turn instead of being lost. Plain
Python, no Gradio: the tests drive it directly.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qa.errors import SpanQAError
from qa.pipeline import DocumentQA
from qa.types import Answer
from ui.render import THINKING, answer_messages, divider, document_view, plain_answer, safe_text

log = logging.getLogger("spanqa.ui")


@dataclass
class ChatTurn:
    """A question and the messages that reply to it (the same dict objects as in the
    transcript, so they can be found again after other messages are inserted)."""

    question: str
    user_message: dict
    replies: list[dict] = field(default_factory=list)
    answer: Answer | None = None
    qa: DocumentQA | None = None  # the document set that answered (for the document view)


class ChatSession:
    def __init__(self, base: DocumentQA, feedback_log: str | Path | None = None):
        self.base = base
        self.qa = base
        self.conv = base.chat()
        self.messages: list[dict] = []
        self.turns: list[ChatTurn] = []
        self.loading: str | None = None  # title of a document being indexed, if any
        self.feedback_log = Path(feedback_log) if feedback_log else None
        self._pending: list[ChatTurn] = []
        self._lock = threading.Lock()  # one answer at a time, in order
        self._edit = threading.Lock()  # short: guards the lists

    @property
    def uploaded(self) -> bool:
        return self.qa is not self.base

    # ---- asking ---------------------------------------------------------------------------
    def submit(self, question: str) -> bool:
        """Show ``question`` with a placeholder reply; False (nothing shown) when blank."""
        question = (question or "").strip()
        if not question:
            return False
        turn = ChatTurn(question, {"role": "user", "content": safe_text(question)},
                        [{"role": "assistant", "content": THINKING}])
        with self._edit:
            self.messages.extend([turn.user_message, *turn.replies])
            self.turns.append(turn)
            self._pending.append(turn)
        return True

    def answer_pending(self, passages: int | None = None, threshold: float | None = None) -> None:
        """Answer every waiting question, oldest first."""
        with self._lock:
            while True:
                with self._edit:
                    if not self._pending:
                        return
                    turn = self._pending.pop(0)
                self._answer(turn, passages, threshold)

    def _answer(self, turn: ChatTurn, passages, threshold) -> None:
        qa, note = self.qa, ""
        if self.loading:
            note = (f"<small>“{safe_text(self.loading, False)}” is still loading; this answer "
                    f"is from {self._title(qa)}.</small>\n\n")
        try:
            a = self.conv.ask(turn.question, passages=passages, threshold=threshold)
            msgs = answer_messages(a)
            turn.answer, turn.qa = a, qa
        except SpanQAError as exc:
            msgs = [{"role": "assistant", "content": f"⚠️ {safe_text(str(exc), False)}"}]
        except Exception:  # noqa: BLE001 - a visitor never sees a traceback
            log.exception("chat failed")
            msgs = [{"role": "assistant", "content": "⚠️ Something went wrong; please try again."}]
        if note:
            msgs[0] = {**msgs[0], "content": note + msgs[0]["content"]}
        self._replace(turn, msgs)

    def _replace(self, turn: ChatTurn, msgs: list[dict]) -> None:
        with self._edit:
            at = next(i for i, m in enumerate(self.messages) if m is turn.replies[0])
            n = len(turn.replies)
            self.messages[at:at + n] = msgs
            turn.replies = msgs

    def clear(self) -> None:
        """An empty chat; the document stays, the conversation starts afresh."""
        with self._lock, self._edit:
            self.messages.clear()
            self.turns.clear()
            self.conv.reset()

    # ---- the last turn ----------------------------------------------------------------------
    def undo(self) -> str:
        """Remove the last answered turn; returns its question (to edit and send again)."""
        with self._lock, self._edit:
            if not self.turns or self.turns[-1] in self._pending:
                return ""
            turn = self.turns.pop()
            at = next(i for i, m in enumerate(self.messages) if m is turn.user_message)
            del self.messages[at:at + 1 + len(turn.replies)]
            if turn.answer is not None and self.conv.history and \
                    self.conv.history[-1].answer is turn.answer:
                self.conv.undo()
            return turn.question

    def retry(self, passages: int | None = None, threshold: float | None = None) -> None:
        """Ask the last question again (with the current settings and document)."""
        question = self.undo()
        if question and self.submit(question):
            self.answer_pending(passages, threshold)

    # ---- documents --------------------------------------------------------------------------
    @staticmethod
    def _title(qa: DocumentQA) -> str:
        docs = list(qa.store.documents.values())
        return f"“{safe_text(docs[0].title, False)}”" + (f" and {len(docs) - 1} more" if len(docs) > 1 else "")

    def use(self, qa: DocumentQA) -> None:
        """Questions go to ``qa`` from now on; a divider in the chat says so."""
        with self._lock:
            back = qa is self.base
            self.qa, self.conv, self.loading = qa, qa.chat(), None
            text = ("Back to the bundled document: questions go to " if back else
                    "New document: questions now go to ") + self._title(qa)
            if self.messages:
                with self._edit:
                    self.messages.append(divider(text))

    def last_answer(self) -> ChatTurn | None:
        return next((t for t in reversed(self.turns) if t.answer is not None), None)

    def copy_text(self) -> str:
        turn = self.last_answer()
        return plain_answer(turn.answer) if turn else ""

    def document_html(self) -> str:
        """The last answer's whole document with the answer highlighted ("" without one)."""
        turn = self.last_answer()
        if turn is None or turn.answer.abstained or turn.answer.doc_id is None:
            return ""
        a = turn.answer
        doc = turn.qa.store.documents.get(a.doc_id)
        if doc is None:
            return ""
        return document_view(doc.text, doc.title, a.start, a.end)

    # ---- feedback ---------------------------------------------------------------------------
    def feedback(self, index: int, liked: bool | str | None) -> dict | None:
        """Record a like (True), dislike (False) or its removal (None) of the reply at
        message ``index`` in the JSONL feedback log; returns the record (None when there is
        no log or the message is not an answer)."""
        if self.feedback_log is None:
            return None
        with self._edit:
            msg = self.messages[index] if 0 <= index < len(self.messages) else None
            turn = next((t for t in self.turns if any(m is msg for m in t.replies)), None)
        if turn is None or turn.answer is None:
            return None
        a = turn.answer
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "liked": liked,
               "question": a.question, "read_as": a.read_as, "answer": a.text,
               "abstained": a.abstained, "confidence": round(a.score, 4), "doc_id": a.doc_id,
               "passage_id": a.passage_id, "start": a.start, "end": a.end}
        self.feedback_log.parent.mkdir(parents=True, exist_ok=True)
        with _LOG_LOCK, open(self.feedback_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return rec


_LOG_LOCK = threading.Lock()  # one writer at a time, across sessions
