"""``spanqa serve``: registered through the ``spanqa.commands`` entry point."""
from __future__ import annotations

from qa.cli import add_ray_option, add_runtime_option, cpus_option, int_option


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the chat web page (Gradio)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--index", metavar="DIR", help="a saved index")
    g.add_argument("--doc", metavar="PATH", action="append", help="a document (repeat for several)")
    p.add_argument("--reader", default=None,
                   help="bundled reader name (default, fast), QA model folder or hub id")
    add_runtime_option(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_option("--port", 1, 65535), default=7860)
    p.add_argument("--concurrency", type=int_option("--concurrency", 1, 64), default=2,
                   help="questions answered at once")
    p.add_argument("--feedback-log", metavar="FILE", default=None,
                   help="show like/dislike on answers and append each to this JSONL file "
                        "(question, answer, confidence, document, position)")
    add_ray_option(p, "answer on a Ray cluster: Ray Serve replicas hold the models")
    p.add_argument("--replicas", type=int_option("--replicas", 1, 256), default=None,
                   help="with --ray: copies of the answering pipeline (default 2)")
    p.add_argument("--cpus-per-replica", type=cpus_option, default=None,
                   help="with --ray: CPUs each replica reserves (and the threads it computes with; default 1)")
    p.add_argument("--shared-dir", metavar="DIR", default=None,
                   help="with --ray: a folder every node reads and writes, for the start-up "
                        "index and visitors' uploads (default ~/.cache/spanqa/ray; on a "
                        "cluster, a shared mount)")
    p.set_defaults(func=run)


def check_address(host: str, port: int) -> None:
    """Refuse an unknown host or a port in use now, before ~20 s of model loading."""
    import socket

    from qa.errors import SpanQAError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SpanQAError(f"--host {host!r} is not an address of this machine ({exc}).") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as exc:
            raise SpanQAError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); is "
                              "another server using it? Pick another --port.") from None


def run(args) -> int:
    from qa.errors import SpanQAError

    given = [o for o, v in (("--replicas", args.replicas), ("--cpus-per-replica", args.cpus_per_replica),
                            ("--shared-dir", args.shared_dir)) if v is not None]
    if given and not args.ray:
        raise SpanQAError(f"{', '.join(given)} only apply with --ray.")
    check_address(args.host, args.port)
    if args.feedback_log:
        from pathlib import Path

        log = Path(args.feedback_log)
        try:  # refuse an unwritable log now, not at the first click
            log.parent.mkdir(parents=True, exist_ok=True)
            log.open("a").close()
        except OSError as exc:
            raise SpanQAError(f"--feedback-log {args.feedback_log}: cannot write there "
                              f"({exc.strerror or exc}).") from None
    index = args.index
    if index:  # a missing or damaged index is reported before the models load, and read once
        from index.store import DocumentStore

        index = DocumentStore.load(index)
    if args.ray:
        from qa.cluster import require_ray
        from ui.app import serve_ray

        require_ray()  # before anything loads
        serve_ray(index=index, docs=args.doc, reader=args.reader, address=args.ray,
                  replicas=args.replicas or 2, shared_dir=args.shared_dir,
                  cpus_per_replica=args.cpus_per_replica or 1.0, host=args.host, port=args.port,
                  concurrency=max(args.concurrency, 16), feedback_log=args.feedback_log)
        return 0
    from ui.app import serve  # Gradio's import alone takes seconds: after every check above

    serve(index=index, docs=args.doc, reader=args.reader, host=args.host, port=args.port,
          concurrency=args.concurrency, feedback_log=args.feedback_log)
    return 0
