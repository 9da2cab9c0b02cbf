"""How much the chat server holds: concurrent gradio_client users against ``spanqa serve``.

    python -m eval.bench_serve [--users 1 4 16] [--questions 10] [--concurrency 2] [--no-batch]
    python -m eval.bench_serve --ray local --replicas 1 2 [--cpus 2]

Starts the app in-process on a free 127.0.0.1 port over the bundled article, then for each
user count runs that many clients at once, each asking ``--questions`` questions in turn
through the named ``/ask`` endpoint. Prints throughput and per-question latency as users
see it (queueing included). ``/ask`` goes through the batcher ``spanqa serve`` uses
(``qa/batcher.py``) unless ``--no-batch``. With ``--ray``, the page is ``spanqa serve --ray``'s
(``ui.app.serve_ray``) for each ``--replicas`` count in turn, each replica given ``--cpus``
divided among them (their threads too). Loopback only; bounded in count.
"""
from __future__ import annotations

import argparse
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from eval.bench_ask import QUESTIONS
from qa.cli import add_runtime_option, reader_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--reader", default=None)
    ap.add_argument("--no-batch", action="store_true", help="answer each /ask on its own")
    add_runtime_option(ap)
    ap.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="through a Ray Serve deployment (default: a local Ray instance)")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus", type=float, default=2.0, help="with --ray: CPUs for all replicas")
    args = ap.parse_args()
    reader_env(args.runtime, args.read_all)  # this process and Ray workers started from it
    if args.ray:
        return bench_ray(args)

    from qa import DocumentQA
    from qa.squad import load_squad, questions_of
    from ui.app import create_app

    qs = [q.question for q in questions_of(load_squad(QUESTIONS))]
    qa = DocumentQA.default(reader=args.reader)
    qa.warm_up()
    from qa.batcher import AskBatcher

    demo = create_app(qa, batcher=None if args.no_batch else AskBatcher())
    demo.queue(default_concurrency_limit=args.concurrency, max_size=256)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    print(f"{'users':>6} {'questions':>10} {'q/s':>6} {'p50 ms':>8} {'p95 ms':>8}")
    try:
        load(url, qs, args.users, args.questions)
    finally:
        demo.close()


def load(url: str, qs: list[str], users: list[int], questions: int, label: str = "") -> None:
    """Each user count in turn: that many clients asking ``questions`` questions each."""
    from gradio_client import Client

    def user(u: int) -> list[float]:
        c = Client(url, verbose=False)
        out = []
        for i in range(questions):
            t = time.perf_counter()
            c.predict(qs[(u * 7 + i) % len(qs)], 3, 0.5, api_name="/ask")
            out.append((time.perf_counter() - t) * 1000)
        return out

    for n in users:
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as ex:
            lat = [x for r in ex.map(user, range(n)) for x in r]
        wall = time.perf_counter() - t
        print(f"{label}{n:>6} {len(lat):>10} {len(lat) / wall:>6.1f} {np.percentile(lat, 50):>8.0f} "
              f"{np.percentile(lat, 95):>8.0f}", flush=True)


def bench_ray(args) -> None:
    from qa.cluster import shutdown
    from qa.squad import load_squad, questions_of
    from ui.app import serve_ray

    qs = [q.question for q in questions_of(load_squad(QUESTIONS))]
    print(f"{'replicas':>8} {'users':>6} {'questions':>10} {'q/s':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for r in args.replicas:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = time.perf_counter()
        demo = serve_ray(reader=args.reader, address=args.ray, replicas=r, port=port, block=False,
                         cpus_per_replica=args.cpus / r, concurrency=64)
        print(f"# {r} replica(s) ready in {time.perf_counter() - t:.1f} s", flush=True)
        try:
            load(f"http://127.0.0.1:{port}/", qs, args.users, args.questions, f"{r:>8} ")
        finally:
            demo.close()
            shutdown()


if __name__ == "__main__":
    main()
