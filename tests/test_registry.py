import json
import random
import subprocess
import sys

import pytest

from pakit_stream.batch.compression import CompressionPredictor
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.registry import ModelRegistry
from pakit_stream.training import ModelEvaluator, ModelTrainer, TrainingConfig, TrainingDataset


def data(n, seed, flip=False):
    rng = random.Random(seed)
    ds = TrainingDataset()
    for _ in range(n):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        good = "hi" if a + b > 0 else "lo"
        ds.add_sample({"a": a, "b": b}, ({"hi": "lo", "lo": "hi"}[good] if flip else good))
    return ds


def trained(seed, flip=False, epochs=20):
    train, val, _ = data(400, seed, flip).split(0.8, 0.2, 0.0, seed=seed)
    model = CompressionPredictor(hidden_dim=16)
    metrics = ModelTrainer(TrainingConfig(num_epochs=epochs, learning_rate=0.01)).train(
        model, train, val)
    return model, metrics


@pytest.fixture
def store(tmp_path):
    return ModelRegistry(tmp_path / "models")


HOLDOUT = data(300, seed=99)  # the recent window the gate judges on; no model trains on it


def score(model):
    return ModelEvaluator().evaluate(model, HOLDOUT)["accuracy"]


def test_first_candidate_is_promoted_a_worse_one_rejected_and_kept(store):
    good, metrics = trained(1)
    v1 = store.register("compression_predictor", good, metrics, window={"events": 400})
    first = store.gate("compression_predictor", v1, CompressionPredictor, score)
    assert first["accepted"] and store.serving("compression_predictor") == v1

    worse, metrics = trained(2, flip=True)  # learned the labels backwards
    v2 = store.register("compression_predictor", worse, metrics)
    second = store.gate("compression_predictor", v2, CompressionPredictor, score)
    assert not second["accepted"] and second["candidate_score"] < second["serving_score"]
    assert store.serving("compression_predictor") == v1
    meta = store.metadata("compression_predictor", v2)
    assert meta["status"] == "rejected" and "does not beat" in meta["reason"]
    assert (store.root / "compression_predictor" / v2 / "model.safetensors").exists()

    better, metrics = trained(3, epochs=40)
    v3 = store.register("compression_predictor", better, metrics)
    third = store.gate("compression_predictor", v3, CompressionPredictor, score, min_gain=-1.0)
    assert third["accepted"] and store.serving("compression_predictor") == v3
    served = store.load("compression_predictor", CompressionPredictor())
    assert served.version == v3


def test_metadata_records_the_run(store):
    model, metrics = trained(1, epochs=3)
    v = store.register("compression_predictor", model, metrics, window={"from": 1, "to": 2})
    meta = store.metadata("compression_predictor", v)
    assert meta["kind"] == "CompressionPredictor" and meta["window"] == {"from": 1, "to": 2}
    assert len(meta["sha256"]) == 64 and meta["code_version"] and meta["status"] == "candidate"
    assert meta["metrics"]["accuracy"] == metrics["accuracy"]


def two_served(store, promote_second=True):
    """Version a promoted, then version b registered (and promoted, unless told otherwise)."""
    versions = []
    for seed in (1, 4):
        model, metrics = trained(seed, epochs=3)
        versions.append(store.register("compression_predictor", model, metrics))
        if seed == 1 or promote_second:
            store.promote("compression_predictor", versions[-1])
    return versions


def test_rollback_restores_the_previous_version(store):
    va, vb = two_served(store)
    assert store.rollback("compression_predictor") == va
    assert store.serving("compression_predictor") == va
    assert store.metadata("compression_predictor", vb)["status"] == "rolled_back"
    with pytest.raises(ValueError, match="no earlier version"):  # a UsageError
        store.rollback("compression_predictor")


def test_tampered_model_is_refused_and_serving_stays(store):
    va, vb = two_served(store, promote_second=False)
    path = store.root / "compression_predictor" / vb / "model.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="checksum"):
        store.promote("compression_predictor", vb)
    with pytest.raises(ModelLoadError, match="checksum"):
        store.gate("compression_predictor", vb, CompressionPredictor, score)
    assert store.serving("compression_predictor") == va
    assert store.load("compression_predictor", CompressionPredictor()).version == va


def test_a_published_version_is_adopted_by_another_store_and_tampering_is_refused(store, tmp_path):
    va, vb = two_served(store)
    record = store.export("compression_predictor")
    other = ModelRegistry(tmp_path / "worker-b")
    assert other.adopt(record) == ("compression_predictor", vb)
    assert other.serving("compression_predictor") == vb
    assert other.load("compression_predictor", CompressionPredictor()).version == vb
    assert other.adopt(store.export("compression_predictor", va))[1] == va  # a rollback, published
    tampered = bytearray(record)
    tampered[-3] ^= 0xFF
    with pytest.raises(ModelLoadError, match="SHA-256"):
        ModelRegistry(tmp_path / "c").adopt(bytes(tampered))
    head = json.loads(record[4:4 + int.from_bytes(record[:4], "big")])
    head["version"] = "../../escape"
    forged = json.dumps(head).encode()
    with pytest.raises(ModelLoadError, match="unsafe"):
        ModelRegistry(tmp_path / "c").adopt(len(forged).to_bytes(4, "big") + forged + b"x")
    with pytest.raises(ModelLoadError, match="not a published model"):
        ModelRegistry(tmp_path / "c").adopt(b"garbage")


def test_cli_lists_versions_and_rolls_back(store):
    va, vb = two_served(store)
    cli = [sys.executable, "-m", "pakit_stream", "models"]
    listing = subprocess.run(cli + ["list", "--data-dir", str(store.root)], capture_output=True,
                             text=True, check=True).stdout
    assert "* compression_predictor" in listing and va in listing and vb in listing
    out = subprocess.run(cli + ["rollback", "compression_predictor", "--data-dir",
                                str(store.root)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"name": "compression_predictor", "serving": va}
    bad = subprocess.run(cli + ["rollback", "compression_predictor", "--data-dir",
                                str(store.root)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no earlier version" in bad.stderr


def test_a_version_its_gate_rejected_never_serves(tmp_path):
    from .test_canary import EntropyRule

    store = ModelRegistry(tmp_path / "a")
    va = store.register("compression_predictor", EntropyRule(), {})
    store.promote("compression_predictor", va)
    vb = store.register("compression_predictor", EntropyRule(inverted=True), {})
    store.reject("compression_predictor", vb, "worse on held-out blocks")
    for serve in (store.promote, store.start_canary):
        with pytest.raises(ModelLoadError, match="rejected"):
            serve("compression_predictor", vb)
    record = store.export("compression_predictor", vb)  # e.g. replayed onto the models topic
    with pytest.raises(ModelLoadError, match="rejected"):
        ModelRegistry(tmp_path / "b").adopt(record)
    assert store.serving("compression_predictor") == va


def test_the_store_keeps_what_serves_its_rollback_target_and_the_newest(tmp_path):
    from .test_canary import EntropyRule

    store = ModelRegistry(tmp_path)
    versions = [store.register("compression_predictor", EntropyRule(), {}) for _ in range(8)]
    for v in versions[:4]:
        store.promote("compression_predictor", v)
    store.start_canary("compression_predictor", versions[5])
    gone = store.prune("compression_predictor", keep=2)
    assert gone == [versions[i] for i in (0, 1, 4)]
    left = {m["version"] for m in store.versions("compression_predictor")}
    assert left == {versions[i] for i in (2, 3, 5, 6, 7)}  # rollback, serving, canary, newest
    assert store.rollback("compression_predictor") == versions[2]


def test_with_a_model_key_only_records_signed_with_it_are_installed(tmp_path):
    from .test_canary import EntropyRule

    key = b"m" * 32
    leader = ModelRegistry(tmp_path / "leader", key=key)
    v = leader.register("compression_predictor", EntropyRule(), {})
    leader.promote("compression_predictor", v)
    signed = leader.export("compression_predictor")
    assert ModelRegistry(tmp_path / "a", key=key).install(signed)[1] == v
    unsigned = ModelRegistry(tmp_path / "leader").export("compression_predictor")
    other_key = ModelRegistry(tmp_path / "leader", key=b"x" * 32).export("compression_predictor")
    for record, worker in ((unsigned, "b"), (other_key, "c")):
        with pytest.raises(ModelLoadError, match="unsigned or not signed"):
            ModelRegistry(tmp_path / worker, key=key).install(record)
    n = int.from_bytes(signed[:4], "big")
    head = json.loads(signed[4:4 + n])
    head["role"] = "canary"  # any change to the header voids the signature
    forged = json.dumps(head).encode()
    with pytest.raises(ModelLoadError, match="unsigned or not signed"):
        ModelRegistry(tmp_path / "d", key=key).install(
            len(forged).to_bytes(4, "big") + forged + signed[4 + n:])
    assert ModelRegistry(tmp_path / "e").install(signed)[1] == v  # no key: none required
