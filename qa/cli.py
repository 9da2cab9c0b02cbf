"""The ``spanqa`` command: a thin CLI over :class:`qa.DocumentQA`.

Subcommands here: ``index``, ``ask``, ``chat``, ``train-reader``, ``calibrate-reader``,
``pack-reader``, ``train-retriever``, ``pack-embedder``.
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
MAX_CHUNK_SIZE = 256  # the embedders' window, in tokens


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (and exit 2), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"spanqa: error: {message}\n")


def count_option(name: str, maximum: int):
    """An argparse type: a whole number in 1..maximum."""
    def parse(text: str) -> int:
        from qa.pipeline import check_count

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}") from None
        try:
            return check_count(value, name, maximum)
        except SpanQAError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    return parse


def threshold_option(text: str) -> float:
    from qa.pipeline import check_threshold

    try:
        return check_threshold(text)
    except SpanQAError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None


def int_option(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be from {lo} to {hi}, not {value}")
        return value
    return parse


def cpus_option(text: str) -> float:
    """An argparse type: a CPU count for a Ray worker, 0.1 to 256."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"CPUs must be a number, not {text!r}") from None
    if not 0.1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"CPUs must be from 0.1 to 256, not {text}")
    return value


def quiet_libraries() -> None:
    """Keep library chatter (progress bars while loading weights, advice) off the terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # read by transformers and huggingface_hub when they load, so they need not load here
    # (importing transformers is about a second of a cold start that may never need it)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def reader_env(runtime: str | None, read_all: bool) -> None:
    """``--runtime`` and ``--read-all`` for every reader this process (and its Ray workers)
    builds: the environment variables :class:`qa.reader.ExtractiveReader` reads."""
    from qa.reader import READ_ALL_ENV, RUNTIME_ENV

    if runtime:
        os.environ[RUNTIME_ENV] = runtime
    if read_all:
        os.environ[READ_ALL_ENV] = "1"


def add_runtime_option(p: argparse.ArgumentParser) -> None:
    """``--runtime``: what runs the reader's network (every reader of the command)."""
    from qa.onnx_backend import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="what runs the reader: torch (fp32), torch-bf16, onnx (fp32), onnx-int8, "
                        "or auto (torch-bf16 on CPUs with AMX, else onnx) (default: the one "
                        "the reader's folder names; see the README's table)")
    p.add_argument("--read-all", action="store_true",
                   help="read every retrieved passage at once (the default reader reads its "
                        "first 2, and the rest only when it is unsure)")


def add_source_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--index", metavar="DIR", help="a saved index (from `spanqa index`)")
    g.add_argument("--doc", metavar="PATH", action="append",
                   help="a document to index on the fly (repeat for several)")
    p.add_argument("--reader", metavar="NAME|PATH", default=None,
                   help="bundled reader name (default, fast), QA model folder or hub id")
    from qa.retriever import DEFAULT_TOP_K

    p.add_argument("--passages", type=count_option("passages", 20), default=DEFAULT_TOP_K,
                   help=f"passages the reader reads, 1-20 (default {DEFAULT_TOP_K})")
    p.add_argument("--threshold", type=threshold_option, default=None,
                   help="abstain below this confidence, 0-1; 0 never abstains (default: the reader's "
                        "calibrated rule, see qa/calibration.py)")
    add_runtime_option(p)


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
        lines = [f"{b}The document does not say.{r} (no answer was sure enough)"]
        if a.candidates:
            c = a.candidates[0]
            lines.append(f"{d}Best guess, not trusted: {c.text!r} ({c.score:.2f}){r}")
        if a.passages:
            p = a.passages[0]
            lines.append(f"{d}Closest passage ({p.title}, chars {p.chunk.start}-{p.chunk.end}):{r}")
            lines.append("  " + p.chunk.text[:400] + ("…" if len(p.chunk.text) > 400 else ""))
        return "\n".join(lines)
    where = f"chars {a.start}-{a.end}" + (f", page {a.page}" if a.page else "") + (
        f", section “{a.section}”" if a.section else "")
    ps, pe, text = a.passage_start, a.passage_end, a.passage_text
    lines = [f"{b}{a.text}{r}   confidence {a.score:.2f}",
             f"{d}Source: {a.title} ({where}){r}",
             "  " + text[:ps] + (b + "«" if color else "«") + text[ps:pe] + ("»" + r if color else "»")
             + text[pe:]]
    if a.candidates:
        lines.append(f"{d}Also: " + "; ".join(f"{c.text!r} ({c.score:.2f})" for c in a.candidates) + r)
    return "\n".join(lines)


def _index_target(args, old, docs: list):
    """The store ``spanqa index`` adds ``docs`` to: the one on disk, or (new, or
    ``--rebuild``) a fresh one with the asked settings, else the old store's, holding the
    old store's documents too. Returns ``(store, documents to add)``."""
    from index.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP
    from index.embedder import DEFAULT_EMBEDDER, shared_embedder
    from index.store import DocumentStore

    if old is not None and not args.rebuild:
        return old, docs
    chunk_size = args.chunk_size if args.chunk_size is not None else (
        old.chunk_size if old is not None else DEFAULT_CHUNK_SIZE)
    overlap = args.overlap
    if overlap is None:
        overlap = min(old.overlap if old is not None else DEFAULT_OVERLAP, chunk_size // 2)
    if overlap >= chunk_size:
        raise SpanQAError(f"--overlap ({overlap}) must be smaller than --chunk-size ({chunk_size}).")
    store = DocumentStore(shared_embedder(args.embedder or DEFAULT_EMBEDDER), chunk_size, overlap,
                          args.factory or (old.factory if old is not None else "auto"))
    return store, (list(old.documents.values()) + docs if old is not None else docs)


def cmd_index(args) -> int:
    from pathlib import Path

    from index.documents import load_file
    from index.locking import store_lock
    from index.store import MANIFEST, DocumentStore

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SpanQAError(f"--out {out} is a file; give a folder for the index.")
    chunk_size = args.chunk_size
    overlap = args.overlap
    if chunk_size is not None and overlap is not None and overlap >= chunk_size:
        raise SpanQAError(f"--overlap ({overlap}) must be smaller than --chunk-size ({chunk_size}).")
    given = {k: v for k, v in (("--embedder", args.embedder), ("--chunk-size", chunk_size),
                               ("--overlap", overlap), ("--factory", args.factory)) if v is not None}
    embed = None
    if args.ray:
        from qa.cluster import connect, embed_on_ray, load_files_on_ray

        connect(args.ray)
        docs = load_files_on_ray(args.paths, args.max_chars)
    else:
        docs = [load_file(p, max_chars=args.max_chars) for p in args.paths]  # before the lock: slow
    with store_lock(out):
        old = None
        if (out / MANIFEST).exists():
            try:
                old = DocumentStore.load(out)
            except SpanQAError:
                if not args.rebuild:
                    raise
        if old is not None and given and not args.rebuild:
            raise SpanQAError(
                f"{out} already exists; {', '.join(given)} would change how it is built. Add "
                "--rebuild to re-index its documents with the new settings.")
        if args.remove and old is None:
            raise SpanQAError(f"There is no index at {out} to remove documents from.")
        for doc_id in args.remove or []:
            old.remove(doc_id)  # in memory; an unknown id is a typed error naming what is there
        store, docs = _index_target(args, old, docs)
        if args.ray:
            embed = embed_on_ray(store.embedder.name)
        changed = store.add(docs, progress=True, embed=embed) if docs else []
        store.save(out)
    print(f"{out}: {len(store.documents)} documents, {len(store)} chunks "
          f"({len(changed)} added or updated, {len(args.remove or [])} removed"
          f"{', rebuilt with ' + store.embedder.name if args.rebuild else ''})")
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
    print(f"Ask about: {docs}\nFollow-up questions are read in the light of the last answer; "
          "/new starts over. (Empty line or Ctrl-D to leave.)")
    color = sys.stdout.isatty()
    conv = qa.chat()
    if hasattr(sys.stdin, "reconfigure"):  # undecodable input becomes U+FFFD, not a crash
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            q = input("? ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 130
        if not q.strip() or q.strip().lower() in {"quit", "exit"}:
            return 0
        if q.strip().lower() in {"/new", "/reset"}:
            conv.reset()
            print("(a new conversation)\n")
            continue
        try:
            a = conv.ask(q, top_k=args.top_k, threshold=args.threshold)
            if a.read_as and a.read_as != a.question:
                print(f"{DIM if color else ''}Read as: {a.read_as}{RESET if color else ''}")
            print(format_answer(a, color))
        except SpanQAError as exc:
            print(f"spanqa: {exc}")
        print()


class DeprecatedAlias(argparse.Action):
    """An old option spelling that still works, with a note on stderr naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"spanqa: note: {option_string} is now {self.new}; the old name will go.",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def register_index(sub) -> None:
    from index.documents import MAX_DOCUMENT_CHARS
    from index.embedder import DEFAULT_EMBEDDER

    p = sub.add_parser("index", help="build or update an index on disk")
    p.add_argument("paths", nargs="*", help=".txt .md .html .pdf files")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--remove", nargs="+", metavar="DOC_ID", help="document ids to remove")
    p.add_argument("--rebuild", action="store_true",
                   help="re-index the store's documents (and any PATHS) with the current or "
                        "given embedder and settings; also replaces a damaged store")
    p.add_argument("--embedder", default=None,
                   help=f"embedder for a new or rebuilt index (default: {DEFAULT_EMBEDDER})")
    p.add_argument("--chunk-size", type=int_option("--chunk-size", 8, MAX_CHUNK_SIZE),
                   default=None, help="tokens per chunk for a new or rebuilt index (default 160)")
    p.add_argument("--overlap", type=int_option("--overlap", 0, MAX_CHUNK_SIZE - 1),
                   default=None, help="tokens shared by neighbouring chunks (default 32)")
    p.add_argument("--factory", default=None,
                   help='FAISS factory string for a new or rebuilt index, e.g. "Flat", "HNSW32"')
    p.add_argument("--max-chars", type=int_option("--max-chars", 1, 10**9),
                   default=MAX_DOCUMENT_CHARS,
                   help=f"refuse a file with more text than this (default {MAX_DOCUMENT_CHARS:,})")
    add_ray_option(p, "read the files and embed the chunks on Ray workers (the files at paths "
                      "every node can read); the index is written here as usual")
    p.set_defaults(func=cmd_index)


def add_ray_option(p, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help=f"{what}; ADDRESS: auto (default: the running cluster, else a local "
                        "one), local, or HOST:PORT. Needs pip install -e '.[ray]'")


def add_answers_option(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--answers", dest="top_k", type=count_option("answers", 20), default=3,
                   help=f"answers to {verb}, best + runner-ups, 1-20 (default 3)")
    p.add_argument("--top-k", dest="top_k", type=count_option("answers", 20),
                   action=DeprecatedAlias, new="--answers", help=argparse.SUPPRESS)


def register_ask(sub) -> None:
    p = sub.add_parser("ask", help="answer one or more questions")
    p.add_argument("question", nargs="+")
    add_source_options(p)
    add_answers_option(p, "return")
    p.add_argument("--json", action="store_true", help="print the whole Answer as JSON")
    p.set_defaults(func=cmd_ask)


def register_chat(sub) -> None:
    p = sub.add_parser("chat", help="a chat loop in the terminal")
    add_source_options(p)
    add_answers_option(p, "show")
    p.set_defaults(func=cmd_chat)


def passthrough(sub, name: str, help: str, main: str) -> None:
    """A command with its own argument parser (``main(argv)`` in module:function form): the
    arguments after its name go to it untouched."""
    p = sub.add_parser(name, help=help, add_help=False)
    p.set_defaults(func=lambda args: _load(main)(args.rest), passthrough=True)


# Every subcommand: its name and the function that adds it to the parser. qa's own are listed
# here; packages that build on qa add theirs through the entry-point group
# ``spanqa.commands`` (``ui`` adds ``serve``, ``eval`` adds ``eval``), so qa never imports them.
COMMANDS = {
    "index": register_index,
    "ask": register_ask,
    "chat": register_chat,
    "train-reader": lambda sub: passthrough(
        sub, "train-reader", "train an extractive reader (qa/training/reader.py)",
        "qa.training.reader:main"),
    "calibrate-reader": lambda sub: passthrough(
        sub, "calibrate-reader", "fit confidence and abstention (qa/training/calibrate.py)",
        "qa.training.calibrate:main"),
    "pack-reader": lambda sub: passthrough(
        sub, "pack-reader", "ship a reader as a low-rank delta over a pip-shipped base",
        "qa.training.pack:main"),
    "train-retriever": lambda sub: passthrough(
        sub, "train-retriever", "fine-tune the embedder as a retriever "
        "(qa/training/retriever.py)", "qa.training.retriever:main"),
    "pack-embedder": lambda sub: passthrough(
        sub, "pack-embedder", "ship a trained retriever as fp16 encoder weights over its base",
        "qa.training.retriever:pack_main"),
}


def _load(spec: str):
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _unavailable(name: str, exc: Exception):
    def register(sub):
        p = sub.add_parser(name, help=f"(unavailable: {exc})", add_help=False)

        def fail(args):
            raise SpanQAError(f"The command {name!r} could not be loaded ({exc}); reinstall "
                              "spanqa with its extras.")
        p.set_defaults(func=fail, passthrough=True)
    return register


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="spanqa", description="Answer questions with spans copied from your documents.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    registry = dict(COMMANDS)
    for ep in entry_points(group="spanqa.commands"):
        try:
            registry.setdefault(ep.name, ep.load())
        except Exception as exc:  # reported when that command is used, not at every start
            registry.setdefault(ep.name, _unavailable(ep.name, exc))
    for register in registry.values():
        register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_libraries()
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if getattr(args, "passthrough", False):
            args.rest = argv[argv.index(args.command) + 1:]
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        reader_env(getattr(args, "runtime", None), getattr(args, "read_all", False))
        return int(args.func(args) or 0)
    except SpanQAError as exc:
        print(f"spanqa: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `spanqa ask ... | head -1`: the reader left; say nothing more
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"spanqa: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
