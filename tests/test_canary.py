"""Gradual rollout: a canary serves a share of the nodes, both arms are compared on the same
events, and the leader promotes a better canary and rolls a worse one back."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from prometheus_client import generate_latest
from safetensors.numpy import save_file

from pakit_stream.canary import Canary, in_canary
from pakit_stream.pipeline import Pipeline
from pakit_stream.registry import ModelRegistry
from pakit_stream.retrain import Retrainer
from pakit_stream.serving.hints import HintService
from pakit_stream.settings import Settings
from pakit_stream.specs import CODEC_MODEL

from . import events as ev
from .test_retrain import stored_blocks

CANARY = {"canary_share": 0.5, "canary_min_samples": 40, "canary_max_samples": 400,
          "eval_every": 1, "retrain_min_samples": 10**6}


class EntropyRule:
    """A codec net, written out by hand: lz4 for blocks of entropy above 6, else zstd (the
    cheapest codec of :func:`stored_blocks`), or, ``inverted``, the other one (the dearest)."""

    def __init__(self, inverted: bool = False) -> None:
        self.classes = ["lz4", "zstd"] if inverted else ["zstd", "lz4"]
        self.version = None

    def save(self, path) -> None:
        f32 = np.float32
        meta = {"kind": "CompressionPredictor", "version": self.version,
                "feature_names": ["entropy"], "classes": self.classes}
        tensors = {"0.mean": np.zeros(1, f32), "0.std": np.ones(1, f32),
                   "1.weight": np.array([[1.0], [0.0]], f32), "1.bias": np.array([-6.0, 1.0], f32),
                   "4.weight": np.eye(2, dtype=f32), "4.bias": np.zeros(2, f32),
                   "7.weight": np.array([[0.0, 0.5], [10.0, 0.0]], f32),
                   "7.bias": np.zeros(2, f32)}
        save_file(tensors, str(path), metadata={"pakit": json.dumps(meta)})


def store_with_canary(root, canary_better: bool) -> tuple[str, str]:
    """A model store whose codec net serves, with a canary that is better or worse online."""
    store = ModelRegistry(root)
    serving = store.register(CODEC_MODEL, EntropyRule(inverted=canary_better), {})
    store.promote(CODEC_MODEL, serving)
    canary = store.register(CODEC_MODEL, EntropyRule(inverted=not canary_better), {})
    store.start_canary(CODEC_MODEL, canary)
    return serving, canary


def test_nodes_split_by_a_stable_hash_of_their_id():
    nodes = [f"node-{i}" for i in range(4000)]
    share = sum(in_canary(n, 0.25) for n in nodes) / len(nodes)
    assert 0.22 < share < 0.28
    assert [in_canary(n, 0.25) for n in nodes] == [in_canary(n, 0.25) for n in nodes]
    assert {n for n in nodes if in_canary(n, 0.1)} <= {n for n in nodes if in_canary(n, 0.25)}


def test_a_canary_is_judged_on_paired_evidence():
    c = Canary(CODEC_MODEL, "v2", None, 0.1)
    for _ in range(30):
        c.add(0.5, 0.6)
    assert c.verdict(min_samples=50, max_samples=500) is None  # too few
    for _ in range(30):
        c.add(0.5, 0.6)
    assert c.verdict(min_samples=50, max_samples=500) == "promote"
    tie = Canary(CODEC_MODEL, "v2", None, 0.1)
    for i in range(500):
        tie.add(0.5, 0.5 + (0.1 if i % 2 else -0.1))
    assert tie.verdict(min_samples=50, max_samples=500) == "promote"  # no harm seen


@pytest.mark.parametrize("better", [True, False])
def test_the_leader_promotes_a_better_canary_and_rolls_a_worse_one_back(tmp_path, better):
    serving, candidate = store_with_canary(tmp_path, canary_better=better)
    settings = Settings.from_env({}, data_dir=tmp_path, **CANARY)
    p = Pipeline(settings)
    retrainer = Retrainer(settings, p)
    published = []
    retrainer.on_serving_change.append(lambda name, role: published.append((name, role)))
    retrainer.load_all()
    assert p.codec_model.version == serving and p.canaries[CODEC_MODEL].version == candidate

    hints = HintService(p)
    for i in range(40):  # each node is answered by its arm
        hints.compression(json.dumps({"block_size": 65536, "node_id": f"node-{i}"}).encode())
    arms = {s.labels["arm"]: s.value for m in p.metrics.canary_hints.collect()
            for s in m.samples if s.name.endswith("_total")}
    assert arms["canary"] > 0 and arms["serving"] > 0

    p.handle("pakit.blocks", 0, 0, ev.pack(stored_blocks(0, 400, seed=1)))
    canary = p.canaries[CODEC_MODEL]
    assert canary.samples == 400  # every labelled block scored both arms
    lo, hi = canary.interval()
    assert (lo > 0) if better else (hi < 0)
    assert retrainer.judge_canaries() == {CODEC_MODEL: "promote" if better else "rollback"}

    store = ModelRegistry(tmp_path)
    assert CODEC_MODEL not in p.canaries and store.canary(CODEC_MODEL) is None
    now = candidate if better else serving
    assert p.codec_model.version == now and store.serving(CODEC_MODEL) == now
    assert store.metadata(CODEC_MODEL, candidate)["status"] == (
        "serving" if better else "rolled_back")
    assert published == [(CODEC_MODEL, "serving")]  # the other workers follow the leader
    text = generate_latest(p.metrics.registry).decode()
    assert 'pakit_stream_canary_quality{arm="canary",model="compression_predictor"}' in text
    outcome = "promote" if better else "rollback"
    assert (f'pakit_stream_canary_decisions_total{{model="compression_predictor",'
            f'outcome="{outcome}"}} 1.0') in text


def test_a_worker_follows_the_leaders_canary_and_its_end(tmp_path):
    leader_root, follower_root = tmp_path / "leader", tmp_path / "follower"
    serving, candidate = store_with_canary(leader_root, canary_better=True)
    leader = ModelRegistry(leader_root)
    settings = Settings.from_env({}, data_dir=follower_root, **CANARY)
    p = Pipeline(settings)
    follower = Retrainer(settings, p)
    import asyncio

    async def follow():
        assert await follower.adopt(leader.export(CODEC_MODEL)) == CODEC_MODEL
        assert await follower.adopt(leader.export(CODEC_MODEL, role="canary")) == CODEC_MODEL
        assert p.canaries[CODEC_MODEL].version == candidate
        assert ModelRegistry(follower_root).canary(CODEC_MODEL) == candidate
        leader.promote(CODEC_MODEL, candidate)  # the leader's verdict, published
        assert await follower.adopt(leader.export(CODEC_MODEL)) == CODEC_MODEL

    asyncio.run(follow())
    assert p.codec_model.version == candidate and not p.canaries
    assert ModelRegistry(follower_root).serving(CODEC_MODEL) == candidate


@pytest.mark.parametrize("better", [True, False])
def test_daemon_rolls_a_canary_out_or_back_end_to_end(producer, daemon_factory, tmp_path,
                                                      better):
    """A real daemon and broker: the canary in the store serves half the nodes, labelled
    blocks arrive through Kafka, and the leader's verdict is what the daemon ends up serving."""
    serving, candidate = store_with_canary(tmp_path / "store", canary_better=better)
    daemon = daemon_factory(tmp_path / "store", PAKIT_STREAM_RETRAIN_CHECK_S=1,
                            **{f"PAKIT_STREAM_{k.upper()}": v for k, v in CANARY.items()})
    health = daemon.get("/health")
    assert health["canaries"][CODEC_MODEL]["version"] == candidate
    metrics = daemon.get("/metrics")
    assert f'pakit_stream_model_canary_info{{model="{CODEC_MODEL}",version="{candidate}"}}' in metrics
    producer.send("pakit.blocks", ev.pack(stored_blocks(0, 400, seed=2))).get(10)
    deadline = time.monotonic() + 60
    while daemon.get("/health")["canaries"] and time.monotonic() < deadline:
        time.sleep(0.5)
    health = daemon.get("/health")
    assert not health["canaries"], health["canaries"]
    assert health["learners"]["codec_model"] == (candidate if better else serving)
    metrics = daemon.get("/metrics")
    outcome = "promote" if better else "rollback"
    assert f'outcome="{outcome}"}} 1.0' in metrics
    assert 'pakit_stream_canary_quality{arm="serving"' in metrics


class NoVocabulary:
    """A prefetch model file whose header lacks ``vocab``: it once crash-looped every worker."""

    version = None

    def save(self, path) -> None:
        meta = {"kind": "PrefetchEngine", "version": self.version, "context_len": 4}
        save_file({"embed.weight": np.zeros((2, 2), np.float32)}, str(path),
                  metadata={"pakit": json.dumps(meta)})


def test_a_published_model_that_does_not_load_is_refused_before_it_serves(tmp_path):
    import asyncio

    from pakit_stream.exceptions import ModelLoadError

    leader = ModelRegistry(tmp_path / "leader")
    version = leader.register("prefetch_engine", NoVocabulary(), {})
    leader.promote("prefetch_engine", version)
    settings = Settings.from_env({}, data_dir=tmp_path / "worker")
    p = Pipeline(settings)
    worker = Retrainer(settings, p)
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        asyncio.run(worker.adopt(leader.export("prefetch_engine")))
    assert ModelRegistry(tmp_path / "worker").serving("prefetch_engine") is None
    Retrainer(settings, Pipeline(settings)).load_all()  # a restart starts, nothing to serve
    assert p.prefetch_model is None
