"""Conversations: follow-up questions read in the light of the earlier turns.

    conv = qa.chat()
    conv.ask("Who is the Kremlin spokesperson?")            # "Dmitry Peskov"
    a = conv.ask("What did he accuse the US of?")
    a.read_as                                               # "What did Dmitry Peskov accuse the US of?"

spanqa has no generative model to rewrite a question, so :func:`rewrite` uses rules that
cover the common follow-ups: a pronoun (he, she, it, they, his, their, ...) is replaced by
what the previous turn was about (its answer when it asked "who", else the last name in it);
a bare "Why?" / "When?" asks that of the previous question; "And the other one?" / "What
about X?" asks the previous question of X. A question that stands alone (no pronoun, no
ellipsis) is never rewritten.

A follow-up is also *retrieved* with the earlier turn: the search query is the rewritten
question plus the previous question and answer, and the passage of the previous answer is
always among those read. The reader gets the rewritten question; ``Answer.read_as`` says
what was answered.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from qa.pipeline import DocumentQA, check_count, check_question, check_threshold
from qa.types import Answer

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\S")
PERSON = {"he", "him", "his", "she", "her", "hers", "himself", "herself"}
THING = {"it", "its", "they", "them", "their", "theirs", "itself", "themselves"}
WH = ("who", "whom", "whose", "what", "when", "where", "which", "why", "how")
AUX = {"is", "are", "was", "were", "did", "does", "do", "has", "have", "had", "will", "would",
       "can", "could", "should", "might", "may"}
_FUNCTION = {"to", "in", "on", "at", "for", "with", "about", "from", "by", "and", "or", "of",
             "as", "than", "that", "?", ".", ",", "!"}
_ELLIPSIS = re.compile(r"^(?:and|but|so)?\s*(why|when|where|how|who|what|which)(?: so| then| exactly)?\s*\??$",
                       re.IGNORECASE)
_WHAT_ABOUT = re.compile(r"^(?:and|but)?\s*(?:what|how)\s+about\s+(.+?)\s*\??$"
                         r"|^and\s+((?!(?:who|whom|whose|what|when|where|which|why|how)\b)"
                         r"(?:\S+\s*){1,5}?)\s*\?$", re.IGNORECASE)
_NAME = re.compile(r"(?:[A-Z][\w'’.-]*\s+)*[A-Z][\w'’.-]*")


@dataclass
class Turn:
    question: str
    read_as: str
    answer: Answer


def _names(text: str) -> list[str]:
    """Capitalised word runs (names), leaving out the sentence's first word and a possessive
    ending ("Tesla's" gives "Tesla")."""
    out = []
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        if m.start() == len(text) - len(text.lstrip()):
            words = words[1:]
        while words and words[0].lower() in WH + tuple(AUX) + ("the", "a", "an", "and"):
            words = words[1:]
        if words:
            out.append(re.sub(r"['’]s$", "", " ".join(words)))
    return out


def _antecedent(prev: Turn, person: bool) -> str | None:
    """What a pronoun in the next question most likely points at, or None when unsure."""
    ans = "" if prev.answer.abstained else prev.answer.text.strip().rstrip(".")
    asked_who = prev.read_as.lower().startswith(("who ", "whom ", "whose "))
    names = _names(prev.read_as)
    if person:
        if ans and asked_who and ans[:1].isupper():
            return ans
        return names[-1] if names else None
    if asked_who:  # "it" is not the person answered: the thing the question was about
        m = re.search(r"\bthe\b[^?]*$", prev.read_as.rstrip(" ?"))
        return m.group(0) if m else (names[-1] if names else None)
    if ans and ans[:1].isupper() and len(ans.split()) <= 6:
        return ans
    return names[-1] if names else None


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _swap_pronouns(question: str, prev: Turn) -> str | None:
    tokens = _WORD.findall(question)
    low = [t.lower() for t in tokens]
    own = {i for i in range(len(low) - 1) if low[i + 1] == "own"}  # "their own DNA": reflexive
    if not any((t in PERSON or t in THING) and i not in own for i, t in enumerate(low)):
        return None
    out, changed = [], False
    for i, (t, lt) in enumerate(zip(tokens, low)):
        if (lt in PERSON or lt in THING) and i not in own:
            who = _antecedent(prev, person=lt in PERSON)
            if who:
                nxt = low[i + 1] if i + 1 < len(low) else "?"
                possessive = lt in ("his", "its", "their") or (lt == "her" and nxt not in _FUNCTION)
                out.append(_possessive(who) if possessive else who)
                changed = True
                continue
        out.append(t)
    if not changed:
        return question  # a pronoun without a clear antecedent: read in context, as asked
    text = " ".join(out)
    return re.sub(r"\s+([?.!,;:])", r"\1", text)


def _clause(prev: Turn) -> str:
    """The previous question as a clause without its question word: "Who approved the
    recommendation?" answered "Joe Biden" gives "Joe Biden approved the recommendation"."""
    words = prev.read_as.rstrip(" ?").split()
    if not words or words[0].lower() not in WH:
        return prev.read_as.rstrip(" ?")
    rest = words[1:]
    ans = "" if prev.answer.abstained else prev.answer.text.strip()
    if words[0].lower() in ("who", "what", "which") and rest and rest[0].lower() not in AUX and ans:
        return " ".join([ans] + rest)  # the answer was the subject
    return " ".join(rest)


def rewrite(question: str, history: list[Turn]) -> tuple[str, bool]:
    """``(read_as, is_follow_up)``: the question made self-contained by the last turn, or the
    question itself when it stands alone (or there is no history)."""
    if not history:
        return question, False
    prev = history[-1]
    stripped = re.sub(r"^(?:and|but|so)\s+(?=(?:who|whom|whose|what|when|where|which|why|how)\b\s+\S)",
                      "", question.strip(), flags=re.IGNORECASE)
    if stripped != question.strip():
        question = stripped[:1].upper() + stripped[1:]
    m = _ELLIPSIS.match(question.strip())
    if m:
        return f"{m.group(1).capitalize()} {_clause(prev)}?", True
    m = _WHAT_ABOUT.match(question.strip())
    if m:
        target = (m.group(1) or m.group(2)).strip()
        words = prev.read_as.rstrip(" ?").split()
        if len(words) >= 2 and words[0].lower() in WH and words[1].lower() in AUX:
            return f"{words[0]} {words[1]} {target}?", True
        replaced = re.sub(r"\b(the|a|an)\b[^?]*$", target, prev.read_as.rstrip(" ?"), count=1)
        return (replaced if replaced != prev.read_as.rstrip(" ?") else
                f"{prev.read_as.rstrip(' ?')} {target}") + "?", True
    swapped = _swap_pronouns(question, prev)
    if swapped:
        return swapped, True
    words = question.rstrip(" ?").split()
    if len(words) <= 6 and {w.lower() for w in words} & {"that", "this", "then", "there"} \
            and not _names(" ".join(words[1:])):
        return question, True  # "When did that happen?": nothing to swap, but read in context
    return question, False


@dataclass
class Conversation:
    """Turns asked of one :class:`DocumentQA`; ``ask`` reads follow-ups in context."""

    qa: DocumentQA
    max_history: int = 8
    history: list[Turn] = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def undo(self) -> Turn | None:
        """Forget the last turn (so the next question is read without it); returns it, or
        None when there is none."""
        return self.history.pop() if self.history else None

    def ask(self, question: str, top_k: int = 3, passages: int | None = None,
            threshold: float | None = None) -> Answer:
        q = check_question(question)
        top_k = check_count(top_k, "answers", 20)
        threshold = check_threshold(threshold)
        read_as, follow = rewrite(q, self.history)
        if not follow:
            answer = self.qa.ask(q, top_k, passages, threshold)
        else:
            prev = self.history[-1]
            context = " ".join([read_as, prev.read_as] + ([] if prev.answer.abstained
                                                          else [prev.answer.text]))
            keep = next((p for p in prev.answer.passages if p.chunk.id == prev.answer.passage_id),
                        None)
            answer = self.qa.ask_follow_up(read_as, context, keep, top_k, passages, threshold)
        answer.question, answer.read_as = q, read_as  # as asked, and as answered
        self.history.append(Turn(q, read_as, answer))
        del self.history[:-self.max_history]
        return answer
