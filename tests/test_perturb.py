"""Rule-made unanswerable questions: each rule changes what is asked so that the paragraph
no longer answers it, and refuses where it could not be sure of that."""
import random

from qa.squad import SquadQuestion
from qa.training.perturb import antonym_flip, entity_swap, names_in, negate, perturbed_negatives

P1 = "In 1882 Nikola Tesla moved to Paris, where he worked for the Continental Edison Company."
P2 = "Tesla later sailed to New York in 1884. Furthermore, he met Thomas Edison there."
P3 = "Budapest was his home before Paris. He was born in Smiljan."


def q(qid, text, ctx, answer, title="Tesla", para=0):
    return SquadQuestion(qid, text, ctx, title, para, [(answer, ctx.index(answer))] if answer else [])


def test_names_skip_words_that_only_start_sentences():
    names = names_in(P2 + " " + P1)
    assert "New York" in names and "Thomas Edison" in names and "Nikola Tesla" in names
    assert "Paris" in names and "Continental Edison Company" in names
    # sentence-initial words are left out unless seen inside a sentence too (a price: "Tesla"
    # opens its only sentence here, so it is not taken alone)
    assert "Furthermore" not in names and "Tesla" not in names
    assert "Budapest" in names_in(P3 + " They left Budapest.")


def test_entity_swap_takes_a_name_of_the_article_the_paragraph_never_mentions():
    question = q("a", "When did Tesla move to Paris?", P1, "1882")
    names = names_in(P1) + names_in(P2) + names_in(P3)
    for seed in range(20):
        new = entity_swap(question, names, [], random.Random(seed))
        assert new is not None and new != question.question
        # Tesla and Paris are both in P1; whatever replaced them is a name P1 never mentions
        swapped = set(new.rstrip("?").split()) - set(question.question.rstrip("?").split())
        assert swapped and not any(w in P1 for w in swapped)
        # never Thomas Edison: P1 says "Edison"
        assert "Thomas" not in new


def test_entity_swap_swaps_years_for_years_and_needs_a_name_the_paragraph_holds():
    question = q("b", "What did Tesla do in 1882?", P1, "moved to Paris")
    assert entity_swap(question, [], ["1884", "7"], random.Random(0)) == "What did Tesla do in 1884?"
    assert entity_swap(question, [], ["7"], random.Random(0)) is None
    # nothing of the question is in its paragraph: nothing to swap
    off = q("c", "Who was Marconi?", P1, "Nikola Tesla")
    assert entity_swap(off, names_in(P2), ["1884"], random.Random(0)) is None


def test_antonym_flips_only_when_the_paragraph_lacks_the_opposite():
    ctx = "The largest city of the region is Lyon, on the Rhone."
    assert antonym_flip(q("d", "What is the largest city?", ctx, "Lyon"), random.Random(0)) == \
        "What is the smallest city?"
    both = "The largest city is Lyon and the smallest is Vienne."
    assert antonym_flip(q("e", "What is the largest city?", both, "Lyon"), random.Random(0)) is None
    assert antonym_flip(q("f", "Where is Lyon?", ctx, "on the Rhone"), random.Random(0)) is None


def test_negation_only_for_subject_questions_over_paragraphs_without_negation():
    ctx = "Tesla was the first to build an induction motor."
    assert negate(q("g", "Who was the first to build an induction motor?", ctx, "Tesla")) == \
        "Who was not the first to build an induction motor?"
    assert negate(q("h", "When did Tesla build it?", ctx, "Tesla")) is None
    said_not = "Edison was not the first; Tesla was the first to build an induction motor."
    assert negate(q("i", "Who was the first to build an induction motor?", said_not, "Tesla")) is None


def test_perturbed_negatives_are_unanswerable_seeded_and_keep_their_paragraph():
    qs = [q("a", "When did Tesla move to Paris?", P1, "1882"),
          q("b", "When did Tesla sail to New York?", P2, "1884", para=1),
          q("c", "Where was he born?", P3, "Smiljan", para=2),
          q("u", "Who was the first to sail?", P2, None, para=1)]
    negs = perturbed_negatives(qs + qs[:1], 1.0, random.Random(3))  # a repeated question counts once
    again = perturbed_negatives(qs + qs[:1], 1.0, random.Random(3))
    assert [(n.id, n.question) for n in negs] == [(n.id, n.question) for n in again]
    by_id = {x.id: x for x in qs}
    assert len({n.id for n in negs}) == len(negs) and 1 <= len(negs) <= 3
    for n in negs:
        src = by_id[n.id.rsplit("-", 1)[0]]
        assert n.is_impossible and n.context == src.context and n.question != src.question
        assert n.id.rsplit("-", 1)[1] in {"swap", "antonym", "neg"}
    assert perturbed_negatives(qs, 0.0, random.Random(3)) == []
