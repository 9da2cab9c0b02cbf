"""Pack a fine-tuned reader as a low-rank delta over a base that pip ships:
``spanqa pack-reader MODEL --base all-mpnet-base-v2 --rank 64 --out DIR``.

Several readers of one lineage (continued from one another, so their weights lie in one basin)
can be averaged first, each ``PATH:WEIGHT`` ("model soup", Wortsman et al. 2022):
``spanqa pack-reader qa/models/reader:1 runs/v8-packed:1 --base all-mpnet-base-v2 --out DIR``.
A reader whose base is small enough to ship whole (the fast reader, 45 MB) is written whole in
fp16 instead of as a delta: ``spanqa pack-reader A:1 B:1 --full --out DIR``.

The loader, :func:`qa.packed.load_packed`, is on the answering path; this writer is not.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from qa.errors import ModelNotFoundError, SpanQAError
from qa.packed import (
    DELTA_CONFIG_FILE,
    DELTA_FORMAT,
    DELTA_FORMAT_VERSION,
    DELTA_WEIGHTS_FILE,
    _base_key,
    _empty_qa_model,
    folder_weights,
    resolve_base,
)
from qa.reader import ReaderConfig


def parse_reader_spec(spec: str) -> tuple[Path, float]:
    """``PATH`` or ``PATH:WEIGHT`` (weight 1 when none is given) -> (path, weight)."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not path:
        return Path(spec), 1.0
    try:
        w = float(weight)
    except ValueError:
        return Path(spec), 1.0  # a colon inside the path itself
    if not w > 0:
        raise SpanQAError(f"A reader's weight must be above 0, not {weight!r} (in {spec!r}).")
    return Path(path), w


def copy_reader_files(model_dir: Path, out: Path) -> None:
    """Give ``out`` the reader folder's config, tokenizer and reading settings, not its weights
    (whole or packed): the writers below add those. Nothing to copy when ``out`` is the folder."""
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == model_dir.resolve():
        return
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", DELTA_WEIGHTS_FILE,
                                          DELTA_CONFIG_FILE):
            shutil.copy(f, out / f.name)


def sources(averaged_from: list[tuple[Path, float]]) -> list[dict]:
    """What an average was made of, as recorded beside its weights."""
    return [{"reader": str(f), "weight": w} for f, w in averaged_from]


def average_weights(readers: list[tuple[Path, float]]) -> dict:
    """The weighted mean of several readers' fp32 weights, full or packed folders; the weights
    must sum to 1 (:func:`main` normalises them). The readers must have the same tensors of
    the same shapes: one architecture, one lineage."""
    avg, first = None, None
    for folder, w in readers:
        sd = folder_weights(folder)
        if sd is None:
            raise ModelNotFoundError(f"No reader at {folder} (no model.safetensors and no "
                                     f"packed delta).")
        if avg is None:
            avg, first = {k: v.float() * w for k, v in sd.items()}, folder
            continue
        if sd.keys() != avg.keys() or any(sd[k].shape != avg[k].shape for k in avg):
            raise SpanQAError(f"{folder} and {first} are not the same architecture; only "
                              f"readers of one lineage can be averaged.")
        for k, v in sd.items():
            avg[k] += v.float() * w
    return avg


def pack_reader(model_dir: str | Path, base: str, rank: int, out: str | Path,
                keep_embeddings: bool = False, tuned: dict | None = None,
                averaged_from: list[tuple[Path, float]] | None = None) -> dict:
    """Write ``out``: the QA model at ``model_dir`` as a rank-``rank`` delta over ``base``.
    ``tuned``: weights to pack instead of ``model_dir``'s (which then gives only the config,
    tokenizer and reading settings), e.g. :func:`average_weights` of ``averaged_from``, which
    ``spanqa_delta.json`` records.

    2-D weights become ``U`` (out x r) and ``V`` (r x in) from a truncated SVD of the delta;
    1-D tensors and tensors the base lacks (the span head) are kept whole; embedding tables
    stay at the base unless ``keep_embeddings`` (they barely move in fine-tuning and are the
    largest matrices; measured: dropping their delta costs nothing on dev). Returns the
    ``spanqa_delta.json`` written."""
    import torch
    from safetensors.torch import load_file, save_file

    model_dir, out = Path(model_dir), Path(out)
    if rank < 1:
        raise SpanQAError(f"--rank must be at least 1, not {rank}.")
    base_dir = Path(resolve_base(base))
    checks = ((base_dir, "base model"),) if tuned is not None else (
        (model_dir, "fine-tuned model"), (base_dir, "base model"))
    for d, what in checks:
        if not (d / "model.safetensors").is_file():
            raise ModelNotFoundError(f"No {what} at {d} (it has no model.safetensors).")
    if tuned is None:
        tuned = load_file(str(model_dir / "model.safetensors"))
    base_sd = load_file(str(base_dir / "model.safetensors"))
    prefix = _empty_qa_model(model_dir).base_model_prefix
    tensors, lowrank, whole, at_base, rel_err = {}, [], [], [], {}
    for key, w in tuned.items():
        bk = _base_key(key, prefix, base_sd)
        w = w.float()
        if bk is None or w.dim() == 1:
            tensors[key] = w.half().contiguous()
            whole.append(key)
            continue
        delta = w - base_sd[bk].float()
        if "embeddings" in key and not keep_embeddings:
            at_base.append(key)
            continue
        u, s, v = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, s.numel())
        U, V = (u[:, :r] * s[:r]).contiguous(), v[:r].contiguous()
        rel_err[key] = float((delta - U @ V).norm() / max(float(delta.norm()), 1e-12))
        tensors[key + ".lowrank_u"], tensors[key + ".lowrank_v"] = U.half(), V.half()
        lowrank.append(key)
    copy_reader_files(model_dir, out)
    (out / "model.safetensors").unlink(missing_ok=True)
    save_file(tensors, str(out / DELTA_WEIGHTS_FILE))
    base_info = json.loads((base_dir / "base.json").read_text()) if (
        base_dir / "base.json").is_file() else {}
    meta = {
        "format": DELTA_FORMAT, "version": DELTA_FORMAT_VERSION,
        "base": base, "base_sha256": base_info.get("model_sha256"),
        "base_packages": base_info.get("packages"), "rank": rank,
        "lowrank": lowrank, "whole": whole, "at_base": at_base,
        "mean_relative_error": sum(rel_err.values()) / max(len(rel_err), 1),
    }
    if averaged_from:
        meta["averaged_from"] = sources(averaged_from)
    (out / DELTA_CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def save_full(model_dir: str | Path, out: str | Path, tuned: dict,
              averaged_from: list[tuple[Path, float]] | None = None) -> None:
    """Write ``out``: ``model_dir``'s reader folder (config, tokenizer, reading settings) with
    the weights ``tuned`` stored whole in fp16, as ``train-reader`` writes them; an average
    records what it was made of in ``spanqa_reader.json`` (``averaged_from``)."""
    from safetensors.torch import save_file

    model_dir, out = Path(model_dir), Path(out)
    copy_reader_files(model_dir, out)
    save_file({k: v.half().contiguous() for k, v in tuned.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    if averaged_from:
        cfg = ReaderConfig.load(out)
        cfg.notes["averaged_from"] = sources(averaged_from)
        cfg.save(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="spanqa pack-reader",
                                 description="Ship a reader as a low-rank delta over a pip-shipped base.")
    ap.add_argument("model", nargs="+", metavar="MODEL[:WEIGHT]",
                    help="a trained QA model folder (from train-reader); several (full or "
                         "packed, one lineage) are averaged first, each with its WEIGHT (1)")
    ap.add_argument("--base", help="the base it was trained from, e.g. all-mpnet-base-v2 "
                                    "(needed unless --full)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--keep-embeddings", action="store_true",
                    help="also store the embedding tables' delta (default: leave them at the base)")
    ap.add_argument("--full", action="store_true",
                    help="write the (averaged) weights whole in fp16 rather than as a delta over "
                         "--base: for a small reader such as the fast one")
    args = ap.parse_args(argv)
    if not args.full and not args.base:
        raise SpanQAError("pack-reader needs --base (the pip-shipped encoder the reader was "
                          "trained from), or --full to write the weights whole.")
    readers = [parse_reader_spec(m) for m in args.model]
    total = sum(w for _, w in readers)
    readers = [(f, w / total) for f, w in readers]
    if args.full:
        tuned = average_weights(readers)  # one reader: its own weights
        save_full(readers[0][0], args.out, tuned, readers if len(readers) > 1 else None)
        size = (Path(args.out) / "model.safetensors").stat().st_size
        print(f"{args.out}: {len(tuned)} tensors written whole in fp16 "
              f"({size / 1e6:.1f} MB)" + (f", the average of {len(readers)} readers"
                                          if len(readers) > 1 else ""))
        return 0
    if len(readers) == 1:
        meta = pack_reader(readers[0][0], args.base, args.rank, args.out, args.keep_embeddings)
    else:
        meta = pack_reader(readers[0][0], args.base, args.rank, args.out, args.keep_embeddings,
                           tuned=average_weights(readers), averaged_from=readers)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"{args.out}: rank-{args.rank} delta over {args.base}, {len(meta['lowrank'])} low-rank "
          f"matrices (mean relative error {meta['mean_relative_error']:.3f}), "
          f"{size / 1e6:.1f} MB in all")
    return 0
