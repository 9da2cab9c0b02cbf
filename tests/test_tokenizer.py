"""``index.tokenizer.JsonTokenizer`` against transformers' fast tokenizer on the same files:
the windows the reader reads, the batches the embedder embeds and the tokens chunking counts
must be the same, id for id and offset for offset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.tokenizer import JsonTokenizer
from qa.features import build_windows

ROOT = Path(__file__).resolve().parents[1]
ARTICLE = (ROOT / "qa" / "data" / "us-weapons-in-russia.txt").read_text(encoding="utf-8")
QUESTIONS = ["Who is the NATO Secretary General?", "  what   happened in Kharkiv?",
             "Ünïcödé — “quotes” 北京 😀?", "x"]
PASSAGES = [ARTICLE[:3000], ARTICLE[500:900], "short passage 北京 😀 é\n\nnext", ""]
NAMES = (["input_ids", "attention_mask"], ["input_ids", "attention_mask", "token_type_ids"])


def _folders(minilm_dir, tiny_reader_dir):
    return {"reader (MPNet)": ROOT / "qa" / "models" / "reader",
            "fast reader (BERT)": ROOT / "qa" / "models" / "reader-fast",
            "embedder": minilm_dir, "tiny reader": tiny_reader_dir}


@pytest.mark.parametrize("names", NAMES, ids=["no-types", "types"])
def test_windows_batches_and_chunks_match_transformers(minilm_dir, tiny_reader_dir, names):
    from transformers import PreTrainedTokenizerFast

    for label, folder in _folders(minilm_dir, tiny_reader_dir).items():
        ref = PreTrainedTokenizerFast.from_pretrained(str(folder), model_input_names=names)
        ours = JsonTokenizer(folder, names)
        assert ours.num_special_tokens_to_add(True) == ref.num_special_tokens_to_add(pair=True)
        for max_len, stride in ((256, 96), (64, 16)):
            a = build_windows(ref, QUESTIONS, PASSAGES, max_len, stride)
            b = build_windows(ours, QUESTIONS, PASSAGES, max_len, stride)
            assert len(a) > len(QUESTIONS), "the long passage must overflow into windows"
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                x, y = getattr(a, k), getattr(b, k)
                assert (x is None) == (y is None), (label, k)
                if x is not None:
                    np.testing.assert_array_equal(x, y, err_msg=f"{label} {k} {max_len}")
            assert a.pair_index == b.pair_index and a.offsets == b.offsets, label
        ea = ref(PASSAGES, padding=True, truncation="longest_first", max_length=128,
                 return_tensors="np")
        eb = ours(PASSAGES, padding=True, truncation="longest_first", max_length=128,
                  return_tensors="np")
        assert set(ea.keys()) == set(eb.keys()), label
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=f"{label} {k}")
        ca = ref(ARTICLE, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        cb = ours(ARTICLE, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        assert list(ca["input_ids"]) == cb["input_ids"], label
        assert [tuple(o) for o in ca["offset_mapping"]] == cb["offset_mapping"], label


def test_calls_it_cannot_answer_like_transformers_are_refused(minilm_dir):
    tok = JsonTokenizer(minilm_dir, NAMES[0])
    with pytest.raises(ValueError, match="truncation"):
        tok(["a"], truncation="sideways", max_length=8)
    with pytest.raises(ValueError, match="return_tensors"):
        tok(["a"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding"):
        tok(["a", "a b c"], return_tensors="np")
    out = tok(["a", "a b c"], truncation=True, max_length=4, padding=True, return_tensors="np")
    assert out["input_ids"].shape == (2, 4) and out["attention_mask"][0].tolist() == [1, 1, 1, 0]


def test_a_broken_tokenizer_file_is_a_value_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a tokenizer"):
        JsonTokenizer(tmp_path, NAMES[0])
