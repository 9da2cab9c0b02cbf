"""``spanqa eval --ray``: the run's units of work (:class:`eval.runner.Evaluation`) spread
over Ray actors that each load the models once; the rows come back in the order of the
single-process run, so ``predictions.json`` is the same file. The question set must be at a
path every node can read."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from eval.metrics import EvalRow
from eval.runner import EvalConfig, Evaluation


class EvalWorker:
    """One actor: an :class:`Evaluation` of the same config, answering the units it is sent."""

    def __init__(self, cfg: EvalConfig, threads: int = 1):
        from index.onnx_runtime import limit_threads

        limit_threads(threads)
        self.ev = Evaluation(cfg)
        self.ev.warm_up()

    def run(self, index: int, unit: list[int]) -> tuple[int, list[EvalRow], float]:
        before = self.ev.index_seconds
        return index, self.ev.run_unit(unit), self.ev.index_seconds - before

    def facts(self) -> dict:
        return self.ev.facts(0.0)


def evaluate_ray(cfg: EvalConfig, address: str = "auto", workers: int | None = None,
                 cpus_per_worker: float = 1.0, progress: bool = True) -> tuple[list[EvalRow], dict]:
    """Like :func:`eval.runner.evaluate`, on ``workers`` actors (default: as many as the
    cluster's free CPUs allow at ``cpus_per_worker`` each; more workers than free CPUs share
    them, so none waits for a CPU that never frees)."""
    from qa.cluster import connect

    ray = connect(address)
    plan = Evaluation(cfg)  # read here too: the units, and a bad file fails before any actor
    units = plan.units()
    free = ray.available_resources().get("CPU", 0.0)
    if workers is None:
        workers = max(1, int(free // cpus_per_worker))
    workers = max(1, min(workers, len(units)))
    if workers * cpus_per_worker > free:
        cpus_per_worker = max(0.1, round(free / workers, 2))
    actor = ray.remote(num_cpus=cpus_per_worker, max_restarts=2, max_task_retries=2)(EvalWorker)
    pool = [actor.remote(cfg, int(cpus_per_worker)) for _ in range(workers)]
    try:
        t0 = time.perf_counter()
        out: dict[int, list[EvalRow]] = {}
        index_seconds = 0.0
        pending = {}
        todo = list(enumerate(units))
        with tqdm(total=len(plan.questions), desc=f"questions ({workers} Ray actors)", file=sys.stderr,
                  disable=not progress, mininterval=2) as bar:
            for w in pool:  # one unit in flight per actor; the next goes to whichever is free
                if todo:
                    i, u = todo.pop(0)
                    pending[w.run.remote(i, u)] = w
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                w = pending.pop(done[0])
                i, rows, idx_s = ray.get(done[0])
                out[i], index_seconds = rows, index_seconds + idx_s
                bar.update(len(rows))
                if todo:
                    j, u = todo.pop(0)
                    pending[w.run.remote(j, u)] = w
            facts = ray.get(pool[0].facts.remote())
    finally:  # each actor holds the models: never leave them behind
        for w in pool:
            ray.kill(w)
    rows = [r for i in range(len(units)) for r in out[i]]
    facts.update(seconds=time.perf_counter() - t0, index_seconds=index_seconds, ray_workers=workers)
    return rows, facts
