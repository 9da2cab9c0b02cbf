"""Reading with ONNX Runtime: the reader's own model, exported once to ONNX and cached.

Why: on a 2-core CPU the reader's forward pass is the whole cost of an answer. ONNX Runtime
runs the same graph with fused kernels, and its dynamic int8 quantisation (int8 weights per
output channel, activations quantised on the fly) uses the CPU's integer dot-product
instructions. The README's trade-off table gives the measured speed and F1 of each runtime.

Runtimes (``--runtime``, the reader setting ``runtime`` in ``spanqa_reader.json``):

- ``auto``: ``torch-bf16`` where the CPU has AMX-BF16, else ``onnx`` (:func:`resolve_runtime`).
- ``torch``: the model in PyTorch, fp32 (training uses this one).
- ``torch-bf16``: the model in PyTorch with bf16 weights and activations (logits returned as
  fp32). Fast only on CPUs that compute bf16 in hardware (AMX); elsewhere slower than fp32.
- ``onnx``: the same weights in ONNX Runtime, fp32.
- ``onnx-int8``: int8 weights for the query, key, value and feed-forward up-projection
  matrices; the two output projections of each layer (attention's ``attn/o`` or
  ``attention/output/dense``, and the feed-forward ``output/dense``) stay fp32: their inputs
  have outliers that per-tensor int8 activations clip; quantising them too costs the 12-layer
  reader far more F1 (the README's runtime table has the figures).

The export happens on first use (seconds) into ``<cache_root>/onnx/<key>/model.onnx`` (and its
weights, ``model.onnx.data``), keyed by
the model folder's weights and config, the runtime and :data:`EXPORT_VERSION`, so a changed
model or recipe makes a new entry (:mod:`index.onnx_runtime` keeps the four most recently
used). Anything that goes wrong
(onnxruntime missing, an export or a cached file that fails) is reported by the caller, which
falls back to torch with a log line.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from index.onnx_runtime import OnnxSession, cache_root, export_entry, export_module, files_key, open_cached, weights_beside
from qa.cpu import CPUINFO, has_amx_bf16

log = logging.getLogger("spanqa.onnx")

RUNTIMES = ("auto", "torch", "torch-bf16", "onnx", "onnx-int8")
ONNX_RUNTIMES = ("onnx", "onnx-int8")
# bump when the export changes (the key holds the quantisation recipe); 2: weights beside
# the graph (``index.onnx_runtime.weights_beside``)
EXPORT_VERSION = 2
INT8_KEEP_FP32 = r"/output/dense/|/attn/o/"  # ONNX node names left in fp32 by ``onnx-int8``
ONNX_DIR = "onnx"
OUTPUTS = ("start_logits", "end_logits")
_KEYED_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "delta.safetensors",
                "spanqa_delta.json")


def check_runtime(name) -> str:
    """``name`` if it is one of :data:`RUNTIMES`, else ``OptionError``."""
    from qa.errors import OptionError

    if name not in RUNTIMES:
        raise OptionError(f"The runtime must be one of {', '.join(RUNTIMES)}, not {name!r}.")
    return name


def resolve_runtime(name: str, cpuinfo: str = CPUINFO) -> str:
    """The runtime that reads for the setting ``name``: ``auto`` is ``torch-bf16`` on CPUs with
    AMX-BF16 tiles (there bf16 products run several times faster than ONNX Runtime's fp32) and
    ``onnx`` everywhere else; any other name is itself."""
    if name != "auto":
        return check_runtime(name)
    return "torch-bf16" if has_amx_bf16(cpuinfo) else "onnx"


def export_key(model_dir: str | Path, runtime: str, layers: tuple[int, ...] = ()) -> str:
    """A content hash of what the export depends on: the folder's weights and config files
    (a packed folder's delta and its base's name and hash, in ``spanqa_delta.json``), the
    runtime, the recipe version and the layers whose ``<s>`` states it also returns."""
    states = f":states{','.join(map(str, layers))}" if layers else ""
    return files_key(f"{runtime}:{EXPORT_VERSION}:{INT8_KEEP_FP32}{states}",
                     [Path(model_dir) / name for name in _KEYED_FILES])


def cached_export(model_dir: str | Path, runtime: str, layers: tuple[int, ...] = ()) -> Path:
    """Where this model's export for ``runtime`` is (or will be) cached."""
    return cache_root() / ONNX_DIR / export_key(model_dir, runtime, layers) / "model.onnx"


def export(model, input_names: list[str], dest: Path, int8: bool,
           layers: tuple[int, ...] = ()) -> Path:
    """Export a torch QA model to ``dest`` (optionally int8-quantised) as a new cache entry;
    with ``layers``, a third output :data:`qa.probe.STATES_OUTPUT` holds those layers' ``<s>``
    states side by side (the refusal probe's input)."""
    import torch

    from qa.probe import STATES_OUTPUT, first_token_states, layer_outputs

    class Logits(torch.nn.Module):  # plain tensors in, the logit (and state) tensors out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            with layer_outputs(self.m, layers) as got:
                out = self.m(**dict(zip(input_names, xs)))
                states = first_token_states(got, layers)
            return (out.start_logits, out.end_logits, *(() if states is None else (states,)))

    names = [*OUTPUTS, STATES_OUTPUT] if layers else list(OUTPUTS)

    def write(folder: Path) -> None:
        if not int8:
            export_module(Logits(model), input_names, names, folder / dest.name)
            return
        fp32 = folder / "fp32" / dest.name
        fp32.parent.mkdir()
        export_module(Logits(model), input_names, names, fp32)
        _quantize(fp32, folder / dest.name)
        weights_beside(folder / dest.name)
        shutil.rmtree(fp32.parent)

    export_entry(dest.parent, write)
    return dest


def _quantize(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node]
    keep = [n for n in names if re.search(INT8_KEEP_FP32, n)]
    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=keep)


class OnnxReaderModel(OnnxSession):
    """An ONNX Runtime session with the reader's interface: numpy inputs (``input_ids``,
    ``attention_mask`` and, for BERT-style models, ``token_type_ids``) → start and end
    logits as float32 arrays, and the ``<s>`` states when the export has them (else None)."""

    def __init__(self, file: str | Path):
        from qa.probe import STATES_OUTPUT

        super().__init__(file)
        names = {o.name for o in self.session.get_outputs()}
        self.outputs = [*OUTPUTS, STATES_OUTPUT] if STATES_OUTPUT in names else list(OUTPUTS)

    def __call__(self, inputs: dict[str, np.ndarray]):
        got = [a.astype(np.float32, copy=False) for a in self.run(self.outputs, inputs)]
        return got[0], got[1], (got[2] if len(got) > 2 else None)


def open_runtime(model_dir: str | Path, runtime: str, load_torch,
                 layers: tuple[int, ...] = ()) -> OnnxReaderModel:
    """The ONNX session for this model folder and runtime (returning the ``<s>`` states of
    ``layers`` too, when given): from the cache, or exported from ``load_torch()`` (``(model,
    input names)``, called only on a miss) and cached. A cached file that will not open is
    exported again. Raises whatever the export raises; the reader falls back to torch."""
    dest = cached_export(model_dir, runtime, layers)

    def export_it(entry: Path) -> None:
        log.info("spanqa: exporting the reader to ONNX (%s), once", runtime)
        model, input_names = load_torch()
        export(model, input_names, entry / dest.name, int8=runtime == "onnx-int8",
               layers=layers)

    return open_cached(dest.parent, dest.name, lambda e: OnnxReaderModel(e / dest.name), export_it)
