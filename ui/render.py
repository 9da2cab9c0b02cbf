"""Answers as chat messages: the answer, its confidence, the passage with the answer
highlighted, a citation; runner-ups fold away. Pure functions of an ``Answer`` (tested alone).
Document text is HTML-escaped before any markup is added, so a hostile document cannot inject
markup into the page."""
from __future__ import annotations

import html

from qa.types import Answer


def confidence_badge(score: float) -> str:
    colour = "#1a7f37" if score >= 0.7 else "#9a6700" if score >= 0.4 else "#cf222e"
    return (f'<span class="spanqa-conf" style="color:{colour};font-weight:600">'
            f"{score:.0%} confident</span>")


def highlighted_passage(text: str, start: int, end: int, context: int = 600) -> str:
    """The passage (trimmed around the answer if long) with the answer in <mark>."""
    lo = max(0, start - context)
    hi = min(len(text), end + context)
    before, ans, after = text[lo:start], text[start:end], text[end:hi]
    return ((("…" if lo else "") + html.escape(before)) + f'<mark class="spanqa-answer">{html.escape(ans)}</mark>'
            + html.escape(after) + ("…" if hi < len(text) else ""))


def citation(a: Answer) -> str:
    where = f"page {a.page}, " if a.page else ""
    return f"{html.escape(a.title or a.doc_id or '')} ({where}characters {a.start}–{a.end})"


def answer_messages(a: Answer) -> list[dict]:
    """Assistant messages for one answer (Gradio's messages format)."""
    if a.abstained:
        parts = ["**The document doesn't say.** I found no answer I'm confident in."]
        if a.candidates:
            c = a.candidates[0]
            parts.append(f"<small>Best guess, below the threshold: “{html.escape(c.text)}” "
                         f"({c.score:.0%}).</small>")
        msgs = [{"role": "assistant", "content": "\n\n".join(parts)}]
        if a.passages:
            quoted = "\n\n".join(
                f"<blockquote>{html.escape(p.chunk.text[:700])}{'…' if len(p.chunk.text) > 700 else ''}"
                f"<br><small>— {html.escape(p.title)}, characters {p.chunk.start}–{p.chunk.end}"
                f"{f', page {p.chunk.page}' if p.chunk.page else ''}</small></blockquote>"
                for p in a.passages[:2])
            msgs.append({"role": "assistant", "content": quoted,
                         "metadata": {"title": "Closest passages", "status": "done"}})
        return msgs
    body = (f"**{html.escape(a.text)}** · {confidence_badge(a.score)}\n\n"
            f"<blockquote>{highlighted_passage(a.passage_text, a.passage_start, a.passage_end)}"
            f"</blockquote>\n\n<small>Source: {citation(a)}</small>")
    msgs = [{"role": "assistant", "content": body}]
    if a.candidates:
        rows = "\n".join(f"- “{html.escape(c.text)}” ({c.score:.0%}) — {citation(c)}"
                         for c in a.candidates)
        msgs.append({"role": "assistant", "content": rows,
                     "metadata": {"title": f"{len(a.candidates)} other candidate answers",
                                  "status": "done"}})
    return msgs
