"""Train a reader on a lent GPU machine (the workplace's ``device`` tool) in one short lease.

The tool sends the working tree (tracked files, plus up to 8 ignored paths) to a bare machine,
64 MiB in all per call; the machine stays warm for 30 s between calls; what comes back is at
most 8 files of 16 MiB each; a lease is 15 minutes in all. The default reader's base alone is
several times one call, and this repo tracks more model files than one call carries, so a run
goes in steps::

    here   python -m qa.training.device slim          # model files leave git's index only
    here   python -m qa.training.device bundle -- TRAIN-READER OPTIONS
                                                     # writes .device/call1..N, prints the calls
    there  python3 -m qa.training.device there --out $OUT   # every call, carrying .device/callK
    here   python -m qa.training.device collect FILES_AT --out runs/gpu-reader
    here   python -m qa.training.device unslim        # the index as it was

``bundle`` packs the data (xz), the ``--init`` reader and the base (fp16 floats) and cuts them
into per-call folders that fit the tool's limit, data and init first. ``there`` moves what a
call brought out of the tree into a stage folder (sha256 checked), and once the data and the
init reader are there it starts the training in the background, so tokenising the data
overlaps the calls that bring the base. The call that completes the bundle waits for the run:
the trainer's ``--max-minutes`` fits its schedule to the lease, a deadline stops it early if
the pace changes, and the result (a packed delta over a pip base, or a full small reader) comes
back tarred in parts that ``collect`` joins and checks. Nothing on the answering path imports
this module; the machine needs only PyTorch, transformers, tokenizers, safetensors and tqdm.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

from index.validate import file_digest
from qa.errors import SpanQAError

TOOL_LIMIT = 64 * 2**20  # the tool's working tree per call, carried paths included
RETURN_PART = 15 * 2**20  # files back from $OUT: at most 16 MiB each, 8 in all
SLIM_OVER = 2**20  # tracked files above this leave the index while slim
BUNDLE = Path(".device")
STAGE_ENV = "SPANQA_DEVICE_STAGE"
DEFAULT_STAGE = "/tmp/spanqa-device"
FORMAT, VERSION = "spanqa-device-bundle", 1
SLIM_MARK = "# spanqa device slim: 'python -m qa.training.device unslim' removes this block"
SLIM_END = "# spanqa device slim: end"
SLACK = 2**18  # per call: the manifest (about 20 kB) and room for the tree to grow
RESERVE_S = 100  # of the last call's wait, kept for the dev eval, the packing and the return
GRACE_S = 30  # past the wait, after asking the run to stop: the call's timeout is wait + 50


def sha256_of(path: Path) -> str:
    return file_digest(path)["sha256"]


# ---------------------------------------------------------------- here: slim / unslim

def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True)
    if out.returncode:
        raise SpanQAError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def check_at_root() -> None:
    """The tool sends the repository from its root, and carries paths relative to it."""
    root = Path(_git("rev-parse", "--show-toplevel").strip())
    if root.resolve() != Path.cwd().resolve():
        raise SpanQAError(f"Run this from the repository's root, {root}.")


def tree_bytes(skip: set[str] = frozenset()) -> int:
    """What the tool would send from here, less ``skip``: tracked and untracked-not-ignored
    files (git's own listing)."""
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sum(os.path.getsize(n) for n in set(names) if n and n not in skip and os.path.isfile(n))


def big_tracked(over: int = SLIM_OVER) -> list[str]:
    return sorted(n for n in _git("ls-files", "-z").split("\0")
                  if n and os.path.isfile(n) and os.path.getsize(n) > over)


def _exclude_file() -> Path:
    return Path(_git("rev-parse", "--git-path", "info/exclude").strip())


def _pattern(name: str) -> str:
    """A gitignore line matching the file ``name`` alone."""
    return "/" + "".join("\\" + ch if ch in "*?[]!#\\ " else ch for ch in name)


def slim() -> list[str]:
    """Take the tracked files over 1 MiB out of git's index and ignore them locally, so the
    tool does not send them (they stay on disk; ``unslim`` puts them back). Only files that
    match HEAD are moved: nothing uncommitted can be lost."""
    files = big_tracked()
    if not files:
        return []
    changed = _git("diff", "--name-only", "HEAD", "--", *files).split()
    if changed:
        raise SpanQAError(f"Commit or restore these first: {', '.join(changed)}.")
    _git("rm", "--cached", "-q", "--", *files)
    ex = _exclude_file()
    ex.parent.mkdir(parents=True, exist_ok=True)
    text = ex.read_text() if ex.is_file() else ""
    ex.write_text(text + ("" if not text or text.endswith("\n") else "\n") + SLIM_MARK + "\n"
                  + "".join(_pattern(n) + "\n" for n in files) + SLIM_END + "\n")
    return files


def unslim() -> list[str]:
    """Undo :func:`slim`: the files' index entries back from HEAD, the ignore lines gone."""
    ex = _exclude_file()
    lines = ex.read_text().splitlines() if ex.is_file() else []
    if SLIM_MARK not in lines:
        return []
    first = lines.index(SLIM_MARK)
    last = lines.index(SLIM_END, first)
    block = lines[first + 1:last]
    files = [ln[1:].replace("\\", "") for ln in block]
    _git("reset", "-q", "HEAD", "--", *files)
    ex.write_text("".join(ln + "\n" for ln in lines[:first] + lines[last + 1:]))
    return files


# ---------------------------------------------------------------- here: bundle

def _rewrite_paths(options: dict) -> tuple[dict, dict[str, Path]]:
    """train-reader options with every data file renamed ``data/<name>`` (the stage's), and the
    files to ship by that name. Two files of one name are refused (the stage is flat)."""
    ship: dict[str, Path] = {}

    def ref(path: str) -> str:
        p = Path(path)
        if not p.is_file():
            raise SpanQAError(f"No data file at {p}.")
        if ship.setdefault(p.name, p.resolve()) != p.resolve():
            raise SpanQAError(f"Two data files are named {p.name}; rename one.")
        return f"data/{p.name}"

    out = dict(options)
    specs = []
    for spec in options["train"]:
        path, sep, weight = spec.partition(":")
        specs.append(ref(path) + sep + weight)
    out["train"] = specs
    if options.get("dev"):
        out["dev"] = ref(options["dev"])
    return out, ship


def _base_files(base: str) -> dict[str, Path]:
    """The base encoder's files: a pip-shipped base by name (``qa.packed.BASES``)."""
    from qa.packed import BASES, materialize_base

    if base not in BASES:
        raise SpanQAError(f"--base must be one of {', '.join(BASES)} (a pip-shipped base whose "
                          f"delta the machine can pack), or left out with a full --init reader.")
    folder = materialize_base(base)
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def _fp16_copy(src: Path, dst: Path) -> None:
    """The floating tensors of a safetensors file in fp16 (integer ones as they are): half the
    bytes, for a relative error per matrix far under what the rank-64 delta drops (the model
    card has both)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(src))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              str(dst), metadata={"format": "pt"})


def _xz(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, lzma.open(dst, "wb", preset=6) as g:
        shutil.copyfileobj(f, g, 1 << 22)


def plan_pieces(sizes: list[int], capacity: int, overhead: int = 2**12) -> list[list[tuple]]:
    """Cut files of ``sizes``, in order, into pieces that fill calls of ``capacity`` bytes one
    after another (each piece also costs ``overhead``: its line in the manifest): for each
    file, its pieces as ``(call, offset, size)``. Calls are numbered from 1."""
    if capacity <= 2 * overhead:
        raise SpanQAError(f"A call of {capacity} bytes cannot carry pieces of {overhead} bytes "
                          f"overhead: the tree leaves too little room.")
    plan, call, room = [], 1, capacity
    for size in sizes:
        pieces, off = [], 0
        while True:
            if room <= overhead:
                call, room = call + 1, capacity
            n = min(size - off, room - overhead)
            pieces.append((call, off, n))
            room -= n + overhead
            off += n
            if off >= size:
                break
        plan.append(pieces)
    return plan


def bundle(options: list[str], out: Path = BUNDLE, rank: int = 64, wait_s: int = 540,
           capacity: int | None = None) -> dict:
    """Write ``out/call1 .. callN`` for the train-reader ``options`` and return the manifest.
    Each call folder holds its pieces and the whole manifest; pieces are files cut at the
    per-call capacity left after the slim tree."""
    from qa.training.reader import ReaderTrainingArgs, build_parser

    parsed = vars(build_parser().parse_args(options))
    ReaderTrainingArgs(**parsed)  # fail here, not on the machine
    if not parsed.get("init"):
        raise SpanQAError("The bundle needs --init (a reader folder to continue from).")
    if parsed.get("teacher"):
        raise SpanQAError("--teacher is not supported on the machine (it would need a second "
                          "reader sent over).")
    args, data = _rewrite_paths(parsed)
    init = Path(parsed["init"])
    if not (init / "config.json").is_file():
        raise SpanQAError(f"No reader folder at {init} (it has no config.json).")
    args["init"] = "init"
    base = parsed.get("base")
    base_info = None
    if base:
        base_src = _base_files(base)
        base_info = json.loads(base_src["base.json"].read_text())
    elif (init / "spanqa_delta.json").is_file():
        raise SpanQAError("A packed --init needs its --base named.")

    shutil.rmtree(out, ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True)
    files: list[tuple[str, Path]] = []  # (stage destination, local file), in travel order
    for name, src in data.items():
        print(f"[bundle] compressing {src.name}", flush=True)
        _xz(src, work / f"{name}.xz")
        files.append((f"data/{name}.xz", work / f"{name}.xz"))
    files += [(f"init/{p.name}", p) for p in sorted(init.iterdir())
              if p.is_file() and p.suffix not in (".md", ".png")]  # not its card and plots
    if base:
        for name, src in base_src.items():
            if name == "model.safetensors":
                print(f"[bundle] {base} in fp16", flush=True)
                _fp16_copy(src, work / name)
                src = work / name
            files.append((f"base/{name}", src))

    if capacity is None:  # what a call can carry beside the slim tree and the manifest
        capacity = TOOL_LIMIT - tree_bytes(skip=set(big_tracked())) - SLACK
    plan = plan_pieces([src.stat().st_size for _, src in files], capacity)
    manifest = {"format": FORMAT, "version": VERSION, "calls": plan[-1][-1][0], "rank": rank,
                "wait_s": wait_s, "base": base, "base_info": base_info, "args": args,
                "files": []}
    for i, ((dest, src), pieces) in enumerate(zip(files, plan)):
        parts = []
        for k, (call, off, size) in enumerate(pieces):
            name = f"f{i:02d}.{k:03d}"
            target = out / f"call{call}" / name
            target.parent.mkdir(exist_ok=True)
            with open(src, "rb") as f, open(target, "wb") as g:
                f.seek(off)
                g.write(f.read(size))
            parts.append({"name": name, "call": call, "size": size, "sha256": sha256_of(target)})
        manifest["files"].append({"dest": dest, "size": src.stat().st_size,
                                  "sha256": sha256_of(src), "parts": parts})
    manifest["id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    for c in range(1, manifest["calls"] + 1):
        (out / f"call{c}" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


# ---------------------------------------------------------------- there: stage, run, finish

def stage_dir() -> Path:
    return Path(os.environ.get(STAGE_ENV, DEFAULT_STAGE))


def stage(bundle_dir: Path, stage: Path) -> dict:
    """Move what this call brought (``bundle_dir/call*``) into ``stage/parts``, each part's
    sha256 checked, and join every file whose parts are all there (its sha256 checked)."""
    manifest = None
    for call in sorted(bundle_dir.glob("call*")):
        m = json.loads((call / "manifest.json").read_text())
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise SpanQAError(f"{call} is not a {FORMAT} v{VERSION} bundle.")
        old = stage / "manifest.json"
        if old.is_file() and json.loads(old.read_text()).get("id") != m["id"]:
            print(f"[there] {stage} held another bundle: cleared", flush=True)
            shutil.rmtree(stage)
        (stage / "parts").mkdir(parents=True, exist_ok=True)
        manifest = m
        (stage / "manifest.json").write_text(json.dumps(m))
        for f in m["files"]:
            for part in f["parts"]:
                src = call / part["name"]
                if src.is_file():
                    if sha256_of(src) != part["sha256"]:
                        raise SpanQAError(f"{src} arrived damaged (sha256 differs).")
                    shutil.move(str(src), stage / "parts" / part["name"])
    if manifest is None:
        if not (stage / "manifest.json").is_file():
            raise SpanQAError(f"Nothing to stage: no {bundle_dir}/call*/manifest.json.")
        manifest = json.loads((stage / "manifest.json").read_text())
    for f in manifest["files"]:
        dest = stage / f["dest"]
        parts = [stage / "parts" / p["name"] for p in f["parts"]]
        if dest.is_file() or not all(p.is_file() for p in parts):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        with open(tmp, "wb") as g:
            for p in parts:
                with open(p, "rb") as h:
                    shutil.copyfileobj(h, g, 1 << 22)
        if sha256_of(tmp) != f["sha256"]:
            raise SpanQAError(f"{f['dest']} joined damaged (sha256 differs).")
        os.replace(tmp, dest)
        for p in parts:
            p.unlink()
    return manifest


def missing(manifest: dict, stage: Path, prefix: str = "") -> list[str]:
    return [f["dest"] for f in manifest["files"]
            if f["dest"].startswith(prefix) and not (stage / f["dest"]).is_file()]


def trainer_args(manifest: dict, stage: Path):
    """The run's ReaderTrainingArgs, its paths made the stage's."""
    from qa.training.reader import ReaderTrainingArgs

    a = dict(manifest["args"])
    a["train"] = [str(stage / t) for t in a["train"]]
    if a.get("dev"):
        a["dev"] = str(stage / a["dev"])
    a["init"], a["out"] = str(stage / "init"), str(stage / "run")
    a.pop("resume", None)
    return ReaderTrainingArgs(**a)


def _place_base(manifest: dict, stage: Path) -> None:
    """The staged base where :func:`qa.packed.materialize_base` finds it, with its
    ``base.json`` (the pip weights' sha256, which a packed delta records and checks)."""
    from qa.packed import cache_root

    dest = cache_root() / "bases" / manifest["base"]
    dest.mkdir(parents=True, exist_ok=True)
    for p in (stage / "base").iterdir():
        if not (dest / p.name).exists():
            try:
                os.link(p, dest / p.name)
            except OSError:  # another file system
                shutil.copy(p, dest / p.name)


_JOB: dict = {}  # what forked featurising workers read: set before the pool starts


def _featurize_chunk(start: int) -> list:
    from qa.training.reader import build_features

    j = _JOB
    return build_features(j["tokenizer"], j["questions"][start:start + j["chunk"]],
                          j["max_seq_len"], j["doc_stride"], random.Random(f"{j['seed']}:{start}"))


def featurize_parallel(tokenizer, questions: list, max_seq_len: int, doc_stride: int, seed: int,
                       workers: int, chunk: int = 2048, progress=None) -> list:
    """:func:`qa.training.reader.build_features` over ``workers`` forked processes, in chunks
    of ``chunk`` questions, each drawing its negatives with a generator seeded by the seed and
    the chunk's place: the same windows, in the same order, for any number of workers."""
    import multiprocessing

    _JOB.update(tokenizer=tokenizer, questions=questions, max_seq_len=max_seq_len,
                doc_stride=doc_stride, seed=seed, chunk=chunk)
    starts = range(0, len(questions), chunk)
    feats: list = []
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_featurize_chunk, starts) if pool else map(_featurize_chunk, starts)
        for start, part in zip(starts, results):
            feats.extend(part)
            if progress:
                progress.update(min(chunk, len(questions) - start))
    finally:
        if pool:
            pool.close()
            pool.join()
        _JOB.clear()
    return feats


def run(stage: Path, poll_s: float = 2.0) -> int:
    """The background run: decompress the data, tokenise it while the base arrives, then load,
    train (to the budget and the deadline), save and pack into ``stage/result``. Ends with
    ``stage/DONE`` (a summary) or ``stage/FAILED`` (the traceback)."""
    from qa.training.reader import ReaderTrainer

    class DeviceTrainer(ReaderTrainer):
        deadline = None  # read once the last call has written it

        def featurize(self) -> None:
            """Over every core: the machine has many, and its lease is short."""
            from tqdm import tqdm

            a, t0 = self.args, time.time()
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked workers, one thread each
            with tqdm(total=len(self.train_qs), desc="features", file=sys.stdout,
                      mininterval=10) as bar:
                self.feats = featurize_parallel(self.tokenizer, self.train_qs, a.max_seq_len,
                                                a.doc_stride, a.seed, os.cpu_count() or 1,
                                                progress=bar)
            print(f"[data] {len(self.feats)} windows from {len(self.train_qs)} questions in "
                  f"{time.time() - t0:.0f}s on {os.cpu_count()} processes", flush=True)

        def should_stop(self) -> bool:
            if self.deadline is None and (stage / "DEADLINE").is_file():
                self.deadline = float((stage / "DEADLINE").read_text())
            return (stage / "STOP").exists() or (
                self.deadline is not None and time.time() > self.deadline)

    os.environ.setdefault("SPANQA_CACHE", str(stage / "cache"))
    try:
        manifest = json.loads((stage / "manifest.json").read_text())
        (stage / "data").mkdir(exist_ok=True)
        for f in manifest["files"]:
            if f["dest"].startswith("data/"):
                with lzma.open(stage / f["dest"]) as src, open(
                        stage / f["dest"][:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        t = DeviceTrainer(trainer_args(manifest, stage))
        t.setup()
        t.load_tokenizer()
        t.load_data()
        t.featurize()
        while missing(manifest, stage, "base/"):
            time.sleep(poll_s)
        if manifest["base"]:
            _place_base(manifest, stage)
        t.load_model()
        t.prepare()
        t.fit()
        model = t.save()
        result = stage / "result"
        shutil.rmtree(result, ignore_errors=True)
        if manifest["base"]:
            from qa.training.pack import pack_reader

            pack_reader(model, manifest["base"], manifest["rank"], result / "reader")
        else:
            shutil.copytree(model, result / "reader")
        carry_settings(stage / "init", result / "reader")
        for name in ("args.json", "train_log.jsonl"):
            shutil.copy(t.out / name, result / name)
        summary = {"status": "ok", "steps": t.step, "planned": t.planned,
                   "windows": len(t.feats), "minutes": round(t.minutes(), 2),
                   "device": t.device, "gpu": _gpu_name()}
        (stage / "DONE").write_text(json.dumps(summary, indent=1))
        return 0
    except BaseException:
        (stage / "FAILED").write_text(traceback.format_exc())
        raise


READING_SETTINGS = ("max_answer_len", "length_penalty", "top_n_per_window", "runtime",
                    "first_passages", "first_cut")


def carry_settings(init: Path, reader: Path) -> None:
    """The init reader's reading settings (length penalty, staged reading, runtime) into the
    new reader's ``spanqa_reader.json``, as averaging with ``pack-reader`` carries them. Its
    calibration is not carried: it belongs to the old weights (``calibrate-reader`` fits one)."""
    from dataclasses import replace

    from qa.reader import READER_CONFIG_FILE, ReaderConfig

    if not (init / READER_CONFIG_FILE).is_file():
        return
    old = ReaderConfig.load(init)
    replace(ReaderConfig.load(reader), **{k: getattr(old, k) for k in READING_SETTINGS}).save(reader)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def start(stage: Path) -> None:
    """Start :func:`run` in its own process session (it outlives this call), from a copy of
    the code, so that the next call's fresh tree cannot change modules under it."""
    code = stage / "code"
    ignore = shutil.ignore_patterns("__pycache__", "*.safetensors", "models")
    for pkg in ("qa", "index"):
        shutil.copytree(pkg, code / pkg, ignore=ignore, dirs_exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    with open(stage / "run.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "qa.training.device", "run", "--stage",
                                 str(stage)], cwd=code, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (stage / "run.pid").write_text(str(proc.pid))


def _tail(path: Path) -> str:
    """The log's last line (progress bars rewrite theirs with carriage returns)."""
    if not path.is_file():
        return ""
    lines = [ln for ln in path.read_bytes()[-4000:].decode(errors="replace")
             .replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def finish(stage: Path, out: Path, wait_s: int, t0: float) -> dict:
    """Wait for the run until ``wait_s`` after ``t0`` (the call's start; its training stops
    :data:`RESERVE_S` before that), then return the result tarred in parts of at most 15 MiB
    with ``result.json`` (their sha256)."""
    (stage / "DEADLINE").write_text(str(t0 + wait_s - RESERVE_S))
    shown = 0.0
    while not (stage / "DONE").exists() and not (stage / "FAILED").exists():
        if time.time() - t0 > wait_s:
            (stage / "STOP").touch()
            if time.time() - t0 > wait_s + GRACE_S:
                break
        time.sleep(2)
        if time.time() - shown > 30:
            shown = time.time()
            print(f"[there] {shown - t0:.0f}s: {_tail(stage / 'run.log')}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(stage / "run.log", out / "run.log")
    if not (stage / "DONE").exists():
        print((stage / "FAILED").read_text() if (stage / "FAILED").exists()
              else "[there] the run did not finish in time", flush=True)
        return {"status": "failed"}
    summary = json.loads((stage / "DONE").read_text())
    tar = stage / "result.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted((stage / "result").iterdir()):
            tf.add(p, arcname=p.name)
    parts = []
    with open(tar, "rb") as f:
        k = 0
        while chunk := f.read(RETURN_PART):
            name = f"result.tar.{k:03d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "sha256": hashlib.sha256(chunk).hexdigest()})
            k += 1
    summary.update(parts=parts, sha256=sha256_of(tar))
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    return summary


def there(bundle_dir: Path, out: Path | None) -> int:
    """Every call's command on the machine: stage what came; start the run once the data and
    the init reader are in; on the call that completes the bundle, wait and return the result."""
    t0, s = time.time(), stage_dir()
    manifest = stage(bundle_dir, s)
    left = missing(manifest, s)
    print(f"[there] staged in {s}; {len(manifest['files']) - len(left)} of "
          f"{len(manifest['files'])} files complete", flush=True)
    if not (s / "run.pid").exists() and not missing(manifest, s, "data/") and not missing(
            manifest, s, "init/"):
        start(s)
        print("[there] training started in the background (tokenising while the base arrives)",
              flush=True)
    if left:
        calls = sorted({p["call"] for f in manifest["files"] if f["dest"] in left
                        for p in f["parts"] if not (s / "parts" / p["name"]).is_file()})
        print(f"[there] waiting for calls {calls} of {manifest['calls']}", flush=True)
        return 0
    if out is None:
        raise SpanQAError("The bundle is complete: give --out $OUT to collect the result.")
    return 0 if finish(s, out, manifest["wait_s"], t0)["status"] == "ok" else 1


# ---------------------------------------------------------------- here: collect

def collect(files_at: Path, out: Path) -> dict:
    """Join the parts that came back, check them, and unpack the reader into ``out``."""
    summary_file = files_at / "result.json"
    if not summary_file.is_file():
        raise SpanQAError(f"No result.json in {files_at}: the run did not finish (see run.log).")
    summary = json.loads(summary_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    tar = out / "result.tar"
    with open(tar, "wb") as g:
        for part in summary["parts"]:
            data = (files_at / part["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise SpanQAError(f"{part['name']} came back damaged (sha256 differs).")
            g.write(data)
    if sha256_of(tar) != summary["sha256"]:
        raise SpanQAError("The joined result differs from the one sent (sha256).")
    with tarfile.open(tar) as tf:
        tf.extractall(out, filter="data")
    tar.unlink()
    (out / "device.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------- command line

def print_calls(manifest: dict) -> None:
    n = manifest["calls"]
    print(f"[bundle] {n} device calls, back to back (a machine idle for 30 s is given back, "
          f"and what was staged on it is lost); each runs the command "
          f"'python3 -m qa.training.device there --out $OUT':")
    for c in range(1, n + 1):
        print(f"  call {c}: carry ['.device/call{c}']"
              + (f", timeout_s {min(600, manifest['wait_s'] + 50)}" if c == n else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qa.training.device",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("slim", help="take tracked files over 1 MiB out of git's index (here)")
    sub.add_parser("unslim", help="put them back (here)")
    b = sub.add_parser("bundle", help="write .device/call1..N (here); train-reader options "
                                      "after --")
    b.add_argument("--rank", type=int, default=64, help="rank of the delta packed there")
    b.add_argument("--wait", type=int, default=540,
                   help="seconds the last call waits for the run (default 540)")
    b.add_argument("options", nargs=argparse.REMAINDER)
    t = sub.add_parser("there", help="every call's command on the machine")
    t.add_argument("--out", type=Path)
    r = sub.add_parser("run", help="the background run (started by 'there')")
    r.add_argument("--stage", type=Path, required=True)
    c = sub.add_parser("collect", help="join and check what came back (here)")
    c.add_argument("files_at", type=Path)
    c.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        if a.cmd in ("slim", "unslim", "bundle"):
            check_at_root()
        if a.cmd == "slim":
            files = slim()
            print(f"[slim] {len(files)} files out of the index; the tool now sends "
                  f"{tree_bytes() / 2**20:.1f} MiB. Run 'unslim' before committing.")
        elif a.cmd == "unslim":
            print(f"[unslim] {len(unslim())} files back in the index")
        elif a.cmd == "bundle":
            options = a.options[1:] if a.options[:1] == ["--"] else a.options
            print_calls(bundle(options, rank=a.rank, wait_s=a.wait))
        elif a.cmd == "there":
            return there(BUNDLE, a.out)
        elif a.cmd == "run":
            return run(a.stage)
        elif a.cmd == "collect":
            s = collect(a.files_at, a.out)
            print(f"[collect] {a.out / 'reader'}: {s['steps']} steps ({s['planned']} planned) "
                  f"in {s['minutes']} min on {s['gpu'] or s['device']}")
    except SpanQAError as exc:
        print(f"spanqa: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
