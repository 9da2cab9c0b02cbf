"""Answer concurrent questions together: a small queue feeding ``DocumentQA.ask_many``.

A server thread per request would run one question at a time through the models; on a CPU
the same work done as one batch (one embedding call for all the questions, the reader's
windows packed into full forward passes) costs less per question. :class:`AskBatcher`
collects the questions that arrive within ``max_wait`` seconds of each other (up to
``max_batch``), answers each group that shares a document set and settings with one
``ask_many`` call, and hands every caller its own answer.

Each question is checked in its caller's thread before it is queued, so a bad question is
its caller's error alone; should a whole batch fail for another reason, its questions are
retried one at a time, so one cannot take the others down.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from qa.pipeline import MAX_ANSWERS, MAX_PASSAGES, DocumentQA, check_count, check_question, check_threshold
from qa.types import Answer

log = logging.getLogger("spanqa.batcher")


@dataclass
class _Request:
    qa: DocumentQA
    question: str
    top_k: int
    passages: int | None
    threshold: float | None
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple:
        return id(self.qa), self.top_k, self.passages, self.threshold


class AskBatcher:
    """``ask(qa, question, ...)`` from many threads; answered in batches by one worker."""

    def __init__(self, max_batch: int = 16, max_wait: float = 0.005):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be at least 1 and max_wait not negative")
        self.max_batch, self.max_wait = max_batch, max_wait
        self.batch_sizes: list[int] = []  # what each model call answered (for benchmarks)
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()

    def ask(self, qa: DocumentQA, question: str, top_k: int = 3, passages: int | None = None,
            threshold: float | None = None) -> Answer:
        """Like ``qa.ask``: the same checks, errors and answer, answered in a batch."""
        req = _Request(qa, check_question(question), check_count(top_k, "top_k (answers)", MAX_ANSWERS),
                       None if passages is None else check_count(passages, "passages", MAX_PASSAGES),
                       check_threshold(threshold))
        self._ensure_worker()
        self._queue.put(req)
        return req.future.result()

    def _ensure_worker(self) -> None:
        with self._start:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="spanqa-batcher",
                                                daemon=True)
                self._worker.start()

    def _collect(self) -> list[_Request]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(r.group, []).append(r)
            for reqs in groups.values():
                self._answer(reqs)

    def _answer(self, reqs: list[_Request]) -> None:
        first = reqs[0]
        try:
            answers = first.qa.ask_many([r.question for r in reqs], first.top_k, first.passages,
                                        first.threshold)
            self.batch_sizes.append(len(reqs))
        except Exception as exc:  # noqa: BLE001 - isolate: each question alone, its own result
            if len(reqs) == 1:
                first.future.set_exception(exc)
                return
            log.exception("a batch of %d failed; answering one at a time", len(reqs))
            for r in reqs:
                self._answer([r])
            return
        for r, a in zip(reqs, answers):
            r.future.set_result(a)
