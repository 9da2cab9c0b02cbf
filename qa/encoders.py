"""The two reader architectures in plain PyTorch, for reading only.

Why: the torch runtimes built the reader through transformers, and importing transformers'
model code costs about 1.5 s of issue 18's 3 s cold-start budget, more than the model takes
to load. These modules compute what transformers' ``MPNetForQuestionAnswering`` (the default
reader) and ``BertForQuestionAnswering`` (the fast reader) compute in eval mode: absolute
(BERT) or padding-aware (MPNet) positions, MPNet's bucketed relative-position bias, an
additive padding mask, no dropout. Their parameters carry transformers' names, so the same
safetensors load into either (``tests/test_encoders.py`` checks the logits against
transformers'). Training, the ONNX export and any other architecture keep using transformers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

# tensors transformers keeps as buffers that a checkpoint may or may not hold: not weights
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class QAOutput(NamedTuple):
    start_logits: torch.Tensor
    end_logits: torch.Tensor


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: a sublayer's output projection."""

    def __init__(self, n_in: int, n_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


def _attend(q, k, v, heads: int, bias):
    """Multi-head attention over ``[batch, tokens, hidden]`` projections; ``bias`` is added
    to the scaled scores (padding mask, MPNet's position bias)."""
    b, t, h = q.shape

    def split(x):
        return x.view(b, t, heads, h // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias)
    return out.transpose(1, 2).reshape(b, t, h)


def _padding_bias(attention_mask, dtype):
    """``[batch, 1, 1, tokens]``: 0 where a token is real, the dtype's minimum at padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class _Layer(nn.Module):
    """What both architectures' layers share: the feed-forward sublayer (``intermediate``,
    ``output``) and the head count; each subclass adds its ``attention``."""

    def __init__(self, cfg: dict):
        super().__init__()
        h, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.intermediate = _Dense(h, cfg["intermediate_size"])
        self.output = _DenseNorm(cfg["intermediate_size"], h, eps)
        self.heads = cfg["num_attention_heads"]

    def feed_forward(self, x):
        return self.output(F.gelu(self.intermediate.dense(x)), x)


# --- MPNet -------------------------------------------------------------------------------

class _MPNetSelf(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))


class _MPNetAttention(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.attn = _MPNetSelf(hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _MPNetLayer(_Layer):
    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.attention = _MPNetAttention(cfg["hidden_size"], cfg["layer_norm_eps"])

    def forward(self, x, bias):
        a = self.attention.attn
        ctx = _attend(a.q(x), a.k(x), a.v(x), self.heads, bias)
        x = self.attention.LayerNorm(a.o(ctx) + x)
        return self.feed_forward(x)


class _Embeddings(nn.Module):
    """Word and position tables and their LayerNorm (BERT adds token types)."""

    def __init__(self, cfg: dict, token_types: bool = False):
        super().__init__()
        h = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        if token_types:
            self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])


class _Encoder(nn.Module):
    def __init__(self, cfg: dict, layer: type[_Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layer(cfg) for _ in range(cfg["num_hidden_layers"]))


class _MPNetEncoder(_Encoder):
    def __init__(self, cfg: dict):
        super().__init__(cfg, _MPNetLayer)
        self.relative_attention_bias = nn.Embedding(cfg.get("relative_attention_num_buckets", 32),
                                                    cfg["num_attention_heads"])


class _Model(nn.Module):
    """``embeddings`` then ``encoder``: the names under ``mpnet.`` / ``bert.``."""

    def __init__(self, embeddings: nn.Module, encoder: nn.Module):
        super().__init__()
        self.embeddings, self.encoder = embeddings, encoder


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """MPNet's (T5's bidirectional) bucketing of key position minus query position: exact
    buckets for short distances, logarithmic ones up to ``max_distance``."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    return ret + torch.where(n < exact, n, large.clamp(max=half - 1))


class MPNetQA(nn.Module):
    """``MPNetForQuestionAnswering`` for reading: ``(input_ids, attention_mask)`` → logits."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self, cfg: dict):
        super().__init__()
        self.padding_idx = cfg.get("pad_token_id", 1)
        self.mpnet = _Model(_Embeddings(cfg), _MPNetEncoder(cfg))
        self.qa_outputs = nn.Linear(cfg["hidden_size"], 2)

    def forward(self, input_ids, attention_mask=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emb = self.mpnet.embeddings
        real = input_ids.ne(self.padding_idx).long()
        positions = torch.cumsum(real, dim=1) * real + self.padding_idx
        x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(positions))
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        enc = self.mpnet.encoder
        buckets = relative_position_bucket(pos[None, :] - pos[:, None],
                                           enc.relative_attention_bias.num_embeddings)
        position_bias = enc.relative_attention_bias(buckets).permute(2, 0, 1)[None].to(x.dtype)
        bias = position_bias + _padding_bias(attention_mask, x.dtype)
        for layer in enc.layer:
            x = layer(x, bias)
        return _span_logits(self.qa_outputs(x))


# --- BERT --------------------------------------------------------------------------------

class _BertSelf(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.self = _BertSelf(hidden)
        self.output = _DenseNorm(hidden, hidden, eps)


class _BertLayer(_Layer):
    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.attention = _BertAttention(cfg["hidden_size"], cfg["layer_norm_eps"])

    def forward(self, x, bias):
        s = self.attention.self
        ctx = _attend(s.query(x), s.key(x), s.value(x), self.heads, bias)
        return self.feed_forward(self.attention.output(ctx, x))


class BertQA(nn.Module):
    """``BertForQuestionAnswering`` (absolute positions) for reading."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, cfg: dict):
        super().__init__()
        self.bert = _Model(_Embeddings(cfg, token_types=True), _Encoder(cfg, _BertLayer))
        self.qa_outputs = nn.Linear(cfg["hidden_size"], 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        emb = self.bert.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
                          + emb.position_embeddings(pos)[None])
        bias = _padding_bias(attention_mask, x.dtype)
        for layer in self.bert.encoder.layer:
            x = layer(x, bias)
        return _span_logits(self.qa_outputs(x))


def _span_logits(logits) -> QAOutput:
    start, end = logits.unbind(-1)
    return QAOutput(start.contiguous(), end.contiguous())


# --- loading -----------------------------------------------------------------------------

def architecture(config: dict) -> type[nn.Module] | None:
    """The module for a model folder's ``config.json``, or None when it is not one of ours
    (then transformers builds it)."""
    arch = (config.get("architectures") or [None])[0]
    if config.get("hidden_act", "gelu") != "gelu":
        return None
    if config.get("model_type") == "mpnet" and arch == "MPNetForQuestionAnswering":
        return MPNetQA
    if (config.get("model_type") == "bert" and arch == "BertForQuestionAnswering"
            and config.get("position_embedding_type", "absolute") == "absolute"):
        return BertQA
    return None


def build_reader(config: dict, state: dict[str, torch.Tensor],
                 dtype: torch.dtype = torch.float32) -> nn.Module | None:
    """The reader ``config`` describes with the weights ``state`` (transformers' names), in
    ``dtype``; None when the architecture is not one of ours. Weights that are missing, left
    over or misshapen raise ``ValueError``."""
    cls = architecture(config)
    if cls is None:
        return None
    with torch.device("meta"):  # no random init: every weight comes from ``state``
        model = cls(config)
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"weights do not fit {cls.__name__}: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for k, v in state.items():
        if v.shape != want[k].shape:
            raise ValueError(f"{k} has shape {tuple(v.shape)}, {cls.__name__} wants "
                             f"{tuple(want[k].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    return model.eval()


def read_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
