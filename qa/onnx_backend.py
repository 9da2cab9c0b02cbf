"""Reading with ONNX Runtime: the reader's own model, exported once to ONNX and cached.

Why: on a 2-core CPU the reader's forward pass is the whole cost of an answer. ONNX Runtime
runs the same graph with fused kernels, and its dynamic int8 quantisation (int8 weights per
output channel, activations quantised on the fly) uses the CPU's integer dot-product
instructions. The README's trade-off table gives the measured speed and F1 of each runtime.

Runtimes (``--runtime``, the reader setting ``runtime`` in ``spanqa_reader.json``):

- ``torch``: the model in PyTorch, fp32 (training uses this one).
- ``onnx``: the same weights in ONNX Runtime, fp32.
- ``onnx-int8``: int8 weights for every matrix product except the feed-forward down-projection
  (``layer.N/output/dense``): its inputs, the GELU outputs, have outliers that per-tensor int8
  activations clip, which cost the 12-layer reader several F1 points when it was quantised too.

The export happens on first use (seconds) into ``<cache_root>/onnx/<key>/model.onnx``, keyed by
the model folder's weights and config, the runtime and :data:`EXPORT_VERSION`, so a changed
model or recipe makes a new entry; :data:`ONNX_KEEP` entries are kept. Anything that goes wrong
(onnxruntime missing, an export or a cached file that fails) is reported by the caller, which
falls back to torch with a log line.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("spanqa.onnx")

RUNTIMES = ("torch", "onnx", "onnx-int8")
EXPORT_VERSION = 1  # bump when the export or quantisation recipe changes
INT8_KEEP_FP32 = r"/output/dense/"  # ONNX node names left in fp32 by ``onnx-int8``
ONNX_DIR = "onnx"
ONNX_KEEP = 4  # cached exports kept (the 12-layer reader's: 436 MB fp32, 195 MB int8)
OUTPUTS = ("start_logits", "end_logits")
_KEYED_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "delta.safetensors",
                "spanqa_delta.json")


def check_runtime(name) -> str:
    """``name`` if it is one of :data:`RUNTIMES`, else ``OptionError``."""
    from qa.errors import OptionError

    if name not in RUNTIMES:
        raise OptionError(f"The runtime must be one of {', '.join(RUNTIMES)}, not {name!r}.")
    return name


def export_key(model_dir: str | Path, runtime: str) -> str:
    """A content hash of what the export depends on: the folder's weights and config files
    (a packed folder's delta and its base's name and hash, in ``spanqa_delta.json``), the
    runtime and the recipe version."""
    h = hashlib.sha256(f"{runtime}:{EXPORT_VERSION}:{INT8_KEEP_FP32}".encode())
    folder = Path(model_dir)
    for name in _KEYED_FILES:
        f = folder / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:32]


def cached_export(model_dir: str | Path, runtime: str) -> Path:
    """Where this model's export for ``runtime`` is (or will be) cached."""
    from qa.packed import cache_root

    return cache_root() / ONNX_DIR / export_key(model_dir, runtime) / "model.onnx"


def export(model, input_names: list[str], dest: Path, int8: bool) -> Path:
    """Export a torch QA model to ``dest`` (optionally int8-quantised), atomically: the file
    appears whole or not at all; older cached exports beyond :data:`ONNX_KEEP` are deleted."""
    import torch

    class Logits(torch.nn.Module):  # plain tensors in, the two logit tensors out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            out = self.m(**dict(zip(input_names, xs)))
            return out.start_logits, out.end_logits

    dest.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent.parent))
    try:
        example = {"input_ids": torch.full((2, 16), 5), "token_type_ids": torch.zeros(2, 16),
                   "attention_mask": torch.ones(2, 16)}
        example["attention_mask"][1, 12:] = 0  # traced with padding, as batches have
        example = tuple(example[n].long() for n in input_names)
        axes = {n: {0: "batch", 1: "tokens"} for n in (*input_names, *OUTPUTS)}
        fp32 = work / "fp32.onnx"
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(Logits(model).eval(), example, str(fp32), input_names=input_names,
                              output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        final = work / "model.onnx"
        if int8:
            _quantize(fp32, final)
        else:
            fp32.rename(final)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(dest.parent.parent)
    return dest


def _quantize(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node]
    keep = [n for n in names if re.search(INT8_KEEP_FP32, n)]
    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=keep)


def _prune(root: Path) -> None:
    entries = sorted(root.glob("*/model.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in entries[ONNX_KEEP:]:
        shutil.rmtree(old.parent, ignore_errors=True)


def _threads() -> int:
    """As many threads as torch uses in this process (a Ray replica limits those), else one
    per CPU this process may run on."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))


class OnnxReaderModel:
    """An ONNX Runtime session with the reader's interface: numpy inputs (``input_ids``,
    ``attention_mask`` and, for BERT-style models, ``token_type_ids``) → start and end
    logits as float32 arrays."""

    def __init__(self, file: str | Path, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or _threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.file = Path(file)
        self.session = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.int64) for k in self.input_names}
        start, end = self.session.run(list(OUTPUTS), feed)
        return start.astype(np.float32, copy=False), end.astype(np.float32, copy=False)


def open_runtime(model_dir: str | Path, runtime: str, load_torch, input_names: list[str],
                 threads: int | None = None) -> OnnxReaderModel:
    """The ONNX session for this model folder and runtime: from the cache, or exported from
    ``load_torch()`` (called only on a miss) and cached. A cached file that will not open is
    exported again. Raises whatever the export raises; the reader falls back to torch."""
    dest = cached_export(model_dir, runtime)
    if dest.is_file():
        try:
            model = OnnxReaderModel(dest, threads)
            os.utime(dest)  # recently used: kept when older exports are pruned
            return model
        except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
            log.warning("spanqa: the cached ONNX reader %s is unreadable (%s); exporting again",
                        dest, str(exc).splitlines()[0] if str(exc) else exc)
            shutil.rmtree(dest.parent, ignore_errors=True)
    log.info("spanqa: exporting the reader to ONNX (%s), once", runtime)
    export(load_torch(), input_names, dest, int8=runtime == "onnx-int8")
    return OnnxReaderModel(dest, threads)
