"""Example questions for a document that spanqa can actually answer.

Candidates come from the document itself: the names it mentions most (people get "Who is
…?", organisations "What is the …?", rivers and seas "Where is the …?"; countries none), what
named people said, and the years it mentions.
Each candidate is then asked of the document, and only those answered confidently, with an
answer that is not just words of the question, are offered, most confident first.
"""
from __future__ import annotations

import re
from collections import Counter

from index.documents import Document

NOT_NAMES = {"The", "A", "An", "As", "In", "On", "At", "While", "However", "This", "That", "It",
             "He", "She", "They", "We", "But", "And", "For", "With", "After", "Before", "When",
             "Key", "If", "Its", "Our", "His", "Her", "Their", "There", "Then", "Some", "Many"}
TITLES = {"President", "Secretary", "General", "Minister", "Prime", "Dr", "Mr", "Mrs", "Ms",
          "Professor", "Prof", "Senator", "Governor", "King", "Queen", "Chancellor", "State",
          "Defense", "Defence", "Adviser", "National", "Security", "Foreign", "Spokesperson",
          "Spokesman", "Spokeswoman", "Chief", "Director", "Mayor", "Judge", "Sir", "Lord"}
ORG_WORDS = {"Museum", "University", "Union", "Council", "Ministry", "Department", "Agency",
             "Organization", "Organisation", "Company", "Bank", "Party", "Army", "Forces",
             "Court", "Committee", "Institute", "Office", "House", "Parliament", "Senate",
             "Congress", "Administration", "Alliance", "Fund", "Foundation", "Group",
             "Corporation", "Association", "Commission", "Service", "Church", "School",
             "College", "Hospital", "Pentagon", "Kremlin", "Library", "Society", "Board"}
# Countries and other places: "Who is United States?" is the kind of example to avoid.
COUNTRY_WORDS = {"States", "Kingdom", "Republic", "Emirates", "Federation", "Union", "Islands"}
PLACE_WORDS = {"River", "Sea", "Ocean", "Lake", "Mountains", "Valley", "Bay", "Desert", "Island"}
# Adjectives of nationality or period ("Ancient Egyptian", "British") are not things to ask about.
_ADJECTIVE = re.compile(r"(?:ian|ean|ese|ish)$")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: (?:of |the |de |van |von )?[A-Z][a-z]+)+\b")


def _is_heading(line: str) -> bool:
    return len(line.split()) <= 15 and not line.rstrip().endswith((".", "?", "!", '"', "”"))


def candidate_questions(doc: Document, n: int = 12) -> list[str]:
    """Up to ``n`` questions built from ``doc``'s most frequent names, quoted speakers and
    years, most promising first. Headings (short lines without a full stop) are skipped."""
    names, speakers = Counter(), Counter()
    for line in doc.text.split("\n"):
        if _is_heading(line):
            continue
        for m in _NAME.finditer(line):
            words = m.group(0).split()
            while words and (words[0] in TITLES or words[0] in NOT_NAMES):
                words = words[1:]
            if len(words) < 2 or len(words) > 5:
                continue
            name = " ".join(words)
            names[name] += 1
            if re.match(r"\s*(?:said|says|told|warned|added|wrote)\b", line[m.end():]):
                speakers[name] += 1
    out: list[str] = []
    for name, _ in names.most_common():
        last = name.split()[-1]
        if last in COUNTRY_WORDS:
            continue
        if last in PLACE_WORDS:
            out.append(f"Where is the {name}?")
        elif last in ORG_WORDS:
            out.append(f"What is the {name}?")
        elif _ADJECTIVE.search(last):
            continue
        elif len(name.split()) <= 3:
            out.append(f"Who is {name}?")
    for name, _ in speakers.most_common(3):
        out.insert(min(len(out), 2), f"What did {name} say?")
    for year, _ in Counter(re.findall(r"\b(1[5-9]\d\d|20\d\d)\b", doc.text)).most_common(2):
        out.append(f"What happened in {year}?")
    return list(dict.fromkeys(out))[:n]


def answerable_examples(qa, doc: Document, n: int = 4, min_confidence: float | None = None,
                        candidates: int = 10) -> list[str]:
    """Questions from :func:`candidate_questions` that ``qa`` (a ``DocumentQA``) answers from
    ``doc`` with at least ``min_confidence`` (default: the reader's threshold, and never
    below 0.4), whose answer is not only words of the question; most confident first."""
    qs = candidate_questions(doc, candidates)
    if not qs:
        return []
    if min_confidence is None:
        cfg = qa.reader.config
        min_confidence = max(0.4, float(cfg.calibration.threshold) if cfg else 0.5)
    kept = []
    for q, a in zip(qs, qa.ask_many(qs, top_k=1)):
        asked = {w.lower() for w in re.findall(r"\w+", q)}
        said = {w.lower() for w in re.findall(r"\w+", a.text)}
        if not a.abstained and a.score >= min_confidence and said - asked:
            kept.append((a.score, q))
    kept.sort(key=lambda t: -t[0])
    return [q for _, q in kept[:n]]
