"""The ``spanqa`` command: a thin CLI over :class:`qa.DocumentQA`.

Subcommands here: ``index``, ``ask``, ``chat``, ``train-reader``, ``calibrate-reader``,
``pack-reader``.
Packages that build on ``qa`` add their own through the entry-point group
``spanqa.commands`` (``ui`` adds ``serve``, ``eval`` adds ``eval``), so ``qa`` never imports
them. Bad input ends in one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points

from qa.errors import SpanQAError

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"


def quiet_libraries() -> None:
    """Keep library chatter (progress bars while loading weights, advice) off the terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass


def add_source_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--index", metavar="DIR", help="a saved index (from `spanqa index`)")
    g.add_argument("--doc", metavar="PATH", action="append",
                   help="a document to index on the fly (repeat for several)")
    p.add_argument("--reader", metavar="NAME|PATH", default=None,
                   help="bundled reader name (default, fast), QA model folder or hub id")
    p.add_argument("--passages", type=int, default=3, help="passages the reader reads (default 3)")
    p.add_argument("--threshold", type=float, default=None,
                   help="abstain below this confidence (default: the reader's calibrated one)")


def open_qa(args):
    from qa.pipeline import DocumentQA

    if args.index:
        return DocumentQA.load(args.index, reader=args.reader, passages=args.passages)
    if args.doc:
        return DocumentQA.from_files(args.doc, reader=args.reader, passages=args.passages)
    return DocumentQA.default(reader=args.reader, passages=args.passages)


def format_answer(a, color: bool) -> str:
    b, d, r = (BOLD, DIM, RESET) if color else ("", "", "")
    if a.abstained:
        lines = [f"{b}The document does not say.{r} (no answer reached the confidence threshold)"]
        if a.candidates:
            c = a.candidates[0]
            lines.append(f"{d}Best guess, not trusted: {c.text!r} ({c.score:.2f}){r}")
        if a.passages:
            p = a.passages[0]
            lines.append(f"{d}Closest passage ({p.title}, chars {p.chunk.start}-{p.chunk.end}):{r}")
            lines.append("  " + p.chunk.text[:400] + ("…" if len(p.chunk.text) > 400 else ""))
        return "\n".join(lines)
    where = f"chars {a.start}-{a.end}" + (f", page {a.page}" if a.page else "")
    ps, pe, text = a.passage_start, a.passage_end, a.passage_text
    lines = [f"{b}{a.text}{r}   confidence {a.score:.2f}",
             f"{d}Source: {a.title} ({where}){r}",
             "  " + text[:ps] + (b + "«" if color else "«") + text[ps:pe] + ("»" + r if color else "»")
             + text[pe:]]
    if a.candidates:
        lines.append(f"{d}Also: " + "; ".join(f"{c.text!r} ({c.score:.2f})" for c in a.candidates) + r)
    return "\n".join(lines)


def cmd_index(args) -> int:
    from index.documents import load_file
    from index.embedder import shared_embedder
    from index.store import MANIFEST, DocumentStore

    out = args.out
    if os.path.exists(os.path.join(out, MANIFEST)):
        store = DocumentStore.load(out)
    else:
        store = DocumentStore(shared_embedder(args.embedder), args.chunk_size, args.overlap,
                              args.factory)
    for doc_id in args.remove or []:
        try:
            store.remove(doc_id)
        except KeyError as exc:
            raise SpanQAError(str(exc).strip("'\"")) from None
    changed = store.add([load_file(p) for p in args.paths], progress=True) if args.paths else []
    store.save(out)
    print(f"{out}: {len(store.documents)} documents, {len(store)} chunks "
          f"({len(changed)} added or updated, {len(args.remove or [])} removed)")
    return 0


def cmd_ask(args) -> int:
    qa = open_qa(args)
    answers = qa.ask_many(args.question, top_k=args.top_k, threshold=args.threshold)
    if args.json:
        out = [a.to_dict() for a in answers]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2, ensure_ascii=False))
    else:
        color = sys.stdout.isatty()
        print("\n\n".join(format_answer(a, color) for a in answers))
    return 0


def cmd_chat(args) -> int:
    qa = open_qa(args)
    qa.warm_up()
    docs = ", ".join(d.title for d in qa.store.documents.values())
    print(f"Ask about: {docs}\n(empty line or Ctrl-D to leave)")
    color = sys.stdout.isatty()
    while True:
        try:
            q = input("? ")
        except EOFError:
            print()
            return 0
        if not q.strip() or q.strip().lower() in {"quit", "exit"}:
            return 0
        try:
            print(format_answer(qa.ask(q, top_k=args.top_k, threshold=args.threshold), color))
        except SpanQAError as exc:
            print(f"spanqa: {exc}")
        print()


def cmd_pack_reader(args) -> int:
    from pathlib import Path

    from qa.packed import pack_reader

    meta = pack_reader(args.model, args.base, args.rank, args.out, args.keep_embeddings)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir())
    print(f"{args.out}: rank-{args.rank} delta over {args.base}, {len(meta['lowrank'])} low-rank "
          f"matrices (mean relative error {meta['mean_relative_error']:.3f}), "
          f"{size / 1e6:.1f} MB in all")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spanqa", description="Answer questions with spans copied from your documents.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="build or update an index on disk")
    p.add_argument("paths", nargs="*", help=".txt .md .html .pdf files")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--remove", nargs="+", metavar="DOC_ID", help="document ids to remove")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2")
    p.add_argument("--chunk-size", type=int, default=160)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--factory", default="auto", help='FAISS factory string, e.g. "Flat", "HNSW32"')
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("ask", help="answer one or more questions")
    p.add_argument("question", nargs="+")
    add_source_options(p)
    p.add_argument("--top-k", type=int, default=3, help="answers to return (best + runner-ups)")
    p.add_argument("--json", action="store_true", help="print the whole Answer as JSON")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="a chat loop in the terminal")
    add_source_options(p)
    p.add_argument("--top-k", type=int, default=3)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("pack-reader", help="ship a reader as a low-rank delta over a pip-shipped "
                       "base (qa/packed.py)")
    p.add_argument("model", help="a trained QA model folder (from train-reader)")
    p.add_argument("--base", required=True, help="the base it was trained from, e.g. all-mpnet-base-v2")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--keep-embeddings", action="store_true",
                   help="also store the embedding tables' delta (default: leave them at the base)")
    p.set_defaults(func=cmd_pack_reader)

    # Listed for --help; main() hands their arguments to their own parsers.
    sub.add_parser("train-reader", help="train an extractive reader (qa/train.py)", add_help=False)
    sub.add_parser("calibrate-reader", help="fit confidence and abstention (qa/calibrate.py)",
                   add_help=False)

    for ep in entry_points(group="spanqa.commands"):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the core CLI down
            print(f"spanqa: command {ep.name!r} unavailable ({exc})", file=sys.stderr)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_libraries()
    try:
        if argv and argv[0] == "train-reader":
            from qa.train import main as train_main

            return train_main(argv[1:])
        if argv and argv[0] == "calibrate-reader":
            from qa.calibrate import main as calibrate_main

            return calibrate_main(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except SpanQAError as exc:
        print(f"spanqa: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
