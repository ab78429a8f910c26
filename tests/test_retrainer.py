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


def loop_reads(n_nodes=4, loop_len=12, repeats=12):
    """Each node reads its own loop of blocks over and over: predictable next blocks."""
    out = []
    for node in range(n_nodes):
        loop = [ev.block_hash(1000 * node + j) for j in range(loop_len)]
        for r in range(repeats):
            for j, block in enumerate(loop):
                out.append({"event_type": "block_accessed", "node_id": f"node-{node}",
                            "ts": float(r * loop_len + j), "block_hash": block,
                            "cache_hit": False, "latency_ms": 1.0})
    return out


def test_prefetch_model_is_retrained_served_and_hinted(tmp_path):
    import pytest

    from pakit_stream.serving.hints import BadRequest, HintService

    settings = Settings.from_env({}, data_dir=tmp_path, retrain_min_samples=100,
                                 retrain_min_new=100)
    p = Pipeline(settings)
    hints = HintService(p)
    loop = [ev.block_hash(j) for j in range(3)]
    assert hints.prefetch(b'{"recent_accesses": ["%s"]}' % loop[0].encode())["source"] == "fallback"
    p.handle("pakit.access", 0, 0, ev.pack(loop_reads()))
    before = hints.prefetch(b'{"recent_accesses": ["%s"], "k": 1}' % loop[1].encode())
    assert before == {"blocks": [loop[2]], "model_version": None, "source": "markov"}

    r = Retrainer(settings, p)
    assert r.due("prefetch_engine") == "volume"
    result = asyncio.run(r.retrain("volume", "prefetch_engine"))
    assert result["outcome"] == "accepted" and result["candidate_score"] > 0.8
    assert p.prefetch_model.version == result["version"] and p.prefetch_new == 0
    after = hints.prefetch(b'{"recent_accesses": ["%s", "%s"], "k": 1}'
                           % (loop[0].encode(), loop[1].encode()))
    assert after == {"blocks": [loop[2]], "model_version": result["version"], "source": "learned"}
    assert sample(p, "pakit_stream_prefetch_holdout_hit_ratio_at_5") > 0.8
    with pytest.raises(BadRequest):
        hints.prefetch(b'{"recent_accesses": ["not-a-hash"]}')
