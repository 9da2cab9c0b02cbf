"""Span decoding on hand-made logits: no model involved."""
import numpy as np

from qa.decoding import decode_windows, drop_overlaps, min_null_logit, window_spans

# A window: [CLS] q q [SEP] p0 p1 p2 p3 p4 [SEP]; passage tokens map to these characters of
# "alpha beta gamma delta epsilon".
PASSAGE = "alpha beta gamma delta epsilon"
OFFS = [None, None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), (23, 30), None]


def logits(start_at, end_at, n=10, hi=5.0):
    s, e = np.full(n, -5.0), np.full(n, -5.0)
    s[start_at], e[end_at] = hi, hi
    return s, e


def test_best_span_maps_to_exact_characters():
    s, e = logits(5, 6)
    out = decode_windows(np.array([s]), np.array([e]), [OFFS], [0])
    best = out[0][0]
    assert PASSAGE[best.char_start:best.char_end] == "beta gamma"
    assert best.logit == 10.0


def test_question_and_special_tokens_never_answer():
    s, e = logits(1, 2)  # highest logits on question tokens
    s[6], e[6] = 1.0, 1.0
    spans = window_spans(s, e, OFFS, max_answer_len=30, top_n=50)
    assert all(OFFS[a] is not None and OFFS[b] is not None for a, b, _ in spans)
    assert (spans[0][0], spans[0][1]) == (6, 6)


def test_end_before_start_and_max_answer_length():
    s, e = logits(7, 5)  # end before start is never allowed
    for a, b, _ in window_spans(s, e, OFFS, 30, 100):
        assert b >= a
    s, e = logits(4, 8)  # a 5-token span, longer than max_answer_len=3
    spans = window_spans(s, e, OFFS, max_answer_len=3, top_n=100)
    assert all(b - a < 3 for a, b, _ in spans)
    assert (4, 8) not in [(a, b) for a, b, _ in spans]


def test_length_penalty_prefers_the_shorter_span_and_lowers_its_logit():
    # "beta" alone scores 9.5; "beta gamma delta" 10.0 without a penalty.
    s, e = np.full(10, -5.0), np.full(10, -5.0)
    s[5], e[5], e[7] = 5.0, 4.5, 5.0
    plain = decode_windows(np.array([s]), np.array([e]), [OFFS], [0])[0][0]
    assert PASSAGE[plain.char_start:plain.char_end] == "beta gamma delta"
    assert plain.logit == 10.0
    short = decode_windows(np.array([s]), np.array([e]), [OFFS], [0], length_penalty=0.5)[0]
    assert PASSAGE[short[0].char_start:short[0].char_end] == "beta"
    assert short[0].logit == 9.5  # one token: nothing taken off
    longer = next(c for c in short if PASSAGE[c.char_start:c.char_end] == "beta gamma delta")
    assert longer.logit == 10.0 - 0.5 * 2


def test_overlapping_windows_merge_and_offsets_stay_in_the_passage():
    # Two windows over one passage "one two three four five six": the second starts at "three".
    p = "one two three four five six"
    w1 = [None, None, None, (0, 3), (4, 7), (8, 13), (14, 18), None]
    w2 = [None, None, None, (8, 13), (14, 18), (19, 23), (24, 27), None]
    s1, e1 = np.full(8, -5.0), np.full(8, -5.0)
    s2, e2 = np.full(8, -5.0), np.full(8, -5.0)
    s1[5], e1[6] = 2.0, 2.0  # "three four" in window 1, weakly
    s2[3], e2[4] = 4.0, 4.0  # the same "three four" in window 2, strongly
    s2[5], e2[5] = 3.0, 3.5  # "five" in window 2
    out = decode_windows(np.array([s1, s2]), np.array([e1, e2]), [w1, w2], [0, 0], top_n=3)[0]
    texts = [p[c.char_start:c.char_end] for c in out]
    assert texts[0] == "three four" and texts.count("three four") == 1
    assert out[0].logit == 8.0  # the better of the two windows' scores
    assert out[0].window == 1  # ... and the window that gave it (the refusal probe reads it)
    assert "five" in texts
    swapped = decode_windows(np.array([s2, s1]), np.array([e2, e1]), [w2, w1], [0, 0], top_n=3)[0]
    assert swapped[0].window == 0 and swapped[0].logit == 8.0


def test_no_answer_logit_is_the_lowest_cls_over_windows():
    s = np.array([[3.0, 0, 0], [-1.0, 0, 0], [9.0, 0, 0]])
    e = np.array([[3.0, 0, 0], [-1.0, 0, 0], [9.0, 0, 0]])
    assert min_null_logit(s, e, [0, 0, 1]) == {0: -2.0, 1: 18.0}


def test_drop_overlaps_keeps_best_of_overlapping_spans():
    class C:
        def __init__(self, p, s, e):
            self.pair, self.char_start, self.char_end = p, s, e
    cands = [C(0, 5, 10), C(0, 8, 12), C(1, 8, 12), C(0, 10, 14)]
    kept = drop_overlaps(cands)
    assert [(c.pair, c.char_start, c.char_end) for c in kept] == [(0, 5, 10), (1, 8, 12), (0, 10, 14)]
