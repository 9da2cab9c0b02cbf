"""Answers as chat messages: the answer, its confidence, the passage with the answer
highlighted, a citation; runner-ups fold away. Pure functions of an ``Answer`` (tested alone).

Everything that comes from a document (answers, passages, titles) goes through
:func:`safe_text` before any markup is added: HTML is escaped and so is every character that
Markdown would read as syntax, so a document cannot make the page render its bold, links,
code, headings or images (a remote image would make the visitor's browser fetch it)."""
from __future__ import annotations

from qa.types import Answer

# HTML's special characters and those Markdown (with Gradio's extensions: math,
# strikethrough, tables) reads as syntax, each to a numeric character reference.
_INERT = {ord(c): f"&#{ord(c)};" for c in "&<>\"'\\`*_{}[]()#+-.!|~$=:"}


def safe_text(text: str | None, keep_lines: bool = True) -> str:
    """Document text made inert for a Markdown + HTML chat message: every character that
    HTML or Markdown would read as markup becomes a character reference; line breaks are kept
    as ``<br>`` (or become spaces)."""
    out = (text or "").translate(_INERT)
    return out.replace("\n", "<br>" if keep_lines else " ")


CONFIDENCE_LEVELS = ((0.7, "high"), (0.4, "medium"), (0.0, "low"))

# Colours for light and dark mode, each at WCAG AA contrast (≥ 4.5:1) on Gradio's chat
# bubble backgrounds; the highlighted answer sets its own text colour for the same reason.
CSS = """
.spanqa-conf { font-weight: 600; }
.spanqa-conf.high { color: #1a7f37; } .spanqa-conf.medium { color: #8a5a00; }
.spanqa-conf.low { color: #b42318; }
.dark .spanqa-conf.high { color: #4ade80; } .dark .spanqa-conf.medium { color: #fbbf24; }
.dark .spanqa-conf.low { color: #fca5a5; }
mark.spanqa-answer { background: #fff3a3; color: #1f2328; padding: 0 2px; }
.dark mark.spanqa-answer { background: #5c4d00; color: #fffbe6; }
.spanqa-divider { text-align: center; font-size: 0.9em; border-top: 1px solid currentColor;
  padding-top: 4px; opacity: 0.85; }
.spanqa-thinking { font-style: italic; }
#doc-view { max-height: 420px; overflow: auto; white-space: normal; line-height: 1.5; }
/* A phone: the chat takes most of the screen and a long passage scrolls inside its quote,
   so the answer and its confidence (the first line of the reply) stay in view. */
@media (max-width: 640px) {
  #chat { height: 62vh !important; }
  #chat blockquote { max-height: 7.5em; overflow: auto; }
}
"""

WELCOME = ("**spanqa answers questions about a document** with a passage copied from it, where "
           "it was found and how sure it is; when the document does not say, it says so.<br>"
           "Ask about the bundled news article below, or open **Use your own document** to "
           "upload a .txt, .md, .html, .pdf or .docx file.")
THINKING = '<span class="spanqa-thinking">Thinking…</span>'


def divider(text: str) -> dict:
    """A chat line that marks where another document took over (``text`` is markup)."""
    return {"role": "assistant", "content": f'<div class="spanqa-divider">{text}</div>'}


def confidence_level(score: float) -> str:
    return next(word for cut, word in CONFIDENCE_LEVELS if score >= cut)


def confidence_badge(score: float) -> str:
    level = confidence_level(score)
    return f'<span class="spanqa-conf {level}">{level} confidence · {score:.0%}</span>'



def word_bounds(text: str, lo: int, hi: int) -> tuple[int, int]:
    """``[lo, hi)`` shrunk so that it neither starts nor ends inside a word."""
    if 0 < lo < len(text) and not text[lo - 1].isspace():
        nxt = next((i for i in range(lo, hi) if text[i].isspace()), None)
        lo = nxt + 1 if nxt is not None else lo
    if lo < hi < len(text) and not text[hi].isspace():
        prev = next((i for i in range(hi - 1, lo - 1, -1) if text[i].isspace()), None)
        hi = prev if prev is not None and prev > lo else hi
    return lo, hi


def around(text: str, start: int, end: int, context: int) -> tuple[int, int]:
    """Up to ``context`` characters either side of ``[start, end)``, cut at word boundaries
    and never into the span itself."""
    lo, hi = word_bounds(text, max(0, start - context), min(len(text), end + context))
    return min(lo, start), max(hi, end)


def trimmed(text: str, limit: int = 700) -> str:
    """``text`` cut to about ``limit`` characters at a word boundary, made inert, line breaks
    kept, with "…" where it was cut."""
    if len(text) <= limit:
        return safe_text(text)
    _, hi = word_bounds(text, 0, limit)
    return safe_text(text[:hi].rstrip()) + "…"


def highlighted_passage(text: str, start: int, end: int, context: int = 600) -> str:
    """The passage (trimmed around the answer at word boundaries if long) with the answer
    in <mark>; line breaks kept."""
    lo, hi = around(text, start, end, context)
    before, ans, after = text[lo:start], text[start:end], text[end:hi]
    return ((("…" if lo else "") + safe_text(before)) + f'<mark class="spanqa-answer">{safe_text(ans)}</mark>'
            + safe_text(after) + ("…" if hi < len(text) else ""))


def citation(a: Answer) -> str:
    where = (f"section “{safe_text(a.section, False)}”, " if a.section else "") + (
        f"page {a.page}, " if a.page else "")
    return f"{safe_text(a.title or a.doc_id or '', False)} ({where}characters {a.start}–{a.end})"


def read_as_note(a: Answer) -> str:
    """How a follow-up question was read, when it was rewritten ("" otherwise)."""
    if not a.read_as or a.read_as == a.question:
        return ""
    return f"<small>Read as: “{safe_text(a.read_as, False)}”</small>\n\n"


def answer_messages(a: Answer) -> list[dict]:
    """Assistant messages for one answer (Gradio's messages format)."""
    note = read_as_note(a)
    if a.abstained:
        parts = ["**The document doesn't say.** I found no answer I'm confident in."]
        if a.candidates:
            c = a.candidates[0]
            parts.append(f"<small>Best guess, not trusted: “{safe_text(c.text, False)}” "
                         f"({c.score:.0%}).</small>")
        msgs = [{"role": "assistant", "content": note + "\n\n".join(parts)}]
        if a.passages:
            quoted = "\n\n".join(
                f"<blockquote>{trimmed(p.chunk.text)}"
                f"<br><small>— {safe_text(p.title, False)}, characters {p.chunk.start}–{p.chunk.end}"
                f"{f', page {p.chunk.page}' if p.chunk.page else ''}</small></blockquote>"
                for p in a.passages[:2])
            msgs.append({"role": "assistant", "content": quoted,
                         "metadata": {"title": "Closest passages", "status": "done"}})
        return msgs
    body = (f"**{safe_text(a.text, False)}** · {confidence_badge(a.score)}\n\n"
            f"<blockquote>{highlighted_passage(a.passage_text, a.passage_start, a.passage_end)}"
            f"</blockquote>\n\n<small>Source: {citation(a)}</small>")
    msgs = [{"role": "assistant", "content": note + body}]
    if a.candidates:
        rows = "\n".join(f"- “{safe_text(c.text, False)}” ({c.score:.0%}) — {citation(c)}"
                         for c in a.candidates)
        msgs.append({"role": "assistant", "content": rows,
                     "metadata": {"title": f"{len(a.candidates)} other candidate answers",
                                  "status": "done"}})
    return msgs


def plain_answer(a: Answer) -> str:
    """The answer and its citation as plain text (what "Copy answer" puts on the clipboard)."""
    if a.abstained:
        return f"{a.question}\nThe document doesn't say."
    where = ", ".join(x for x in (a.title or a.doc_id or "",
                                  f"section \u201c{a.section}\u201d" if a.section else "",
                                  f"page {a.page}" if a.page else "",
                                  f"characters {a.start}\u2013{a.end}") if x)
    return f"\u201c{a.text}\u201d ({a.score:.0%} confidence)\nSource: {where}"


def document_view(text: str, title: str, start: int, end: int, window: int = 20_000) -> str:
    """The document (or ``window`` characters either side of the answer, for a long one) as
    inert HTML with the answer in ``<mark id="doc-answer">``, for the whole-document view."""
    lo, hi = around(text, start, end, window)
    return (f"<h4>{safe_text(title, False)}</h4>" + ("<p>…</p>" if lo else "")
            + "<p>" + safe_text(text[lo:start]) + '<mark id="doc-answer" class="spanqa-answer">'
            + safe_text(text[start:end]) + "</mark>" + safe_text(text[end:hi]) + "</p>"
            + ("<p>…</p>" if hi < len(text) else ""))
