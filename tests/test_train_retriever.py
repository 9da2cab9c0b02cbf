"""The retriever trainer's plan: batches from one article at a time, a mined negative that
never holds the answer, and ``max_articles`` drawing the whole plan from that many articles."""
from __future__ import annotations

import json
import re

import pytest


def _squad(path, n_articles: int) -> None:
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(3):
            fact = f"token{a}x{p}"
            ctx = (f"The article {a} paragraph {p} says the code word is {fact}. "
                   f"Other words about topic {a} fill paragraph {p} here.")
            paragraphs.append({"context": ctx, "qas": [{
                "id": f"{a}-{p}-{q}", "question": f"What code word does paragraph {p} of "
                                                  f"article {a} say, variant {q}?",
                "answers": [{"text": fact, "answer_start": ctx.index(fact)}]}
                for q in range(2)]})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}))


@pytest.mark.parametrize("max_articles", [0, 1])
def test_plan_batches_hard_negatives_and_article_draw(tmp_path, minilm_dir, max_articles):
    from qa.training.retriever import RetrieverTrainer, RetrieverTrainingArgs

    data = tmp_path / "toy.json"
    _squad(data, 4)
    args = RetrieverTrainingArgs(out=str(tmp_path / "run"), data=[str(data)], base=str(minilm_dir),
                                 batch_size=2, max_steps=3, chunk_size=24, overlap=0,
                                 max_articles=max_articles, seed=3)
    rows = RetrieverTrainer(args).plan()
    assert len(rows) == 6  # max_steps × batch_size
    asked = [re.search(r"paragraph (\d+) of article (\d+)", r["anchor"]).groups() for r in rows]
    assert len({a for _, a in asked}) == (1 if max_articles else 3)  # seed 3 draws 3 of 4
    for r, (p, a) in zip(rows, asked):
        word = f"token{a}x{p}"
        assert word in r["positive"] and word not in r["negative"]
        assert f"article {a} " in r["negative"]  # mined from the question's own article
    # the plan is written once: a resumed run reads the same one
    assert RetrieverTrainer(args).plan() == rows
