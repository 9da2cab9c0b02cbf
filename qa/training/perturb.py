"""SQuAD 2.0-style unanswerable questions made by rule from answerable ones.

SQuAD 2.0's unanswerable questions were written by people who took a paragraph and asked
something it seems to answer but does not: an entity swapped for another, an antonym, a
negation (Rajpurkar et al. 2018 count these three as about half of them). We have only about
5,000 of them to train on, while SQuAD v1.1 train holds 87,599 answerable questions. This
module turns answerable questions into such near misses, asked of their *own* paragraph so
that a plausible span is still there:

* **entity swap**: a name or number of the question that the paragraph contains is replaced by
  one of the same kind from another paragraph of the same article, which this paragraph never
  mentions ("When did Tesla move to Paris?" → "When did Tesla move to Budapest?");
* **antonym**: a word from a short list of opposites is flipped when the paragraph never uses
  the opposite ("the largest city" → "the smallest city");
* **negation**: "not" after the verb of a subject question ("Who was the first ..." → "Who
  was not the first ..."), only in paragraphs that hold no negation of their own.

Each rule checks the paragraph so that the new question cannot be answered by it, and every
choice is drawn from the caller's ``random.Random``, so a seeded run makes the same set.
"""
from __future__ import annotations

import random
import re

from qa.squad import SquadQuestion, paragraphs_by_title

# Pairs of opposites, each read in both directions. Only words whose opposite changes what
# is asked; "more"/"less" and the like are left out, being too often idiomatic.
_OPPOSITES = [
    ("first", "last"), ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
    ("most", "least"), ("earliest", "latest"), ("before", "after"), ("increase", "decrease"),
    ("increased", "decreased"), ("north", "south"), ("east", "west"), ("northern", "southern"),
    ("eastern", "western"), ("longest", "shortest"), ("oldest", "youngest"), ("older", "younger"),
    ("maximum", "minimum"), ("won", "lost"), ("win", "lose"), ("best", "worst"),
    ("larger", "smaller"), ("higher", "lower"), ("major", "minor"), ("rise", "fall"),
    ("early", "late"), ("positive", "negative"), ("inner", "outer"), ("upper", "lower"),
    ("ancient", "modern"), ("began", "ended"), ("start", "end"), ("public", "private"),
    ("success", "failure"), ("successful", "unsuccessful"), ("strongest", "weakest"),
    ("fastest", "slowest"), ("richest", "poorest"), ("top", "bottom"), ("allowed", "forbidden"),
    ("common", "rare"), ("same", "different"), ("import", "export"), ("imported", "exported"),
]
ANTONYMS: dict[str, str] = {}
for _a, _b in _OPPOSITES:
    ANTONYMS.setdefault(_a, _b)
    ANTONYMS.setdefault(_b, _a)

_WH = frozenset("what which who whom whose when where why how".split())
_BE = frozenset("is are was were".split())
_NEGATION = re.compile(r"\b(not|no|never|none|nor|neither|without)\b|n't", re.IGNORECASE)
# A run of capitalised words (a name), allowing "of"/"de"/"the"/"von"/"van" inside it.
_TOKEN = r"(?:[A-Z]\.|[A-Z](?:[\w'-]|\.(?=\w))*)"  # "Tesla", "U.S", an initial "M."
_NAME = re.compile(rf"\b{_TOKEN}(?:\s+(?:(?:of|de|the|von|van)\s+)?{_TOKEN})*")
_SENTENCE_START = re.compile(r"(?:^|[.!?][\"')\]]?\s+)$")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_LEADING = frozenset("The A An In On At By For From To Of And But As It This That These Those "
                     "He She They We His Her Their Its After Before During While When Where "
                     "What Which Who How Why If Although Since".split())


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _clean_name(name: str) -> str:
    """A name without a leading capitalised function word ("In Paris" → "Paris"), a trailing
    full stop or a possessive ("Burma's" → "Burma")."""
    parts = name.split()
    while parts and parts[0] in _LEADING:
        parts = parts[1:]
    name = " ".join(parts).rstrip(".")
    return name[:-2] if name.endswith("'s") else name


def names_in(text: str) -> list[str]:
    """Capitalised names in ``text``, in order. A single word seen only at the start of a
    sentence ("Furthermore") is no name."""
    seen: dict[str, bool] = {}  # name -> seen inside a sentence
    for m in _NAME.finditer(text):
        name = _clean_name(m.group(0))
        at = m.group(0).find(name)
        if len(name) < 3 or at < 0:
            continue
        inside = " " in name or not _SENTENCE_START.search(text[:m.start() + at])
        seen[name] = seen.get(name, False) or inside
    return [n for n, inside in seen.items() if inside]


def numbers_in(text: str) -> list[str]:
    return list(dict.fromkeys(m.group(0) for m in _NUMBER.finditer(text)))


def _kind(number: str) -> str:
    """Years swap with years, other numbers with other numbers."""
    return "year" if re.fullmatch(r"1\d{3}|20\d{2}", number) else "number"


def _mentions(context_lower: str, context_words: set[str], candidate: str) -> bool:
    """Whether the paragraph mentions ``candidate`` or any word of it longer than 3 letters
    (so "Nikola Tesla" counts as mentioned where the paragraph says "Tesla")."""
    if candidate.lower() in context_lower:
        return True
    return any(len(w) > 3 and w in context_words for w in _words(candidate))


def entity_swap(q: SquadQuestion, article_names: list[str], article_numbers: list[str],
                rng: random.Random) -> str | None:
    """The question with one of its names or numbers that the paragraph contains replaced by
    one of the same kind, from elsewhere in the article, that the paragraph never mentions;
    None when no such pair exists."""
    ctx_lower, ctx_words = q.context.lower(), _words(q.context)
    body = q.question
    first = (body.split() or [""])[0]
    spots = []
    for m in _NAME.finditer(body):
        name = _clean_name(m.group(0))
        at = m.group(0).find(name)
        start = m.start() + at
        if (len(name) < 3 or at < 0 or name == first or name.lower() in _WH
                or name not in q.context or (start and body[start - 1] not in " \"'(")):
            continue
        spots.append((start, name, "name"))
    for m in _NUMBER.finditer(body):
        if m.group(0) in q.context:
            spots.append((m.start(), m.group(0), _kind(m.group(0))))
    rng.shuffle(spots)
    golds = " ".join(q.gold_texts).lower()
    for start, old, kind in spots:
        pool = article_names if kind == "name" else [n for n in article_numbers
                                                     if _kind(n) == kind]
        old_words = _words(old)
        options = [c for c in pool if c != old and c.lower() not in golds
                   and not _mentions(ctx_lower, ctx_words, c)
                   and not (_words(c) & old_words)]
        if options:
            new = rng.choice(options)
            return body[:start] + new + body[start + len(old):]
    return None


def antonym_flip(q: SquadQuestion, rng: random.Random) -> str | None:
    """The question with one word of :data:`ANTONYMS` replaced by its opposite, when the
    paragraph never uses that opposite; None otherwise."""
    ctx_words = _words(q.context)
    hits = [m for m in re.finditer(r"[A-Za-z]+", q.question)
            if m.group(0).lower() in ANTONYMS and ANTONYMS[m.group(0).lower()] not in ctx_words]
    if not hits:
        return None
    m = rng.choice(hits)
    new = ANTONYMS[m.group(0).lower()]
    if m.group(0)[0].isupper():
        new = new.capitalize()
    return q.question[:m.start()] + new + q.question[m.end():]


def negate(q: SquadQuestion) -> str | None:
    """"Who was the first ..." → "Who was not the first ...": a subject question (a wh-word,
    then is/are/was/were) negated, only when the paragraph holds no negation itself (else it
    may say what is not). None when the question is not of that form."""
    words = q.question.split()
    if (len(words) < 4 or words[0].lower() not in _WH or words[1].lower() not in _BE
            or words[2].lower() == "not" or _NEGATION.search(q.question)
            or _NEGATION.search(q.context)):
        return None
    return " ".join(words[:2] + ["not"] + words[2:])


# Each rule by the suffix its questions' ids get; tried in a random order per question.
RULES = {
    "swap": lambda q, names, numbers, rng: entity_swap(q, names, numbers, rng),
    "antonym": lambda q, names, numbers, rng: antonym_flip(q, rng),
    "neg": lambda q, names, numbers, rng: negate(q),
}


def perturbed_negatives(questions: list[SquadQuestion], frac: float,
                        rng: random.Random) -> list[SquadQuestion]:
    """``frac`` of the distinct answerable questions, each changed by one rule that applies to
    it (tried in random order; a question none applies to gives nothing) and asked of its own
    paragraph, labelled unanswerable. Ids end in ``-swap``, ``-antonym`` or ``-neg``."""
    answerable = list({q.id: q for q in questions if q.answers}.values())
    if frac <= 0 or not answerable:
        return []
    paras = paragraphs_by_title(questions)
    names = {t: list(dict.fromkeys(n for p in ps for n in names_in(p))) for t, ps in paras.items()}
    numbers = {t: list(dict.fromkeys(n for p in ps for n in numbers_in(p)))
               for t, ps in paras.items()}
    out = []
    for q in rng.sample(answerable, min(len(answerable), int(round(frac * len(answerable))))):
        for suffix in rng.sample(list(RULES), len(RULES)):
            text = RULES[suffix](q, names[q.title], numbers[q.title], rng)
            if text and text != q.question:
                out.append(SquadQuestion(f"{q.id}-{suffix}", text, q.context, q.title,
                                         q.paragraph, []))
                break
    return out
