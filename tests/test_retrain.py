"""The daemon retrains its codec model on its own, from what the stream taught it."""

import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request


from . import events as ev


def stored_blocks(start, n, seed):
    """Blocks whose best codec (cost = bytes + 1 per microsecond) follows their entropy, which
    only the net sees: incompressible ones are cheapest with lz4 (zstd even grows them), the
    rest with zstd. Their probe and the node's previous block tell nothing."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        entropy = rng.uniform(0, 8)
        size = rng.choice([4096, 65536, 262144])
        dense = entropy > 6
        zstd = int(size * (1.1 if dense else 0.3))
        lz4 = int(size * (0.98 if dense else 0.5))
        e = dict(ev.stored(i), block_size=size, entropy=round(entropy, 3), probe_ratio=0.5,
                 node_id=f"node-{rng.randrange(50)}", codec_results=[
            {"algorithm": "zstd", "compressed_size": zstd, "compress_us": size / 50,
             "decompress_us": size / 400},
            {"algorithm": "lz4", "compressed_size": lz4, "compress_us": size / 400,
             "decompress_us": size / 2000}])
        out.append(e)
    return out


def admin(daemon, action, token="s3cret"):
    req = urllib.request.Request(f"{daemon.url}/v1/admin/models/compression_predictor/{action}",
                                 data=b"", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        err.close()
        return err.code, body


def wait_for_model(daemon, not_version=None, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = daemon.get("/health")["learners"]["codec_model"]
        if version and version != not_version:
            return version
        time.sleep(0.5)
    raise TimeoutError("no new codec model was served")


def hint(daemon, entropy):
    return daemon.post("/v1/hints/compression", {"block_size": 65536, "entropy": entropy,
                                                  "probe_ratio": 0.5})


def test_daemon_retrains_swaps_rolls_back_and_refuses_a_corrupt_model(producer, daemon_factory,
                                                                      tmp_path):
    daemon = daemon_factory(tmp_path / "store", PAKIT_STREAM_RETRAIN_CHECK_S=1,
                            PAKIT_STREAM_RETRAIN_MIN_NEW=300, PAKIT_STREAM_RETRAIN_MIN_SAMPLES=300,
                            PAKIT_STREAM_RETRAIN_MIN_GAIN=-1, PAKIT_STREAM_ADMIN_TOKEN="s3cret",
                            PAKIT_STREAM_RETRAIN_TIMEOUT_S=240, PAKIT_STREAM_CANARY_SHARE=0)
    before = hint(daemon, 7.5)
    assert before["source"] == "fallback" and before["model_version"] is None
    versions = []
    for round_ in range(3):
        producer.send("pakit.blocks", ev.pack(stored_blocks(round_ * 400, 400, round_))).get(10)
        versions.append(wait_for_model(daemon, not_version=versions[-1] if versions else None))
    v1, v2, v3 = versions
    learned = hint(daemon, 7.5)
    assert learned["source"] == "learned" and learned["model_version"] == v3
    assert learned["expert"] == "net" and learned["probe_used"]
    assert learned["algorithm"] == "lz4" and hint(daemon, 1.0)["algorithm"] == "zstd"
    # without the net's inputs, the cost tables answer
    plain = daemon.post("/v1/hints/compression", {"block_size": 65536})
    assert plain["expert"] != "net" and plain["model_version"] is None
    metrics = daemon.get("/metrics")
    assert 'pakit_stream_retrains_total{model="compression_predictor",outcome="accepted"} 3.0' in metrics
    assert f'pakit_stream_model_serving_info{{model="compression_predictor",version="{v3}"}} 1.0' in metrics

    assert admin(daemon, "rollback", token="wrong")[0] == 403
    path = tmp_path / "store" / "compression_predictor" / v2 / "model.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"0123456789")
    status, body = admin(daemon, "rollback")
    assert status == 409 and "checksum" in body["error"]
    assert hint(daemon, 7.5)["model_version"] == v3  # the serving model stayed
    path.write_bytes(good)
    status, body = admin(daemon, "rollback")
    assert status == 200 and body["serving"] == v2
    assert hint(daemon, 7.5)["model_version"] == v2
    listing = subprocess.run([sys.executable, "-m", "pakit_stream", "models", "list", "--data-dir",
                              str(tmp_path / "store")], capture_output=True, text=True, check=True)
    starred = [line.split() for line in listing.stdout.splitlines() if line.startswith("*")]
    assert starred == [["*", "compression_predictor", v2, "serving", starred[0][-1]]]

    # a deliberately worse candidate, trained elsewhere on the labels backwards, is put to the
    # daemon's gate: it loses on the daemon's held-out window, is rejected and kept
    from pakit_stream.batch.compression import CompressionPredictor
    from pakit_stream.features import FeatureExtractor
    from pakit_stream.registry import ModelRegistry
    from pakit_stream.training import ModelTrainer, TrainingConfig, TrainingDataset

    backwards = TrainingDataset()
    for e in stored_blocks(5000, 400, seed=9):
        best = min(e["codec_results"], key=lambda c: c["compressed_size"] + c["compress_us"]
                   + c["decompress_us"])["algorithm"]
        backwards.add_sample(FeatureExtractor().extract_features(e),
                             {"zstd": "lz4", "lz4": "zstd"}[best])
    worse = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=15, learning_rate=0.01)).train(
        worse, *backwards.split(0.8, 0.2, 0.0)[:2])
    store = ModelRegistry(tmp_path / "store")
    bad = store.register("compression_predictor", worse, {"accuracy": 0.0})
    status, body = admin(daemon, f"gate/{bad}?min_gain=0")
    assert status == 200 and body["outcome"] == "rejected"
    assert body["candidate_score"] < 0  # dearer than the cost tables and the best fixed codec
    assert store.metadata("compression_predictor", bad)["status"] == "rejected"
    assert hint(daemon, 7.5)["model_version"] == v2
