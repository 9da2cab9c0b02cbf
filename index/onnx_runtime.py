"""ONNX Runtime for spanqa's networks: a torch module exported once into the cache, then run
without torch.

The embedder (:mod:`index.embedder`) and the readers (:mod:`qa.onnx_backend`) use it. An
export is written into a fresh folder and renamed into place, so a cache entry is whole or
absent (an export is ``model.onnx``, the graph, and ``model.onnx.data``, its weights); the
most recently used :data:`KEEP` entries of each kind are kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("spanqa.onnx")

CACHE_ENV = "SPANQA_CACHE"
KEEP = 4  # cache entries kept per kind (``onnx`` readers, ``onnx-embedders``)


def cache_root() -> Path:
    """Where spanqa caches what it derives from shipped files (extracted bases, rebuilt
    weights, ONNX exports): ``$SPANQA_CACHE``, else ``~/.cache/spanqa``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spanqa")


def files_key(salt: str, files: list[Path]) -> str:
    """A content hash of ``salt`` and the files that exist among ``files`` (names and bytes)."""
    h = hashlib.sha256(salt.encode())
    for f in files:
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:32]


def export_entry(entry: Path, write) -> Path:
    """Create the cache folder ``entry`` by calling ``write(tmp_folder)`` and renaming the
    folder into place; when another process got there first, its entry is kept and ours
    dropped. (A caller that finds an entry broken deletes it before exporting again.) Older
    entries beside it beyond :data:`KEEP` are deleted."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=entry.parent))
    try:
        write(work)
        try:
            os.replace(work, entry)
        except OSError:
            if not entry.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entries = sorted((p for p in entry.parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return entry


def first_line(exc: BaseException) -> str:
    """An exception's first message line, for one-line log messages."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def open_cached(entry: Path, ready: str, open_entry, export):
    """``open_entry(entry)`` for the cache folder ``entry`` when its file ``ready`` is there
    (marking it recently used); an entry that will not open is deleted with a log line. On a
    miss, ``export(entry)`` first. What ``export`` raises reaches the caller."""
    if (entry / ready).is_file():
        try:
            opened = open_entry(entry)
            os.utime(entry)  # recently used: kept when older entries are pruned
            return opened
        except Exception as exc:  # noqa: BLE001 - a broken cache is exported again, never fatal
            log.warning("spanqa: the cached ONNX export %s is unreadable (%s); exporting again",
                        entry, first_line(exc))
            shutil.rmtree(entry, ignore_errors=True)
    export(entry)
    return open_entry(entry)


def model_input_names(tokenizer) -> list[str]:
    """The inputs a tokenizer gives its model, in the order the exports take them."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids")
            if n in tokenizer.model_input_names]


_EXPORTING = threading.Lock()  # torch's tracer is not safe to run in two threads at once


def export_module(module, input_names: list[str], output_names: list[str], dest: Path) -> None:
    """Trace ``module(*inputs)`` (int64 inputs of shape batch × tokens, the last four tokens of
    the second row padding) into the ONNX file ``dest``, batch and tokens left dynamic, its
    weights beside it (:func:`weights_beside`). One export runs at a time in a process."""
    with _EXPORTING:
        _export_module(module, input_names, output_names, dest)
        weights_beside(dest)


def _export_module(module, input_names: list[str], output_names: list[str], dest: Path) -> None:
    import torch

    example = {"input_ids": torch.full((2, 16), 5), "token_type_ids": torch.zeros(2, 16),
               "attention_mask": torch.ones(2, 16)}
    example["attention_mask"][1, 12:] = 0  # traced with padding, as batches have
    args = tuple(example[n].long() for n in input_names)
    axes = {n: {0: "batch", 1: "tokens"} for n in (*input_names, *output_names)}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the tracer's warnings about Python branches on shapes: the export is checked
        # against torch by the tests (tests/test_onnx.py), not worth a user's screen
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(dest), input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, opset_version=17,
                          dynamo=False)


def weights_beside(file: Path) -> None:
    """Rewrite the ONNX file ``file`` with its weights in ``<file>.data`` beside it. ONNX Runtime
    then reads the graph's small protobuf and the weights as raw bytes instead of parsing them
    out of one large protobuf: the 12-layer reader (435 MB) opens in about 0.6 s instead of
    1.6 s, with identical outputs (the README's cold-start row has the measurement)."""
    import onnx

    model = onnx.load(str(file))
    data = file.with_name(file.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


_THREADS: int | None = None  # set by limit_threads


def limit_threads(n: int) -> None:
    """Use ``n`` threads for the networks of this process (a Ray replica's CPU share): ONNX
    sessions opened from now on, torch now if it is loaded, and later if it is not."""
    global _THREADS
    _THREADS = max(1, int(n))
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # torch reads it when it first loads
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(_THREADS)


def session_threads() -> int:
    """The threads an ONNX session uses: :func:`limit_threads`' number, else as many as torch
    uses when it is loaded, else one per CPU this process may run on."""
    if _THREADS is not None:
        return _THREADS
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))


class OnnxSession:
    """An ONNX Runtime CPU session: numpy arrays in, numpy arrays out."""

    def __init__(self, file: str | Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = session_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.file = Path(file)
        self.session = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, outputs: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.int64) for k in self.input_names}
        return self.session.run(outputs, feed)


def fast_tokenizer(folder: str | Path, input_names: list[str]):
    """The folder's tokenizer producing exactly ``input_names``: its ``tokenizer.json`` run by
    the ``tokenizers`` library (``index.tokenizer``), so a cold start imports neither torch
    nor transformers. Without a ``tokenizer.json``, transformers' ``AutoTokenizer``."""
    if not (Path(folder) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    from index.tokenizer import JsonTokenizer

    return JsonTokenizer(folder, input_names)
