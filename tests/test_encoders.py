"""qa/encoders.py: the readers' own PyTorch modules compute what transformers' compute, load
the same weights, and let a torch runtime start without importing transformers."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qa.encoders import architecture, build_reader, read_config


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory):
    """A random 2-layer MPNetForQuestionAnswering (no tokenizer: these tests feed ids)."""
    from transformers import MPNetConfig, MPNetForQuestionAnswering

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny_mpnet")
    cfg = MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=300)
    MPNetForQuestionAnswering(cfg).save_pretrained(out)
    return out


def _inputs(pad_id: int, seq: int = 150):
    """Two sequences, the second padded: long enough for MPNet's logarithmic buckets."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, seq), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 90:], mask[1, 90:] = pad_id, 0
    return ids, mask


def _reference(folder):
    from transformers import AutoModelForQuestionAnswering

    return AutoModelForQuestionAnswering.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("which", ["mpnet", "bert"])
def test_logits_equal_transformers(which, tiny_mpnet_dir, tiny_reader_dir):
    folder = tiny_mpnet_dir if which == "mpnet" else tiny_reader_dir
    config = read_config(folder)
    ours = build_reader(config, load_file(str(folder / "model.safetensors")))
    ids, mask = _inputs(config["pad_token_id"])
    extra = {"token_type_ids": (torch.arange(ids.shape[1]) > 20).long().expand_as(ids)} \
        if which == "bert" else {}
    with torch.inference_mode():
        want = _reference(folder)(input_ids=ids, attention_mask=mask, **extra)
        got = ours(input_ids=ids, attention_mask=mask, **extra)
    real = mask.bool()
    for g, w in ((got.start_logits, want.start_logits), (got.end_logits, want.end_logits)):
        np.testing.assert_allclose(g[real].numpy(), w[real].numpy(), atol=2e-5)


def test_weights_that_do_not_fit_are_refused(tiny_mpnet_dir):
    config = read_config(tiny_mpnet_dir)
    state = load_file(str(tiny_mpnet_dir / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        build_reader(config, {k: v for k, v in state.items() if "qa_outputs" not in k})
    wide = dict(state, **{"qa_outputs.weight": torch.zeros(2, 64)})
    with pytest.raises(ValueError, match="shape"):
        build_reader(config, wide)


def test_other_architectures_are_left_to_transformers(tiny_mpnet_dir):
    config = read_config(tiny_mpnet_dir)
    assert architecture(config) is not None
    assert architecture({**config, "architectures": ["MPNetForMaskedLM"]}) is None
    assert architecture({**config, "model_type": "roberta"}) is None
    assert architecture({**config, "hidden_act": "relu"}) is None
    assert build_reader({**config, "model_type": "deberta"}, {}) is None


def test_a_torch_runtime_reads_without_importing_transformers(tiny_reader_dir, tmp_path):
    code = (
        "import sys\n"
        "from qa.reader import ExtractiveReader\n"
        f"r = ExtractiveReader({str(tiny_reader_dir)!r}, runtime='torch-bf16')\n"
        "res = r.predict('Who built it?', ['Gustave Eiffel built the tower in 1889.'], "
        "threshold=0)\n"
        "print(json.dumps([r.runtime, bool(res.spans), 'transformers' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                         text=True, timeout=120, env={"SPANQA_CACHE": str(tmp_path),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["torch-bf16", True, False]
