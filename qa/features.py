"""Question + passage → model windows, shared by the reader at answer time and by training.

One function builds the windows both ways, so what the model sees in training is exactly
what it sees when answering: the question first, then the passage cut into overlapping
windows of at most ``max_seq_len`` tokens (``doc_stride`` tokens of overlap), with each
token's character offsets into the passage (``None`` outside the passage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qa.errors import QuestionTooLongError


@dataclass
class Windows:
    """Tokenised windows for a batch of (question, passage) pairs.

    ``pair_index[w]`` says which input pair window ``w`` came from; ``offsets[w][t]`` is the
    ``(start, end)`` character span of token ``t`` in that pair's passage, or ``None`` for
    question, special and padding tokens (those can never be part of an answer).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    pair_index: list[int]
    offsets: list[list[tuple[int, int] | None]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.pair_index)

    def model_inputs(self) -> dict[str, np.ndarray]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids
        return out


def question_length(tokenizer, question: str) -> int:
    return len(tokenizer(question, add_special_tokens=False)["input_ids"])


def build_windows(
    tokenizer,
    questions: list[str],
    passages: list[str],
    max_seq_len: int = 384,
    doc_stride: int = 128,
) -> Windows:
    """Tokenise pairs into stride windows with passage-only character offsets.

    ``doc_stride`` is the number of tokens two neighbouring windows share, so an answer
    cut by one window's edge lies whole in the next. Raises ``QuestionTooLongError`` when a
    question leaves less than a quarter of the window for the passage.
    """
    if len(questions) != len(passages):
        raise ValueError("questions and passages must have the same length")
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    budget = max_seq_len - n_special
    limit = min(budget * 3 // 4, budget - doc_stride - 1)
    for q in set(questions):
        q_len = question_length(tokenizer, q)
        if q_len > limit:
            raise QuestionTooLongError(
                f"The question is {q_len} tokens long; this reader reads windows of {max_seq_len} "
                f"tokens, so a question may have at most {limit}.")
    qs = [q.lstrip() for q in questions]
    enc = tokenizer(
        qs,
        passages,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="longest",
        return_tensors="np",
    )
    pair_index = [int(i) for i in enc["overflow_to_sample_mapping"]]
    offsets: list[list[tuple[int, int] | None]] = []
    for w in range(len(pair_index)):
        seq_ids = enc.sequence_ids(w)
        offs = enc["offset_mapping"][w]
        offsets.append(
            [(int(o[0]), int(o[1])) if s == 1 else None for s, o in zip(seq_ids, offs)]
        )
    return Windows(
        input_ids=enc["input_ids"].astype(np.int64),
        attention_mask=enc["attention_mask"].astype(np.int64),
        token_type_ids=enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else None,
        pair_index=pair_index,
        offsets=offsets,
    )
