"""Distillation for ``spanqa train-reader --teacher DIR``: a stronger reader's span scores as
soft targets for the small one.

The teacher may tokenise differently (all-mpnet-base-v2 has its own special tokens, so its
positions are shifted against MiniLM's), so it reads the very text of each student window (the
question and the passage slice the window covers) and its start/end logits are carried over to
the student's tokens by character offsets (:func:`align_to_student`). Teacher logits are
computed once per run, before training, into ``<run>/teacher/`` (a float16 ``.npy`` plus a
JSON that says how far it got), so the pass resumes and later runs with the same data reuse it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MASKED = -1e4  # logit of a position the teacher cannot point at (question, special, padding)


def context_char_span(offsets: np.ndarray) -> tuple[int, int] | None:
    """First and last passage character a window covers; ``offsets`` is (n, 2) with -1 rows
    for tokens outside the passage."""
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(ctx):
        return None
    return int(offsets[ctx[0], 0]), int(offsets[ctx[-1], 1])


def align_to_student(student_offsets: np.ndarray, teacher_offsets: list, teacher_start: np.ndarray,
                     teacher_end: np.ndarray) -> np.ndarray:
    """Teacher start/end logits moved onto the student's positions, shape (n_student, 2).

    Position 0 (the no-answer position in both) takes the teacher's position 0. A student
    passage token starting at character ``s`` and ending at ``e`` takes the start logit of the
    teacher token holding ``s`` and the end logit of the one holding ``e - 1``; every other
    student position gets :data:`MASKED`. Offsets on both sides are characters of the same
    passage; ``teacher_offsets[i]`` is None outside it."""
    n = len(student_offsets)
    out = np.full((n, 2), MASKED, dtype=np.float32)
    out[0] = teacher_start[0], teacher_end[0]
    spans = [(i, *o) for i, o in enumerate(teacher_offsets) if o is not None and o[1] > o[0]]
    if not spans:
        return out
    last = max(e for _, _, e in spans)
    owner = np.full(last + 1, -1, dtype=np.int64)
    for i, s, e in spans:
        owner[s:e] = i
    for t, (s, e) in enumerate(student_offsets):
        if s < 0 or e <= s or e - 1 > last:
            continue
        i_s, i_e = owner[s], owner[e - 1]
        if i_s >= 0:
            out[t, 0] = teacher_start[i_s]
        if i_e >= 0:
            out[t, 1] = teacher_end[i_e]
    return out


def distill_loss(start_logits, end_logits, pad, teacher, temperature: float):
    """Mean over the batch of T² · KL(teacher ‖ student), start and end averaged.

    ``teacher`` is (batch, width, 2) aligned logits; padding (``pad`` True) is out for both."""

    t = temperature
    loss = 0.0
    for k, logits in enumerate((start_logits, end_logits)):
        s_lp = (logits.float() / t).masked_fill(pad, MASKED).log_softmax(-1)
        t_lp = (teacher[..., k].float() / t).masked_fill(pad, MASKED).log_softmax(-1)
        loss = loss + (t_lp.exp() * (t_lp - s_lp)).sum(-1).mean()
    return loss / 2 * t * t


class TeacherCache:
    """Aligned teacher logits for every training window: ``logits.npy`` (n, width, 2) float16
    and ``meta.json`` (format version, teacher, data fingerprint, how many windows are done)."""

    def __init__(self, folder: Path, n_windows: int, width: int, fingerprint: str, teacher: str):
        self.folder = Path(folder)
        self.meta_path = self.folder / "meta.json"
        self.path = self.folder / "logits.npy"
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "teacher": teacher, "n_windows": n_windows,
                "width": width, "fingerprint": fingerprint, "done": 0}
        if self.meta_path.exists() and self.path.exists():
            old = json.loads(self.meta_path.read_text())
            if {**old, "done": 0} == meta:  # same teacher, format and data: resume
                meta["done"] = int(old["done"])
        if meta["done"] == 0:
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16,
                                      shape=(n_windows, width, 2)).flush()
        self.meta = meta
        self.logits = np.lib.format.open_memmap(self.path, mode="r+")

    @property
    def complete(self) -> bool:
        return self.meta["done"] >= self.meta["n_windows"]

    def mark(self, done: int) -> None:
        self.logits.flush()
        self.meta["done"] = done
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta, indent=2))
        tmp.replace(self.meta_path)


def fingerprint(feats) -> str:
    """Cheap identity of a feature list: same data, same seed, same windows."""
    import hashlib

    h = hashlib.sha256()
    for f in feats:
        h.update(np.asarray(f.input_ids, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def fill_teacher_cache(cache: TeacherCache, teacher: str, feats, questions, device: str,
                       batch_size: int = 32, save_every: int = 20) -> None:
    """Run the teacher over every window not yet done (shortest first, little padding).

    The teacher is an :class:`qa.reader.ExtractiveReader` (so it loads, and fails on a bad
    path, as any reader does) and reads through its :meth:`window_logits`, with windows wide
    enough (512 tokens) that each student window's text is one teacher window."""
    if cache.complete:
        print(f"[teacher] reusing {cache.path} ({cache.meta['n_windows']} windows)", flush=True)
        return
    from tqdm import tqdm

    from qa.reader import ExtractiveReader

    reader = ExtractiveReader(teacher, device=device, max_seq_len=512, doc_stride=128)
    order = sorted(range(len(feats)), key=lambda j: (len(feats[j].input_ids), j))
    done = cache.meta["done"]
    bar = tqdm(total=len(order), initial=done, desc="teacher logits", file=sys.stdout, mininterval=30)
    batches = 0
    while done < len(order):
        idx = order[done:done + batch_size]
        spans = [context_char_span(feats[j].source[1]) or (0, 0) for j in idx]
        qs = [questions[feats[j].source[0]] for j in idx]
        windows, st, en = reader.window_logits([q.question for q in qs],
                                               [q.context[c0:c1] for q, (c0, c1) in zip(qs, spans)])
        first = {}
        for w, pair in enumerate(windows.pair_index):
            first.setdefault(pair, w)
        for r, j in enumerate(idx):
            w, c0 = first[r], spans[r][0]
            t_offs = [None if o is None else (o[0] + c0, o[1] + c0) for o in windows.offsets[w]]
            aligned = align_to_student(feats[j].source[1], t_offs, st[w], en[w])
            cache.logits[j, :len(aligned)] = aligned
        done += len(idx)
        batches += 1
        bar.update(len(idx))
        if batches % save_every == 0 or done >= len(order):
            cache.mark(done)
    bar.close()
