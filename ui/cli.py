"""``spanqa serve``: registered through the ``spanqa.commands`` entry point."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="start the chat web page (Gradio)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--index", metavar="DIR", help="a saved index")
    g.add_argument("--doc", metavar="PATH", action="append", help="a document (repeat for several)")
    p.add_argument("--reader", default=None,
                   help="bundled reader name (default, fast), QA model folder or hub id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency", type=int, default=2, help="questions answered at once")
    p.set_defaults(func=run)


def run(args) -> int:
    from ui.app import serve

    serve(index=args.index, docs=args.doc, reader=args.reader, host=args.host, port=args.port,
          concurrency=args.concurrency)
    return 0
