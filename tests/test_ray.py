"""spanqa on Ray (``pip install -e ".[ray]"``): a local Ray instance on 127.0.0.1 with 2 CPUs,
2 Serve replicas of the tiny random reader. Marked ``ray`` (``python -m pytest -m ray``; run by
``.ci/run``), except the check that the default path never imports Ray."""
import json
import subprocess
import sys
import threading
import time

import pytest

from tests.test_eval_run import DATA

TEXT = ("The fox lives in the forest near Oslo. It hunts mice at night.\n\n"
        "The river Akerselva runs through the city. Bridges cross it in many places.\n\n"
        "Anna Berg wrote a book about the foxes of Oslo in 2019.")
QUESTIONS = ["Where does the fox live?", "What does the fox hunt?", "Which river runs through the city?",
             "Who wrote a book about foxes?", "When was the book written?", "What crosses the river?"]


def test_the_default_path_never_imports_ray():
    code = ("import sys, qa.cli, qa.pipeline, ui.app, ui.cli, eval.cli, eval.runner; "
            "from qa.cli import build_parser; build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


ray_only = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_reader_dir, embedder):
    pytest.importorskip("ray")
    from index.documents import document_from_text
    from index.store import DocumentStore
    from qa.cluster import connect, deploy, shutdown

    root = tmp_path_factory.mktemp("ray")
    store = DocumentStore(embedder)
    store.add([document_from_text(TEXT, id="fox", title="Foxes of Oslo")])
    store.save(root / "index")
    (root / "uploads").mkdir()
    connect("local", num_cpus=2)
    handle = deploy(str(root / "index"), str(tiny_reader_dir), replicas=2,
                    uploads=str(root / "uploads"), cpus_per_replica=0.5)
    yield {"root": root, "handle": handle, "store": store}
    shutdown()


def _local(cluster, tiny_reader_dir):
    from index.store import DocumentStore
    from qa.pipeline import DocumentQA

    return DocumentQA(DocumentStore.load(cluster["root"] / "index"), str(tiny_reader_dir))


def _remote(cluster):
    from qa.cluster import RemoteQA, call

    info = call(cluster["handle"].describe)
    return RemoteQA(cluster["handle"], cluster["store"], None, info["reader_config"],
                    info["passages"], info["reader"], cluster["root"] / "uploads")


def _same(a, b):
    assert (a.text, a.abstained, a.passage_id, a.start, a.end) == (b.text, b.abstained, b.passage_id,
                                                                    b.start, b.end)
    assert a.score == pytest.approx(b.score, abs=1e-5)


@ray_only
def test_ask_through_the_page_api_matches_the_in_process_pipeline(cluster, tiny_reader_dir):
    from gradio_client import Client

    from tests.test_ui import free_port
    from ui.app import serve_ray

    port = free_port()
    demo = serve_ray(index=str(cluster["root"] / "index"), reader=str(tiny_reader_dir),
                     address="local", replicas=2, shared_dir=cluster["root"], port=port,
                     cpus_per_replica=0.5, block=False)
    try:
        local = _local(cluster, tiny_reader_dir)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for q in QUESTIONS[:3]:
            got = client.predict(q, 3, 0.0, api_name="/ask")
            want = local.ask(q, passages=3, threshold=0.0).to_dict()
            assert (got["text"], got["start"], got["end"]) == (want["text"], want["start"], want["end"])
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        with pytest.raises(Exception, match="question"):
            client.predict("   ", 3, 0.0, api_name="/ask")
    finally:
        demo.close()


@ray_only
def test_concurrent_questions_are_batched_and_each_gets_its_own(cluster, tiny_reader_dir):
    remote, local = _remote(cluster), _local(cluster, tiny_reader_dir)
    got = remote.ask_many(QUESTIONS * 3, threshold=0.0)
    for q, a in zip(QUESTIONS * 3, got):
        _same(a, local.ask(q, threshold=0.0))
    remote_conv, local_conv = remote.chat(), local.chat()
    for q in ("What does the fox hunt?", "Why?", "What about the river?"):
        a, b = remote_conv.ask(q, threshold=0.0), local_conv.ask(q, threshold=0.0)
        _same(a, b)
        assert a.read_as == b.read_as
    assert a.read_as != "What about the river?" and a.passages


@ray_only
def test_an_upload_is_indexed_by_a_replica_and_answered_by_any(cluster, tmp_path):
    from qa.errors import SpanQAError

    remote = _remote(cluster)
    f = tmp_path / "ships.txt"
    f.write_text("The ship Fram sailed to the Arctic in 1893 under Fridtjof Nansen.")
    mine = remote.upload(f, 10 * 2**20, 10**6, 5.0)
    assert list(mine.store.documents) == ["ships.txt"]
    answers = mine.ask_many(["Where did the Fram sail?"] * 4, threshold=0.0)
    assert {a.doc_id for a in answers} == {"ships.txt"}
    assert remote.ask("Where did the Fram sail?", threshold=0.0).doc_id == "fox"  # others unchanged
    bad = tmp_path / "x.exe"
    bad.write_bytes(b"MZ\x00\x00")
    with pytest.raises(SpanQAError):
        remote.upload(bad, 10 * 2**20, 10**6, 5.0)


@ray_only
def test_killing_a_replica_mid_load_loses_no_request_and_it_comes_back(cluster, tiny_reader_dir):
    import ray
    from ray import serve

    remote, local = _remote(cluster), _local(cluster, tiny_reader_dir)
    want = {q: local.ask(q, threshold=0.0) for q in QUESTIONS}
    results, errors = {}, []

    def user(i):
        try:
            for j in range(6):
                q = QUESTIONS[(i + j) % len(QUESTIONS)]
                results[(i, j)] = (q, remote.ask(q, threshold=0.0))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "QAService" in a["name"]]
    assert len(names) == 2
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 48
    for q, a in results.values():
        _same(a, want[q])
    deadline = time.time() + 180  # a new replica loads both models; on 2 busy cores, slowly
    while time.time() < deadline:
        dep = serve.status().applications["spanqa"].deployments["QAService"]
        if dep.status == "HEALTHY" and dep.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(1)
    assert dep.replica_states.get("RUNNING", 0) == 2, dep
    _same(remote.ask(QUESTIONS[0], threshold=0.0), want[QUESTIONS[0]])


@ray_only
@pytest.mark.parametrize("extra", [[], ["--reader-only"], ["--scope", "corpus"]])
def test_eval_on_ray_writes_the_same_predictions(cluster, tmp_path, tiny_reader_dir, extra):
    from qa.cli import main

    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(DATA))
    base = ["eval", str(data), "--reader", str(tiny_reader_dir), "--latency-sample", "0",
            "--threshold", "0.3", *extra]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "ray"), "--ray", "local", "--ray-workers", "2"]) == 0
    plain, on_ray = (tmp_path / "plain" / "predictions.json"), (tmp_path / "ray" / "predictions.json")
    assert plain.read_bytes() == on_ray.read_bytes()
    rows = [json.loads(line)["id"] for line in (tmp_path / "ray" / "per_question.jsonl").open()]
    assert rows == ["q1", "q2", "q3", "q4"]


@ray_only
def test_index_on_ray_writes_the_store_the_plain_command_writes(cluster, tmp_path):
    import numpy as np

    from index.store import DocumentStore
    from qa.cli import main

    files = []
    for i in range(3):
        f = tmp_path / f"doc{i}.txt"
        f.write_text(f"Document {i}. " + TEXT.replace("Oslo", f"Town{i}") * 4)
        files.append(str(f))
    assert main(["index", *files, "--out", str(tmp_path / "plain")]) == 0
    assert main(["index", *files, "--out", str(tmp_path / "ray"), "--ray", "local"]) == 0
    a, b = DocumentStore.load(tmp_path / "plain"), DocumentStore.load(tmp_path / "ray")
    assert [c.text for c in a.chunks] == [c.text for c in b.chunks] and len(a) > 3
    assert np.allclose(a.vectors, b.vectors, atol=1e-5)
    missing = str(tmp_path / "nope.txt")
    assert main(["index", missing, "--out", str(tmp_path / "bad"), "--ray", "local"]) != 0


@ray_only
@pytest.mark.parametrize("address, why", [("127.0.0.1:1", "Cannot reach"), ("nonsense", "HOST:PORT")])
def test_a_bad_cluster_address_is_a_one_line_error_in_seconds(tmp_path, capsys, address, why):
    from qa.cli import main

    data = tmp_path / "tiny.json"
    data.write_text(json.dumps(DATA))
    t = time.time()
    assert main(["eval", str(data), "--out", str(tmp_path / "o"), "--ray", address]) == 2
    assert why in capsys.readouterr().err and time.time() - t < 10


def test_a_replica_deletes_day_old_uploads_and_refuses_foreign_store_ids(tmp_path, tiny_reader_dir, embedder):
    """QAService is plain Python: tested here without Ray."""
    import os

    from index.documents import document_from_text
    from index.store import DocumentStore
    from qa.cluster import AskRequest, QAService
    from qa.errors import SpanQAError

    store = DocumentStore(embedder)
    store.add([document_from_text(TEXT, id="fox")])
    store.save(tmp_path / "index")
    (tmp_path / "uploads").mkdir()
    svc = QAService(str(tmp_path / "index"), str(tiny_reader_dir), str(tmp_path / "uploads"))
    f = tmp_path / "a.txt"
    f.write_text("Ships sail on the sea.")
    new = svc.index_file("a.txt", f.read_bytes(), 2**20, 10**5, 5.0)
    old = svc.index_file("a.txt", f.read_bytes(), 2**20, 10**5, 5.0)
    day_ago = time.time() - 25 * 3600
    os.utime(tmp_path / "uploads" / old, (day_ago, day_ago))
    assert svc.prune_uploads() == 1
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [new]
    answers = svc.ask_batch([AskRequest("Where do ships sail?", store=new),
                             AskRequest("Where?", store="../index"), AskRequest("  ")])
    assert answers[0].doc_id == "a.txt"
    assert all(isinstance(a, SpanQAError) for a in answers[1:])
    assert isinstance(svc.index_file("x.exe", b"MZ", 2**20, 10**5, 5.0), SpanQAError)


@pytest.mark.parametrize("argv, why", [
    (["serve", "--replicas", "3"], "only apply with --ray"),
    (["serve", "--ray", "--cpus-per-replica", "0"], "CPUs must be from 0.1"),
    (["eval", "x.json", "--out", "o", "--ray-workers", "2"], "only applies with --ray"),
])
def test_ray_options_are_checked_before_anything_loads(argv, why, capsys):
    from qa.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    assert why in capsys.readouterr().err
