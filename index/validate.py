"""Checks that make a damaged store fail loudly instead of answering wrongly.

A save records every generation file's size and sha256 in the manifest (``files``); a load
verifies them before parsing anything, then validates each JSON record's shape and
cross-checks the parts (chunk text equals its document's text at its span, one vector and
one FAISS entry per chunk, every chunk names a known document). Each failure raises
:class:`CorruptStoreError` naming the file and the way out. Stores saved before checksums
existed skip the checksum step only.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from index.errors import CorruptStoreError

GENERATION = re.compile(r"^gen-[A-Za-z0-9_]+$")
_CHUNK_FIELDS = {"id": str, "doc_id": str, "index": int, "start": int, "end": int,
                 "text": str, "n_tokens": int, "page": (int, type(None))}
_DOC_FIELDS = {"id": str, "title": str, "source": str, "text": str, "page_starts": list}


def damaged(root: Path, what: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"The index at {root} is damaged: {what}. Rebuild it with "
        f"`spanqa index --rebuild --out {root} FILE ...`.")


def file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def digests(gen_dir: Path) -> dict[str, dict]:
    """Size and sha256 of every file under a generation folder, by relative path."""
    return {p.relative_to(gen_dir).as_posix(): file_digest(p)
            for p in sorted(gen_dir.rglob("*")) if p.is_file()}


def generation_dir(root: Path, manifest: dict) -> Path:
    name = manifest.get("generation")
    if not isinstance(name, str) or not GENERATION.match(name):
        raise damaged(root, f"manifest.json names the generation {name!r}, not a folder of "
                            "the store")
    gen = root / name
    if not gen.is_dir():
        raise damaged(root, f"its data folder {name} is missing")
    return gen


def check_manifest(root: Path, m: dict) -> None:
    emb, chunking = m.get("embedder"), m.get("chunking")
    if not isinstance(emb, dict) or not isinstance(emb.get("name"), str) or not isinstance(
            emb.get("dimension"), int):
        raise damaged(root, "manifest.json has no valid 'embedder' (name and dimension)")
    if not isinstance(chunking, dict) or not all(
            isinstance(chunking.get(k), int) and not isinstance(chunking.get(k), bool)
            for k in ("chunk_size", "overlap")):
        raise damaged(root, "manifest.json has no valid 'chunking' (chunk_size and overlap)")
    docs = m.get("documents", {})
    if not isinstance(docs, dict) or not all(isinstance(v, str) for v in docs.values()):
        raise damaged(root, "manifest.json's 'documents' is not a map of id to sha256")
    if not isinstance(m.get("index_factory", "auto"), str):
        raise damaged(root, "manifest.json's 'index_factory' is not a string")


def verify_files(root: Path, gen: Path, m: dict) -> None:
    """Sizes and hashes of the generation's files against the manifest's record."""
    files = m.get("files")
    if files is None:
        return  # saved before checksums were recorded
    if not isinstance(files, dict):
        raise damaged(root, "manifest.json's 'files' is not a map")
    for rel, want in files.items():
        p = gen / rel
        if not isinstance(rel, str) or ".." in Path(rel).parts or not p.is_file():
            raise damaged(root, f"{gen.name}/{rel} is missing")
        if not isinstance(want, dict) or p.stat().st_size != want.get("bytes"):
            raise damaged(root, f"{gen.name}/{rel} has the wrong size")
        if file_digest(p)["sha256"] != want.get("sha256"):
            raise damaged(root, f"{gen.name}/{rel} does not match its checksum (edited or "
                                "corrupted)")


def _check_record(root: Path, where: str, rec, fields: dict) -> None:
    if not isinstance(rec, dict):
        raise damaged(root, f"{where} is not an object")
    for name, kind in fields.items():
        v = rec.get(name)
        if name not in rec or not isinstance(v, kind) or isinstance(v, bool):
            raise damaged(root, f"{where} has no valid '{name}'")
    extra = set(rec) - set(fields) - {"sha256", "sections"}
    if extra:
        raise damaged(root, f"{where} has unknown fields {sorted(extra)}")


def check_documents(root: Path, docs) -> None:
    if not isinstance(docs, list):
        raise damaged(root, "documents.json is not a list")
    seen = set()
    for i, d in enumerate(docs):
        _check_record(root, f"documents.json entry {i}", d, _DOC_FIELDS)
        ps = d["page_starts"]
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= len(d["text"])
                   for x in ps) or ps != sorted(ps):
            raise damaged(root, f"documents.json entry {i} has invalid page_starts")
        secs = d.get("sections", [])
        if not isinstance(secs, list) or not all(
                isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and isinstance(x[1], str)
                and 0 <= x[0] <= len(d["text"]) for x in secs):
            raise damaged(root, f"documents.json entry {i} has invalid sections")
        if d["id"] in seen:
            raise damaged(root, f"documents.json names {d['id']!r} twice")
        seen.add(d["id"])


def check_chunks(root: Path, chunks: list[dict], texts: dict[str, str]) -> None:
    """Every chunk well-formed, naming a known document, its text that document's text at its
    span; and in the order saves write them (documents in order, each one's chunks numbered
    0, 1, 2...), since row i of the vectors belongs to line i."""
    seen = set()
    order = list(texts)
    at_doc, expect = -1, 0
    for i, c in enumerate(chunks):
        where = f"chunks.jsonl line {i + 1}"
        _check_record(root, where, c, _CHUNK_FIELDS)
        text = texts.get(c["doc_id"])
        if text is None:
            raise damaged(root, f"{where} names the unknown document {c['doc_id']!r}")
        if not 0 <= c["start"] < c["end"] <= len(text) or text[c["start"]:c["end"]] != c["text"]:
            raise damaged(root, f"{where}: its text is not its document's text at its span")
        if c["id"] in seen:
            raise damaged(root, f"{where} repeats the chunk id {c['id']!r}")
        seen.add(c["id"])
        if c["index"] == 0:
            nxt = order.index(c["doc_id"])
            at_doc, expect = (nxt, 0) if nxt > at_doc else (None, None)
        if at_doc is None or order[at_doc] != c["doc_id"] or c["index"] != expect:
            raise damaged(root, f"{where} is out of order (chunk lines moved)")
        expect += 1
