"""A model folder's ``tokenizer.json`` run by the ``tokenizers`` library directly.

Importing transformers costs about a second of every cold start, and spanqa only needs its
fast tokenizers for what the Rust ``tokenizers`` library already does: pairs, truncation
with a stride and the overflowing windows, character offsets, padding. :class:`JsonTokenizer`
is called like a transformers fast tokenizer for exactly the calls spanqa makes (windows in
``qa.features``, chunks in ``index.chunking``, batches in the ONNX embedder), and gives the
same ids, masks, offsets and sequence ids (``tests/test_tokenizer.py`` checks it against
transformers on both bundled readers and the embedder). Anything else it refuses with a
``ValueError`` rather than guessing.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

_STRATEGIES = {True: "longest_first", "longest_first": "longest_first",
               "only_first": "only_first", "only_second": "only_second"}


class Encoded(dict):
    """What a call returns: a dict of ``input_ids``, ``attention_mask`` (and ``token_type_ids``
    when the model takes them), ``offset_mapping`` and ``overflow_to_sample_mapping`` when
    asked, like transformers' ``BatchEncoding``; ``sequence_ids(i)`` as there."""

    def __init__(self, data: dict, seq_ids: list[list[int | None]]):
        super().__init__(data)
        self._seq_ids = seq_ids

    def sequence_ids(self, index: int = 0) -> list[int | None]:
        return list(self._seq_ids[index])


class JsonTokenizer:
    """The tokenizer of a folder holding ``tokenizer.json`` (and, when there,
    ``tokenizer_config.json`` for the padding token and the longest input)."""

    is_fast = True

    def __init__(self, folder: str | Path, model_input_names: list[str]):
        from tokenizers import Tokenizer

        from index.onnx_runtime import first_line

        folder = Path(folder)
        try:
            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the Rust side raises a bare Exception for a bad file
            raise ValueError(f"{folder / 'tokenizer.json'} is not a tokenizer: "
                             f"{first_line(exc)}") from None
        saved_padding = self._tok.padding or {}
        self._tok.no_padding()  # a saved file may carry the last call's settings
        self._tok.no_truncation()
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        pad = cfg.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self._tok.token_to_id(pad) if pad else None
        self.pad_token_id = int(pad_id if pad_id is not None else saved_padding.get("pad_id", 0))
        self.pad_token_type_id = int(cfg.get("pad_token_type_id", 0))
        limit = cfg.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, int) and limit < 10**9 else None
        self.model_input_names = list(model_input_names)
        self._lock = threading.Lock()  # truncation is the Rust tokenizer's state

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return int(self._tok.num_special_tokens_to_add(pair))

    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True,
                 truncation=False, max_length: int | None = None, stride: int = 0,
                 return_overflowing_tokens: bool = False, return_offsets_mapping: bool = False,
                 padding=False, return_tensors: str | None = None, verbose: bool = True) -> Encoded:
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError("text and text_pair must have the same length")
            inputs = list(zip(texts, pairs))
        else:
            inputs = texts
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'np' or None")
        if not batched and (return_overflowing_tokens or return_tensors):
            raise ValueError("overflowing windows and arrays need a batch (a list of texts)")
        encodings = self._encode(inputs, add_special_tokens, truncation, max_length, stride)
        windows, sample = [], []
        for i, enc in enumerate(encodings):
            for w in [enc, *(enc.overflowing if return_overflowing_tokens else [])]:
                windows.append(w)
                sample.append(i)
        return self._collect(windows, sample, padding, max_length, return_offsets_mapping,
                             return_overflowing_tokens, return_tensors, batched)

    def _encode(self, inputs, add_special_tokens, truncation, max_length, stride):
        strategy = _STRATEGIES.get(truncation) if truncation not in (False, None) else None
        if truncation not in (False, None, "do_not_truncate") and strategy is None:
            raise ValueError(f"truncation={truncation!r} is not supported")
        with self._lock:  # truncation is off between calls (``__init__`` and ``finally``)
            if strategy is not None:
                limit = max_length or self.model_max_length
                if limit is None:
                    raise ValueError("truncation needs max_length")
                self._tok.enable_truncation(limit, stride=stride, strategy=strategy)
            try:
                return self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
            finally:
                self._tok.no_truncation()

    def _collect(self, windows, sample, padding, max_length, offsets, overflow, tensors, batched):
        if padding in (True, "longest"):
            width = max((len(w.ids) for w in windows), default=0)
        elif padding == "max_length":
            width = max_length or self.model_max_length
        elif padding in (False, None, "do_not_pad"):
            width = None
        else:
            raise ValueError(f"padding={padding!r} is not supported")
        rows: dict[str, list] = {n: [] for n in self.model_input_names}
        if offsets:
            rows["offset_mapping"] = []
        seq_ids = []
        for w in windows:
            n = len(w.ids)
            pad = max(0, width - n) if width is not None else 0
            cols = {"input_ids": list(w.ids) + [self.pad_token_id] * pad,
                    "attention_mask": list(w.attention_mask) + [0] * pad,
                    "token_type_ids": list(w.type_ids) + [self.pad_token_type_id] * pad}
            for name in self.model_input_names:
                rows[name].append(cols[name])
            if offsets:
                rows["offset_mapping"].append([tuple(o) for o in w.offsets] + [(0, 0)] * pad)
            seq_ids.append(list(w.sequence_ids) + [None] * pad)
        if overflow:
            rows["overflow_to_sample_mapping"] = list(sample)
        if tensors == "np":
            if width is None and len({len(r) for r in rows["input_ids"]}) > 1:
                raise ValueError("windows of different lengths need padding for arrays")
            data = {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}
        elif batched:
            data = rows
        else:
            data = {k: v[0] for k, v in rows.items()}
        return Encoded(data, seq_ids)
