import asyncio
import time

from pakit_stream.events import EventDecoder
from pakit_stream.pipeline import Pipeline
from pakit_stream.retrain import Retrainer
from pakit_stream.settings import Settings

from . import events as ev
from .test_retrain import stored_blocks


def fed(tmp_path, **overrides) -> tuple[Pipeline, Retrainer]:
    settings = Settings.from_env({}, data_dir=tmp_path, retrain_min_samples=100,
                                 retrain_min_new=100, **overrides)
    p = Pipeline(settings)
    p.handle("pakit.blocks", 0, 0, ev.pack(stored_blocks(0, 500, seed=1)))
    return p, Retrainer(settings, p)


def sample(p, name, **labels):
    return p.metrics.registry.get_sample_value(name, labels)


def test_triggers(tmp_path):
    p, r = fed(tmp_path)
    assert r.due() == "volume"
    p.codec_new = 0
    assert r.due() is None
    r.last_run["compression_predictor"] = time.time() - 10_000
    assert r.due() == "schedule"
    p.codec_drift = True
    assert r.due() == "drift"
    p.codec_window.clear()
    assert r.due() is None  # never on too little data


def test_a_worse_candidate_is_rejected_and_the_serving_model_stays(tmp_path):
    p, r = fed(tmp_path, retrain_min_gain=0.0)
    first = asyncio.run(r.retrain("volume"))
    assert first["outcome"] == "accepted" and p.codec_model.version == first["version"]
    assert p.codec_new == 0
    # the world flips: the new window teaches the opposite labels, and the held-out window
    # (the newest data) still follows the old rule, so the candidate must lose the gate
    flipped = [dict(e, codec_results=[dict(c, algorithm={"zstd": "lz4", "lz4": "zstd"}[c["algorithm"]])
                                      for c in e["codec_results"]])
               for e in stored_blocks(1000, 400, seed=2)]
    p.codec_window.clear()
    decoder = EventDecoder("pakit.blocks")
    p.apply("pakit.blocks", decoder.decode(ev.pack(flipped)).events)
    p.apply("pakit.blocks", decoder.decode(ev.pack(stored_blocks(2000, 100, seed=3))).events)
    second = asyncio.run(r.retrain("drift"))
    # dearer on the held-out window than the cost tables and the best fixed codec
    assert second["outcome"] == "rejected" and second["candidate_score"] < 0
    assert p.codec_model.version == first["version"]
    assert r.registry.metadata("compression_predictor", second["version"])["status"] == "rejected"
    assert sample(p, "pakit_stream_retrains_total", model="compression_predictor",
                  outcome="rejected") == 1
    assert p.stats()["quality"]["codec_online"] > 0  # the chooser was scored online


def test_a_hanging_retrain_is_killed_and_counted(tmp_path):
    p, r = fed(tmp_path, retrain_timeout_s=0.5)
    result = asyncio.run(r.retrain("volume"))
    assert result["outcome"] == "failed" and "timed out" in result["reason"]
    assert p.codec_model is None
    assert sample(p, "pakit_stream_retrains_total", model="compression_predictor",
                  outcome="failed") == 1


STEPS = (1, 1, 37)  # each node reads its object forward, every third step a long jump


def stepped_reads(n_nodes=4, n=302):
    """Each node reads its own object at steps cycling 1, 1, 37, never returning: the
    successor table never sees a block twice, the stride names +1 and misses every jump, and
    only a net that reads the step history can tell the next jump."""
    out = []
    for node in range(n_nodes):
        index = 0
        for i in range(n):
            index += STEPS[i % 3]
            out.append({"event_type": "block_accessed", "node_id": f"node-{node}",
                        "ts": float(i), "block_hash": ev.block_hash(10**6 * node + index),
                        "cache_hit": False, "latency_ms": 1.0,
                        "object_id": f"{node:064x}", "chunk_index": index})
    return out


def test_prefetch_model_is_retrained_served_and_hinted(tmp_path):
    import pytest

    from pakit_stream.learners.prefetch import judge_net
    from pakit_stream.serving.hints import BadRequest, HintService

    settings = Settings.from_env({}, data_dir=tmp_path, retrain_min_samples=100,
                                 retrain_min_new=100)
    p = Pipeline(settings)
    hints = HintService(p)
    assert hints.prefetch(b'{"node_id": "node-0"}')["source"] == "fallback"
    reads = stepped_reads()
    p.handle("pakit.access", 0, 0, ev.pack(reads))
    last = reads[301]["chunk_index"]  # node-0's last read; its next step is a jump
    # two steps of 1 just happened: the learner has seen that a third +1 never comes true
    # after a run of this length, and proposes nothing rather than pollute the cache
    before = hints.prefetch(b'{"node_id": "node-0", "k": 2}')
    assert before == {"blocks": [], "positions": [], "proposals": [], "threshold": 0.1,
                      "source": "fallback", "model_version": None}

    r = Retrainer(settings, p)
    assert r.due("prefetch_engine") == "volume"
    result = asyncio.run(r.retrain("volume", "prefetch_engine"))
    assert result["outcome"] == "accepted", result
    assert p.prefetch_model.version == result["version"] and p.prefetch_new == 0
    # the gate judged the learner that serves, built as the daemon builds it
    params = r.params("prefetch_engine")
    assert (params["min_confidence"], params["horizon"]) == (
        p.prefetcher.min_confidence, p.prefetcher.horizon)
    train, holdout, _ = r.split("prefetch_engine")
    without = judge_net(None, train, holdout, **params)
    assert result["candidate_score"] > without + 0.1
    assert result["candidate_score"] == pytest.approx(
        r.served_score("prefetch_engine", p.prefetch_model, holdout, train))
    more, index = [], last  # node-0 reads on: the net's proposals are scored as they come
    for i in range(302, 332):
        index += STEPS[i % 3]
        more.append({**reads[0], "ts": float(i), "chunk_index": index,
                     "block_hash": ev.block_hash(index)})
    p.handle("pakit.access", 0, 1, ev.pack(more))
    after = hints.prefetch(b'{"node_id": "node-0", "k": 3}')
    assert [x["chunk_index"] for x in after["proposals"]][:1] == [index + 37]
    assert after["model_version"] == result["version"]
    assert after["proposals"] == [x.as_dict() for x in p.prefetcher.propose("node-0", 3)]
    # a node that names its cache size gets the floor learned for that cache
    sized = hints.prefetch(b'{"node_id": "node-0", "k": 3, "cache_blocks": 50}')
    assert sized["threshold"] == round(p.prefetcher.threshold("node-0", 50), 6) != 0.1
    assert sized["proposals"] == [x.as_dict() for x in p.prefetcher.propose("node-0", 3, 50)]
    assert sample(p, "pakit_stream_prefetch_holdout_hit_ratio_at_5") > without
    # a node the daemon never saw asks with its recent reads: the successor table answers
    assert hints.prefetch(b'{"recent_accesses": ["%s"], "k": 1}'
                          % reads[0]["block_hash"].encode())["blocks"] == [reads[1]["block_hash"]]
    with pytest.raises(BadRequest):
        hints.prefetch(b'{"k": 3}')
    with pytest.raises(BadRequest):
        hints.prefetch(b'{"recent_accesses": ["not-a-hash"]}')
    with pytest.raises(BadRequest):
        hints.prefetch(b'{"node_id": "node-0", "cache_blocks": 0}')
