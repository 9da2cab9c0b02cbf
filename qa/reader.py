"""The extractive reader: (question, passages) → ranked answer spans copied from the passages.

Any ``AutoModelForQuestionAnswering`` checkpoint works: a local folder, or a hub id for users
who are online. transformers 5 has no question-answering pipeline, so preprocessing
(:mod:`qa.features`) and span decoding (:mod:`qa.decoding`) are ours. A model folder may hold
``spanqa_reader.json`` with its window sizes, calibration and abstention threshold (written by
``spanqa train-reader``); without it, the defaults below apply.

Like a Haystack component, ``__init__`` only stores configuration; ``warm_up()`` loads the model
(once; ``predict`` calls it if needed) and ``to_dict()`` describes the component.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qa.calibration import Calibration, same_embedder
from qa.decoding import decode_windows, min_null_logit
from qa.errors import ModelNotFoundError, OptionError
from qa.features import build_windows
from qa.onnx_backend import ONNX_RUNTIMES, check_runtime, resolve_runtime
from qa.packed import folder_weights, is_packed, load_packed
from qa.probe import RefusalProbe, first_token_states, layer_outputs
from qa.scoring import RawSpan, ReaderResult, ReaderSpan, score_spans  # noqa: F401 (re-exported)

log = logging.getLogger("spanqa.reader")

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_READER_DIR = MODELS_DIR / "reader"
# Readers that ship with spanqa, by the name ``--reader`` takes (see qa/models/*/README.md).
BUNDLED_READERS = {"default": DEFAULT_READER_DIR, "fast": MODELS_DIR / "reader-fast"}
READER_CONFIG_FILE = "spanqa_reader.json"
RUNTIME_ENV = "SPANQA_RUNTIME"  # overrides every reader's runtime in this process (--runtime)
READ_ALL_ENV = "SPANQA_READ_ALL"  # "1": no staged reading in this process (--read-all)


@dataclass
class ReaderConfig:
    """Everything that shapes decoding; stored as JSON next to the weights."""

    max_seq_len: int = 256
    doc_stride: int = 96
    max_answer_len: int = 30  # tokens
    length_penalty: float = 0.0  # logit units per answer token past the first (qa.decoding)
    top_n_per_window: int = 10
    batch_size: int = 32  # windows per forward pass
    runtime: str = "torch"  # auto | torch | torch-bf16 | onnx | onnx-int8 (qa.onnx_backend)
    # Staged reading (the pipeline's, qa.pipeline.DocumentQA): read the first
    # ``first_passages`` retrieved passages, and the rest only for questions whose best
    # confidence is below ``first_cut``; 0 reads them all at once.
    first_passages: int = 0
    first_cut: float = 0.0
    calibration: Calibration = field(default_factory=Calibration)
    # Calibrations fitted earlier with other embedders (by the embedder's name), for stores
    # built with them: their similarities are on another scale (see calibration_for).
    other_calibrations: dict[str, Calibration] = field(default_factory=dict)
    # What else the folder's spanqa_reader.json records (training provenance, calibration
    # report, ...): kept as read and written back, so a load and save loses nothing.
    notes: dict = field(default_factory=dict)

    SETTINGS = ("max_seq_len", "doc_stride", "max_answer_len", "length_penalty",
                "top_n_per_window", "batch_size", "runtime", "first_passages", "first_cut")
    _MINIMUM = {"length_penalty": 0, "first_passages": 0, "first_cut": 0}  # others: 1

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.SETTINGS}
        d["calibration"] = self.calibration.to_dict()
        if self.other_calibrations:
            d["calibrations_by_embedder"] = {k: c.to_dict()
                                             for k, c in self.other_calibrations.items()}
        return {**d, **self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> "ReaderConfig":
        d = dict(d)
        cal = Calibration.from_dict(d.pop("calibration", {}) or {})
        others = {str(k): Calibration.from_dict(v)
                  for k, v in (d.pop("calibrations_by_embedder", {}) or {}).items()}
        known = {k: d.pop(k) for k in cls.SETTINGS if k in d}
        if "runtime" in known:
            known["runtime"] = check_runtime(known["runtime"])
        return cls(calibration=cal, other_calibrations=others, notes=d, **known)

    def calibration_for(self, embedder_name: str | None) -> Calibration:
        """The calibration to score passages found by ``embedder_name``'s store with: the
        current one, unless it was fitted with another embedder and an earlier calibration
        fitted with this one is kept (a store built before the default embedder changed keeps
        the confidence and threshold fitted on its similarities)."""
        if embedder_name and not self.calibration.accepts_relevance_from(embedder_name):
            for cal in self.other_calibrations.values():
                if cal.accepts_relevance_from(embedder_name):
                    return cal
        return self.calibration

    def set_calibration(self, cal: Calibration) -> None:
        """Make ``cal`` the current calibration; the one it replaces is kept for its embedder
        when that is another embedder (see :meth:`calibration_for`)."""
        old = self.calibration
        self.other_calibrations = {k: c for k, c in self.other_calibrations.items()
                                   if not same_embedder(k, cal.relevance_model)}
        if old.relevance_model and not same_embedder(old.relevance_model, cal.relevance_model):
            self.other_calibrations[old.relevance_model] = old
        self.calibration = cal

    @classmethod
    def load(cls, folder: str | Path) -> "ReaderConfig":
        """The folder's ``spanqa_reader.json`` (defaults when it has none)."""
        f = Path(folder) / READER_CONFIG_FILE
        return cls.from_dict(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else cls()

    def save(self, folder: str | Path) -> None:
        (Path(folder) / READER_CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n",
                                                       encoding="utf-8")

    def with_overrides(self, **overrides) -> "ReaderConfig":
        """A copy with some settings changed; an unknown or mistyped one is ``OptionError``."""
        unknown = sorted(set(overrides) - set(self.SETTINGS))
        if unknown:
            raise OptionError(f"Unknown reader setting(s) {', '.join(unknown)}; the settings are "
                              f"{', '.join(self.SETTINGS)}.")
        out = replace(self)
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "runtime":
                out.runtime = check_runtime(v)
                continue
            want = type(getattr(self, k))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and v != int(v)) \
                    or not v >= self._MINIMUM.get(k, 1) or (k == "first_cut" and v > 1):
                raise OptionError(f"Reader setting {k} must be a positive {want.__name__}"
                                  f"{' from 0 to 1' if k == 'first_cut' else ''}, not {v!r}.")
            setattr(out, k, want(v))
        return out


def resolve_model_path(model: str | Path | None) -> str:
    """A bundled reader's name (``default``, ``fast``), an existing local folder, or a
    hub-id-looking string. A local folder wins over a bundled name."""
    name = "default" if model is None else str(model)
    if name in BUNDLED_READERS and not Path(name).exists():
        folder = BUNDLED_READERS[name]
        if not (folder / "config.json").exists():
            raise ModelNotFoundError(
                f"The bundled reader {name!r} is missing from {folder}; reinstall spanqa "
                "or pass --reader PATH."
            )
        return str(folder)
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"{p} is not a model folder (it has no config.json).")
        return str(p)
    s = str(model)
    if s.startswith((".", "/", "~")) or s.count("/") > 1 or not s.strip():
        raise ModelNotFoundError(f"No model folder at {s}.")
    return s  # a hub id; loading it needs a network


class ExtractiveReader:
    """Reads passages and returns answer spans with calibrated confidences."""

    def __init__(self, model: str | Path | None = "default", device: str = "cpu",
                 config: ReaderConfig | None = None, **overrides):
        self.model_name = str(model) if model is not None else "default"
        self.device = device
        self._explicit_config = config
        if overrides.get("runtime") is None and os.environ.get(RUNTIME_ENV):
            overrides["runtime"] = os.environ[RUNTIME_ENV]
        if overrides.get("first_passages") is None and os.environ.get(READ_ALL_ENV) == "1":
            overrides["first_passages"] = 0
        ReaderConfig().with_overrides(**overrides)  # unknown or bad settings fail here, not later
        self._overrides = overrides
        self.config: ReaderConfig | None = config
        self.model = None  # the torch model, when torch reads (or exported the ONNX one)
        self.tokenizer = None
        self.runtime: str | None = None  # the runtime actually reading, once warm
        self._forward = None  # numpy inputs -> (start, end logits, <s> states or None)
        self.probe: RefusalProbe | None = None  # the folder's refusal probe (qa.probe)
        self._lock = threading.Lock()  # loading
        self._use_lock = threading.Lock()  # tokenising + model: one request at a time

    @classmethod
    def from_loaded(cls, model, tokenizer, config: ReaderConfig, device: str = "cpu"):
        """Wrap an already loaded model (training evaluates through this, so the numbers it
        logs come from the very decoding users get)."""
        r = cls(model="<in memory>", device=device, config=config)
        r.model, r.tokenizer = model, tokenizer
        r.runtime, r._forward = "torch", r._torch_forward
        return r

    def to_dict(self) -> dict:
        return {"type": "ExtractiveReader", "model": self.model_name, "device": self.device,
                "runtime": self.runtime,  # what reads, once warm (None before warm_up)
                "config": self.config.to_dict() if self.config else None}

    def warm_up(self) -> None:
        """Load ``spanqa_reader.json``, the tokenizer and the model in the configured runtime;
        a no-op once loaded. An ONNX runtime that cannot start falls back to torch with a log
        line (``self.runtime`` says which one reads)."""
        if self._forward is not None:
            return
        with self._lock:
            if self._forward is not None:
                return
            path = resolve_model_path(self.model_name)
            if self._explicit_config is None:
                folder = Path(path)
                cfg = ReaderConfig.load(folder) if folder.is_dir() else ReaderConfig()
                self.config = cfg.with_overrides(**self._overrides)
            self.probe = self._load_probe(path)
            runtime = resolve_runtime(self.config.runtime)
            if runtime in ONNX_RUNTIMES and self._start_onnx(path, runtime):
                return
            if runtime != "torch-bf16":
                runtime = "torch"  # also where an ONNX runtime could not start
            if self.model is None:  # else loaded for an ONNX export that then failed: fp32
                self.model = self._load_torch(path, bf16=runtime == "torch-bf16")
            if self.tokenizer is None:
                names = getattr(self.model, "input_names", None)  # our own modules say
                self.tokenizer = self._load_tokenizer(path, list(names) if names else None)
            self.runtime, self._forward = runtime, self._torch_forward

    def _load_probe(self, path: str) -> RefusalProbe | None:
        """The folder's refusal probe; a calibration that refuses by a probe the folder lacks
        is ``ModelNotFoundError`` (answering without it would refuse less than it says)."""
        probe = RefusalProbe.load(path)  # None for a hub id or a folder without one
        needs = [c for c in (self.config.calibration, *self.config.other_calibrations.values())
                 if c.probe_threshold is not None]
        if needs and probe is None:
            raise ModelNotFoundError(f"{self.model_name!r}: its calibration refuses by a refusal "
                                     "probe, and the folder holds none (refusal_probe.safetensors, "
                                     "spanqa_probe.json); copy them back or calibrate again.")
        return probe

    def _load_error(self, exc: Exception) -> ModelNotFoundError:
        return ModelNotFoundError(f"Could not load a question-answering model from "
                                  f"{self.model_name!r}: {str(exc).splitlines()[0]}")

    def _load_tokenizer(self, path: str, input_names: list[str] | None = None):
        """The model's fast tokenizer (character offsets need one). With ``input_names`` (an
        ONNX session's), it loads without importing torch (``index.onnx_runtime``)."""
        try:
            if input_names is not None:
                from index.onnx_runtime import fast_tokenizer

                tokenizer = fast_tokenizer(path, input_names)
            else:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise self._load_error(exc) from None
        if not getattr(tokenizer, "is_fast", False):
            raise ModelNotFoundError(
                f"{self.model_name!r} has no fast tokenizer; character offsets need one.")
        return tokenizer

    def _load_torch(self, path: str, bf16: bool = False, native: bool = True):
        """The torch model, fp32 or bf16: with ``native``, a local folder of one of the two
        reader architectures is built by :mod:`qa.encoders` without importing transformers;
        anything else (and the ONNX export, ``native=False``) by transformers."""
        import torch

        dtype = torch.bfloat16 if bf16 else torch.float32
        try:
            model = self._load_native(path, dtype) if native else None
            if model is None:
                from transformers import AutoModelForQuestionAnswering

                if is_packed(path):  # a low-rank delta over a pip-shipped base (qa/packed.py)
                    model = load_packed(path)
                else:
                    model = AutoModelForQuestionAnswering.from_pretrained(
                        path, dtype=torch.float32)
                model = model.to(dtype)
        except (OSError, ValueError) as exc:
            raise self._load_error(exc) from None
        return model.to(self.device).eval()

    @staticmethod
    def _load_native(path: str, dtype):
        folder = Path(path)
        if not (folder / "config.json").is_file():
            return None
        from qa.encoders import architecture, build_reader, read_config

        config = read_config(folder)
        if architecture(config) is None:
            return None
        state = folder_weights(folder)
        return None if state is None else build_reader(config, state, dtype)

    def _start_onnx(self, path: str, runtime: str) -> bool:
        """Read with ONNX Runtime (exporting on first use); False, after a log line, when it
        cannot (then torch reads)."""
        from index.onnx_runtime import first_line, model_input_names
        from qa.onnx_backend import open_runtime

        if self.device != "cpu" or not Path(path).is_dir():
            log.info("spanqa: %s runs on the CPU with a local model folder; torch reads", runtime)
            return False

        def load_torch():  # a cache miss: the export needs the model and its inputs
            if self.tokenizer is None:
                self.tokenizer = self._load_tokenizer(path)
            if self.model is None:
                self.model = self._load_torch(path, native=False)
            return self.model, model_input_names(self.tokenizer)

        layers = self.probe.layers if self.probe else ()
        try:
            session = open_runtime(path, runtime, load_torch, layers)
        except ModelNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - any runtime failure: read with torch
            log.warning("spanqa: the %s runtime is unavailable (%s: %s); reading with torch",
                        runtime, type(exc).__name__, first_line(exc))
            return False
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer(path, session.input_names)
        self._forward, self.runtime, self.model = session, runtime, None  # torch copy dropped
        return True

    def _torch_forward(self, batch: dict[str, np.ndarray]):
        import torch

        layers = self.probe.layers if self.probe else ()
        with torch.inference_mode(), layer_outputs(self.model, layers) as got:
            out = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in batch.items()})
            states = first_token_states(got, layers)
        return (out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy(),
                None if states is None else states.float().cpu().numpy())

    def _logits(self, windows, progress: bool = False):
        """Start and end logits of every window, and each window's probe term
        (:meth:`RefusalProbe.state_terms`; None without a probe)."""
        bs = self.config.batch_size
        starts, ends, terms = [], [], []
        inputs = windows.model_inputs()
        batches = range(0, len(windows), bs)
        if progress:  # long offline reads only (calibration); never per question
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="reading", unit="batch", mininterval=5)
        for i in batches:
            width = int(inputs["attention_mask"][i:i + bs].sum(1).max())
            s, e, states = self._forward({k: np.ascontiguousarray(v[i:i + bs, :width])
                                          for k, v in inputs.items()})
            pad = inputs["input_ids"].shape[1] - width
            starts.append(np.pad(s, ((0, 0), (0, pad)), constant_values=-1e4))
            ends.append(np.pad(e, ((0, 0), (0, pad)), constant_values=-1e4))
            if self.probe is not None:
                terms.append(self.probe.state_terms(states))
        return (np.concatenate(starts), np.concatenate(ends),
                np.concatenate(terms) if self.probe is not None else None)

    def window_logits(self, questions: list[str], passages: list[str], progress: bool = False):
        """``(windows, start_logits, end_logits)`` for (question, passage) pairs: the model's raw
        output before span decoding (calibration decodes it several ways)."""
        windows, start, end, _ = self.window_outputs(questions, passages, progress)
        return windows, start, end

    def window_outputs(self, questions: list[str], passages: list[str], progress: bool = False):
        """:meth:`window_logits` and each window's refusal-probe term (None without a probe)."""
        self.warm_up()
        cfg = self.config
        with self._use_lock:
            windows = build_windows(self.tokenizer, questions, passages, cfg.max_seq_len,
                                    cfg.doc_stride)
            start, end, terms = self._logits(windows, progress)
        return windows, start, end, terms

    def predict(self, question: str, passages: list[str], top_k: int = 5,
                threshold: float | None = None) -> ReaderResult:
        return self.predict_many([question], [passages], top_k, threshold)[0]

    def predict_many(self, questions: list[str], passages: list[list[str]], top_k: int = 5,
                     threshold: float | None = None) -> list[ReaderResult]:
        """The reader on its own: :meth:`read_spans`, then the scoring step
        (:func:`qa.scoring.score_spans`) with this reader's calibration and no passage
        similarity. ``threshold`` overrides the configured abstention threshold."""
        raw = self.read_spans(questions, passages)  # loads the model and its config
        return score_spans(raw, self.config.calibration, threshold, top_k)

    def read_spans(self, questions: list[str], passages: list[list[str]]) -> list[list[RawSpan]]:
        """Every question's candidate spans over its own passages, with raw logits, in as few
        forward passes as the batch size allows (unsorted, uncalibrated)."""
        self.warm_up()
        cfg = self.config
        q_flat, p_flat, owner = [], [], []
        for qi, (q, ps) in enumerate(zip(questions, passages)):
            for pi, p in enumerate(ps):
                q_flat.append(q)
                p_flat.append(p)
                owner.append((qi, pi))
        out: list[list[RawSpan]] = [[] for _ in questions]
        if not q_flat:
            return out
        windows, start, end, terms = self.window_outputs(q_flat, p_flat)
        cands = decode_windows(start, end, windows.offsets, windows.pair_index,
                               cfg.max_answer_len, cfg.top_n_per_window, cfg.length_penalty)
        nulls = min_null_logit(start, end, windows.pair_index)
        for pair, cs in cands.items():
            qi, pi = owner[pair]
            text = p_flat[pair]
            out[qi].extend(RawSpan(pi, text[c.char_start:c.char_end], c.char_start, c.char_end,
                                   c.logit, nulls[pair],
                                   None if terms is None
                                   else self.probe.score(terms[c.window], c.logit, nulls[pair]))
                           for c in cs)
        return out
