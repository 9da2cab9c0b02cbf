"""spanqa on a Ray cluster: the answering pipeline as a Ray Serve deployment, and the pieces
that batch work (``eval --ray``, ``index --ray``) shares. Needs the extra:
``pip install -e ".[ray]"``. Only the ``--ray`` code paths import this module, and only this
module (and :mod:`eval.distributed`) imports Ray, so the single-process path never loads it.

* :func:`connect`: join a running cluster (``auto``, ``HOST:PORT``) or start a local instance
  (``local``, or ``auto`` when none is running).
* :class:`QAService`: what one replica holds: the reader and embedder, loaded once, and the
  stores it answers from, loaded by path (a path every node can read) and kept in an LRU.
  It is plain Python, so it is tested without Ray.
* :func:`deploy`: the Serve application: ``num_replicas`` replicas of :class:`QAService`;
  concurrent questions are grouped by Serve's ``@serve.batch`` and answered by one
  ``ask_many`` call.
* :class:`RemoteQA`: a client-side stand-in for ``DocumentQA`` (``ask``, ``ask_many``,
  ``chat``, ``store.documents``) that sends every question to the deployment, so the Gradio
  page and its ``/ask`` and ``/upload`` API work unchanged. A request that a dying replica
  dropped is sent again.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from qa.errors import SpanQAError
from qa.pipeline import MAX_ANSWERS, MAX_PASSAGES, DocumentQA, check_count, check_question, check_threshold
from qa.types import Answer, Passage

log = logging.getLogger("spanqa.cluster")

APP_NAME = "spanqa"
UPLOAD_TTL_S = 24 * 3600  # an upload's store is deleted a day after it was made
RETRIES = 4  # sends of one request when replicas die under it


def require_ray():
    try:
        import ray
    except ImportError:
        raise SpanQAError('--ray needs Ray: pip install -e ".[ray]" (or pip install "ray[serve]").') from None
    return ray


def connect(address: str | None = "auto", num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to or
    RAY_ADDRESS names; ``HOST:PORT`` or ``ray://HOST:PORT``: that one), or start a local
    instance (``local``, or ``auto`` when no cluster is running). Returns the ``ray`` module."""
    ray = require_ray()
    address = address or "auto"
    if address not in ("auto", "local"):
        _reachable(address)
    if ray.is_initialized():
        return ray
    opts = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    from qa.reader import READ_ALL_ENV, RUNTIME_ENV

    env = {k: os.environ[k] for k in (RUNTIME_ENV, READ_ALL_ENV) if os.environ.get(k)}
    if env:  # --runtime and --read-all reach the workers' readers too
        opts["runtime_env"] = {"env_vars": env}
    if address != "local":
        try:
            ray.init(address=address, **opts)
            return ray
        except ConnectionError as exc:
            if address != "auto":
                raise SpanQAError(f"Cannot reach the Ray cluster at {address} ({exc}). Start "
                                  "one with `ray start --head` or give its address.") from None
            log.warning("no running Ray cluster found; starting a local one")
    ray.init(num_cpus=num_cpus, **opts)
    return ray


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``HOST:PORT`` (Ray itself waits
    for a cluster's control store for a long time)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SpanQAError(f"--ray {address}: give auto, local or HOST:PORT of a Ray head node.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SpanQAError(f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}). "
                          "Start one with `ray start --head` or give its address.") from None


# ---- what one replica holds -------------------------------------------------------------
@dataclass(frozen=True)
class AskRequest:
    """One question for the deployment. ``store``: an upload's store id (None: the
    deployment's own index)."""
    question: str
    top_k: int = 3
    passages: int | None = None
    threshold: float | None = None
    store: str | None = None

    @property
    def group(self) -> tuple:
        return self.store, self.top_k, self.passages, self.threshold


class QAService:
    """The answering pipeline of one replica. ``index``: the store every visitor starts with;
    ``uploads``: the folder (shared by every node) where uploaded documents' stores are
    written, each under a fresh id, so any replica can answer questions about any upload."""

    def __init__(self, index: str, reader: str | None = None, uploads: str | None = None,
                 passages: int | None = None, max_stores: int = 32, threads: int | None = None):
        from qa.retriever import DEFAULT_TOP_K

        if threads:
            from index.onnx_runtime import limit_threads

            limit_threads(threads)
        self.index, self.uploads = str(index), Path(uploads) if uploads else None
        self.passages = passages or DEFAULT_TOP_K
        self.reader = reader  # a name: DocumentQA resolves it through the shared-reader cache
        self.max_stores = max_stores
        self._qas: OrderedDict[str, DocumentQA] = OrderedDict()
        self._lock = threading.Lock()
        self.qa(None).warm_up()

    def qa(self, store: str | None) -> DocumentQA:
        """The pipeline over the base index (``None``) or an upload's store, loaded once."""
        key = store or ""
        with self._lock:
            if key in self._qas:
                self._qas.move_to_end(key)
                return self._qas[key]
        from index.store import DocumentStore

        qa = DocumentQA(DocumentStore.load(self.store_path(store)), self.reader, self.passages)
        with self._lock:
            self._qas[key] = qa
            while len(self._qas) > self.max_stores:
                oldest = next(k for k in self._qas if k)  # the base index stays
                self._qas.pop(oldest)
        return qa

    def describe(self) -> dict:
        """What the page shows about the reader: its settings and name."""
        qa = self.qa(None)
        return {"reader_config": qa.reader.config, "reader": qa.reader.model_name,
                "passages": qa.retriever.top_k}

    def store_path(self, store: str | None) -> Path:
        if not store:
            return Path(self.index)
        if self.uploads is None or not store.isalnum():  # ids are ours: hex, no path parts
            raise SpanQAError("Unknown document; please upload it again.")
        return self.uploads / store

    def ask_batch(self, requests: list[AskRequest]) -> list[Answer | SpanQAError]:
        """Answers in order; requests with the same store and settings share one ``ask_many``
        call. A failing group is answered one request at a time, so a bad request returns its
        own error and takes no other down."""
        out: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.group, []).append(i)
        for idx in groups.values():
            first = requests[idx[0]]
            try:
                answers = self.qa(first.store).ask_many([requests[i].question for i in idx],
                                                        first.top_k, first.passages, first.threshold)
            except Exception as exc:  # noqa: BLE001 - isolate, then report each one's own error
                if len(idx) == 1:
                    out[idx[0]] = _as_error(exc)
                    continue
                answers = [self.ask_batch([requests[i]])[0] for i in idx]
            for i, a in zip(idx, answers):
                out[i] = a
        return out

    def ask_follow_up(self, store: str | None, read_as: str, context: str, keep: Passage | None,
                      top_k: int, passages: int | None, threshold: float | None):
        try:
            return self.qa(store).ask_follow_up(read_as, context, keep, top_k, passages, threshold)
        except Exception as exc:  # noqa: BLE001 - returned, not raised: see RemoteQA
            return _as_error(exc)

    def index_file(self, name: str, data: bytes, max_bytes: int, max_chars: int,
                   pdf_seconds: float) -> str | SpanQAError:
        """Index an uploaded file (its name and bytes) into a new store under ``uploads``;
        returns the store's id."""
        from index.documents import load_file
        from index.store import DocumentStore

        if self.uploads is None:
            return SpanQAError("This server takes no uploads.")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(name).name
                path.write_bytes(data)
                doc = load_file(path, max_bytes=max_bytes, max_chars=max_chars,
                                pdf_seconds=pdf_seconds)
            base = self.qa(None).store
            store = DocumentStore(base.embedder, base.chunk_size, base.overlap, base.factory)
            store.add([doc])
            store_id = uuid.uuid4().hex
            store.save(self.uploads / store_id)
            self.prune_uploads()
            return store_id
        except Exception as exc:  # noqa: BLE001
            return _as_error(exc)


    def prune_uploads(self, ttl_s: float = UPLOAD_TTL_S) -> int:
        """Delete upload stores older than ``ttl_s`` (the shared folder would otherwise grow
        with every visitor's file); returns how many went."""
        import shutil

        gone, now = 0, time.time()
        for d in self.uploads.iterdir() if self.uploads and self.uploads.is_dir() else []:
            if d.is_dir() and d.name.isalnum() and now - d.stat().st_mtime > ttl_s:
                shutil.rmtree(d, ignore_errors=True)
                with self._lock:
                    self._qas.pop(d.name, None)
                gone += 1
        return gone


def _as_error(exc: Exception) -> SpanQAError:
    if isinstance(exc, SpanQAError):
        return exc
    log.exception("request failed")
    return SpanQAError("Something went wrong while answering; please try again.")


# ---- batch work: spanqa index --ray ------------------------------------------------------
EMBED_BLOCK = 512  # chunks per Ray task


def load_files_on_ray(paths: list[str], max_chars: int) -> list:
    """``load_file`` for each path on the cluster's workers, in order; the first refused file
    raises its own ``SpanQAError`` here."""
    import ray

    from index.documents import load_file

    task = ray.remote(num_cpus=1, max_retries=2)(
        lambda p: _value_or_error(load_file, p, max_chars=max_chars))
    docs = ray.get([task.remote(str(p)) for p in paths])
    for d in docs:
        if isinstance(d, Exception):
            raise d
    return docs


def embed_on_ray(embedder: str, block: int = EMBED_BLOCK, cpus_per_worker: float = 1.0):
    """An ``embed(texts, progress)`` for ``DocumentStore.add``: blocks of ``block`` texts
    embedded by actors that each load ``embedder`` once; vectors in the texts' order."""
    import ray

    class Embed:
        def __init__(self, name: str, threads: int):
            from index.embedder import shared_embedder
            from index.onnx_runtime import limit_threads

            limit_threads(threads)
            self.embedder = shared_embedder(name)
            self.embedder.warm_up()

        def embed(self, texts):
            return self.embedder.embed(texts, progress=False)

    def run(texts: list[str], progress=None):
        import numpy as np
        from ray.util import ActorPool
        from tqdm import tqdm

        blocks = [texts[i:i + block] for i in range(0, len(texts), block)]
        free = ray.available_resources().get("CPU", 0.0)
        n = max(1, min(len(blocks), int(free // cpus_per_worker)))
        cpus = min(cpus_per_worker, max(0.1, round(free / n, 2)))  # never wait for a busy CPU
        actor = ray.remote(num_cpus=cpus, max_restarts=2, max_task_retries=2)(Embed)
        workers = [actor.remote(embedder, max(1, int(cpus_per_worker))) for _ in range(n)]
        out = []
        try:
            with tqdm(total=len(texts), desc=f"embedding ({n} Ray workers)", unit="text",
                      disable=progress is False) as bar:
                for vecs in ActorPool(workers).map(lambda a, b: a.embed.remote(b), blocks):
                    out.append(vecs)
                    bar.update(len(vecs))
        finally:  # the actors hold a model each: never leave them behind
            for w in workers:
                ray.kill(w)
        return np.vstack(out).astype(np.float32, copy=False)

    return run


def _value_or_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SpanQAError as exc:
        return exc


# ---- the Serve deployment -----------------------------------------------------------------
def deployment_class(max_batch: int = 16, batch_wait: float = 0.01):
    """The Serve deployment around :class:`QAService` (built here so Ray is imported only
    when it is used)."""
    import asyncio

    from ray import serve

    @serve.deployment(name="QAService", max_ongoing_requests=max(2 * max_batch, 8),
                      health_check_period_s=2, health_check_timeout_s=30)
    class Replica:
        def __init__(self, **options):
            self.service = QAService(**options)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait)
        async def ask(self, requests: list[AskRequest]) -> list:
            # in a thread: the replica keeps taking requests, and the next batch forms meanwhile
            return await asyncio.to_thread(self.service.ask_batch, requests)

        async def ask_follow_up(self, *args):
            return await asyncio.to_thread(self.service.ask_follow_up, *args)

        async def index_file(self, *args):
            return await asyncio.to_thread(self.service.index_file, *args)

        def describe(self) -> dict:
            return self.service.describe() | {"pid": os.getpid()}

    return Replica


def deploy(index: str, reader: str | None = None, replicas: int = 2, uploads: str | None = None,
           passages: int | None = None, cpus_per_replica: float = 1.0, max_batch: int = 16,
           batch_wait: float = 0.01):
    """Start (or update) the spanqa application on the connected cluster; returns its
    handle once every replica has loaded its models."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": 0}, proxy_location="Disabled")
    threads = max(1, int(cpus_per_replica))
    app = deployment_class(max_batch, batch_wait).options(
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica}).bind(
        index=str(index), reader=reader, uploads=uploads, passages=passages, threads=threads)
    return serve.run(app, name=APP_NAME, route_prefix=None)


def shutdown() -> None:
    ray = require_ray()
    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def _dropped(exc: BaseException) -> bool:
    """A request lost to a replica that died or stopped (sent again), not an answer's error."""
    from ray import exceptions as rx

    lost = tuple(getattr(rx, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError",
                                           "WorkerCrashedError", "NodeDiedError") if hasattr(rx, n))
    try:
        from ray.serve.exceptions import RequestCancelledError

        lost += (RequestCancelledError,)
    except ImportError:
        pass
    return isinstance(exc, lost) and not isinstance(exc, SpanQAError)


def call(method, *args, retries: int = RETRIES, sent=None):
    """``method.remote(*args).result()`` (``sent``: a response already sent), sent again
    (with a short back-off) when the replica it went to died; an error the service returned
    is raised here, in the caller."""
    for attempt in range(retries):
        try:
            out = (sent if sent is not None and attempt == 0 else method.remote(*args)).result()
            break
        except Exception as exc:
            if not _dropped(exc) or attempt == retries - 1:
                raise
            log.warning("a replica dropped a request (%s); sending it again", type(exc).__name__)
            time.sleep(0.5 * (attempt + 1))
    if isinstance(out, Exception):
        raise out
    return out


# ---- the client side ------------------------------------------------------------------------
class RemoteQA:
    """Stands in for ``DocumentQA`` where the models live in the deployment: questions go to
    the replicas; the documents (for showing answers in them) are read from the store on disk.
    ``store_id`` None: the deployment's own index; else an upload's store."""

    def __init__(self, handle, store, store_id: str | None, reader_config, passages: int,
                 reader_name: str = "", uploads: str | Path | None = None):
        self.handle, self.store, self.store_id = handle, store, store_id
        self.uploads = Path(uploads) if uploads else None
        self.retriever = SimpleNamespace(top_k=passages)
        self.reader = SimpleNamespace(config=reader_config, model_name=reader_name)

    def with_store(self, store, store_id: str) -> "RemoteQA":
        return RemoteQA(self.handle, store, store_id, self.reader.config, self.retriever.top_k,
                        self.reader.model_name, self.uploads)

    def warm_up(self) -> None:
        pass

    def ask(self, question: str, top_k: int = 3, passages: int | None = None,
            threshold: float | None = None) -> Answer:
        return self.ask_many([question], top_k, passages, threshold)[0]

    def ask_many(self, questions: list[str], top_k: int = 3, passages: int | None = None,
                 threshold: float | None = None, batch_size: int | None = None) -> list[Answer]:
        """Checked here (the caller's errors are the caller's), then sent all at once, so
        Serve can batch them with other visitors' questions."""
        reqs = [AskRequest(check_question(q), check_count(top_k, "top_k (answers)", MAX_ANSWERS),
                           None if passages is None else check_count(passages, "passages", MAX_PASSAGES),
                           check_threshold(threshold), self.store_id) for q in questions]
        sent = [self.handle.ask.remote(r) for r in reqs]  # all in flight before any wait
        return [call(self.handle.ask, r, sent=s) for r, s in zip(reqs, sent)]

    def ask_follow_up(self, read_as, context, keep=None, top_k=3, passages=None, threshold=None):
        return call(self.handle.ask_follow_up, self.store_id, read_as, context, keep, top_k,
                    passages, threshold)

    def chat(self):
        from qa.conversation import Conversation

        return Conversation(self)

    def upload(self, path, max_bytes: int, max_chars: int, pdf_seconds: float,
               progress=None) -> "RemoteQA":
        """A ``RemoteQA`` over one uploaded file, indexed by a replica into the shared uploads
        folder. ``SpanQAError`` when the file is refused."""
        from index.store import DocumentStore

        path = Path(path)
        size = path.stat().st_size
        if size > max_bytes:
            raise SpanQAError(f"{path.name} is {size / 2**20:.1f} MB; the limit is "
                              f"{max_bytes / 2**20:.0f} MB.")
        if progress is not None:
            progress(0.1, desc="indexing on the cluster")
        store_id = call(self.handle.index_file, path.name, path.read_bytes(), max_bytes,
                        max_chars, pdf_seconds)
        if progress is not None:
            progress(0.9, desc="loading")
        return self.with_store(DocumentStore.load(self.uploads / store_id), store_id)
