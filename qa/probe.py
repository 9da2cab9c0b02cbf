"""The refusal probe at answering time: a linear score on the reader's ``<s>`` states.

The span head reads only the last layer. The ``<s>`` (first-token) states of a few layers say
more about "this passage is on topic but does not hold the answer" than the head's scores do
(the reader card, "A probe on the reader's hidden states"). A model folder may hold a probe
beside its weights, trained by ``python -m qa.training.probe``:

* ``refusal_probe.safetensors``: ``state_weight`` (layers × hidden), ``scalar_weight`` (2) and
  ``bias`` (1), float32;
* ``spanqa_probe.json``: the 1-based ``layers`` whose ``<s>`` states it reads, ``hidden``, and
  what it was trained on.

For a span found in window ``w``::

    probe = states[w] · state_weight + logit · scalar_weight[0]
            + (logit - null_logit) · scalar_weight[1] + bias

a logit of "this span is right". The reader computes ``states[w] · state_weight`` once per
window (its forward pass returns the states beside the logits: torch through forward hooks,
ONNX as a third output of the exported graph) and gives every span its ``probe``. Whether a
low probe refuses is the calibration's business (``Calibration.probe_threshold``, chosen by
``spanqa calibrate-reader --refuse-by probe``); without a probe the reader is unchanged.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qa.errors import ModelNotFoundError, SpanQAError

PROBE_FILE = "refusal_probe.safetensors"
PROBE_CONFIG = "spanqa_probe.json"
STATES_OUTPUT = "cls_states"  # the ONNX export's third output, when the folder has a probe


def encoder_layers(model):
    """The transformer layers of a reader module (spanqa's native MPNet or BERT, or
    transformers' ``MPNetForQuestionAnswering`` / ``BertForQuestionAnswering``)."""
    body = getattr(model, "mpnet", None) or getattr(model, "bert", None)
    if body is None:
        raise SpanQAError("The refusal probe needs an MPNet or BERT reader.")
    return body.encoder.layer


@contextmanager
def layer_outputs(model, layers: tuple[int, ...]):
    """While open, the yielded dict maps each of ``layers`` (1-based) to its output tensor
    (batch × tokens × hidden) of the latest forward pass. Tensors, not arrays, so a traced
    export sees them. No layers (a reader without a probe): no hooks, an empty dict."""
    if not layers:
        yield {}
        return
    blocks = encoder_layers(model)
    if len(set(layers)) != len(layers) or not all(1 <= n <= len(blocks) for n in layers):
        raise SpanQAError(f"Layers {layers}: each once, within the reader's 1..{len(blocks)}.")
    got: dict = {}

    def hook(n):
        def grab(_module, _inputs, output):
            got[n] = output[0] if isinstance(output, tuple) else output
        return grab

    handles = [blocks[n - 1].register_forward_hook(hook(n)) for n in layers]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def first_token_states(got: dict, layers: tuple[int, ...]):
    """The ``<s>`` states of ``layers`` side by side (batch × layers·hidden), from
    :func:`layer_outputs`' dict; None without layers."""
    import torch

    return torch.cat([got[n][:, 0] for n in layers], dim=-1) if layers else None


@dataclass(frozen=True)
class RefusalProbe:
    """A folder's probe: what it reads and its folded weights."""

    layers: tuple[int, ...]
    state_weight: np.ndarray  # (len(layers) * hidden,)
    scalar_weight: np.ndarray  # (2,): logit, margin
    bias: float

    @classmethod
    def load(cls, folder: str | Path) -> "RefusalProbe | None":
        """The probe in ``folder``; None when it has none. Half a probe, or weights that do
        not match the layers, is ``ModelNotFoundError``."""
        folder = Path(folder)
        files = (folder / PROBE_FILE, folder / PROBE_CONFIG)
        if not any(f.is_file() for f in files):
            return None
        if not all(f.is_file() for f in files):
            raise ModelNotFoundError(f"{folder} holds one of {PROBE_FILE} and {PROBE_CONFIG} "
                                     "without the other; the refusal probe needs both.")
        from safetensors.numpy import load_file

        try:
            cfg = json.loads(files[1].read_text(encoding="utf-8"))
            w = load_file(str(files[0]))
            layers = tuple(int(n) for n in cfg["layers"])
            hidden = int(cfg["hidden"])
            probe = cls(layers, w["state_weight"].astype(np.float32).ravel(),
                        w["scalar_weight"].astype(np.float64).ravel(), float(w["bias"].ravel()[0]))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelNotFoundError(f"The refusal probe in {folder} cannot be read: "
                                     f"{type(exc).__name__}: {exc}") from None
        if not layers or probe.state_weight.size != len(layers) * hidden \
                or probe.scalar_weight.size != 2 or not np.isfinite(probe.state_weight).all():
            raise ModelNotFoundError(f"The refusal probe in {folder} does not match its "
                                     f"{PROBE_CONFIG} ({len(layers)} layers of {hidden}).")
        return probe

    def state_terms(self, states: np.ndarray) -> np.ndarray:
        """Each window's ``states · state_weight`` (states: windows × layers·hidden)."""
        if states.shape[-1] != self.state_weight.size:
            raise SpanQAError(f"The reader gave {states.shape[-1]} state values a window; the "
                              f"probe reads {self.state_weight.size}.")
        return np.asarray(states, np.float32) @ self.state_weight

    def score(self, state_term: float, logit: float, null_logit: float) -> float:
        """The probe's logit that a span is right (higher: more likely)."""
        return float(state_term + self.scalar_weight[0] * logit
                     + self.scalar_weight[1] * (logit - null_logit) + self.bias)
