"""Privacy options: Laplace noise on the exported quality figures, k-anonymity of training
data."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from pakit_stream.exceptions import ConfigError, UsageError
from pakit_stream.pipeline import Pipeline
from pakit_stream.privacy import Crowds, k_anonymous, laplace, private_mean
from pakit_stream.retrain import Retrainer
from pakit_stream.settings import Settings

from . import events as ev


def test_laplace_noise_has_the_scale_the_privacy_budget_asks_for():
    rng = random.Random(1)
    draws = [laplace(2.0, rng) for _ in range(40_000)]
    assert abs(statistics.fmean(draws)) < 0.05
    assert statistics.stdev(draws) == pytest.approx(2.0 * 2 ** 0.5, rel=0.03)  # sqrt(2) * b
    # the mean of 100 values in [0, 1] at epsilon 0.5: scale 1 / (100 * 0.5) = 0.02
    released = [private_mean(30.0, 100, 0.5, rng) for _ in range(20_000)]
    assert statistics.stdev(released) == pytest.approx(0.02 * 2 ** 0.5, rel=0.05)
    assert all(0.0 <= r <= 1.0 for r in released)
    with pytest.raises(ValueError):
        private_mean(1.0, 10, 0.0, rng)


def test_the_daemon_exports_only_private_releases_and_not_too_often():
    raw = Pipeline(Settings())
    private = Pipeline(Settings(dp_epsilon=0.1, dp_release_s=3600))
    for p in (raw, private):
        p.handle("pakit.access", 0, 0, ev.pack([ev.accessed(i) for i in range(30)]))
    truth = raw.quality["cache_hit"].value  # 10 hits out of 30
    gauge = lambda p: p.metrics.registry.get_sample_value("pakit_stream_node_cache_hit_ratio")  # noqa: E731
    assert gauge(raw) == pytest.approx(truth) == raw.stats()["quality"]["cache_hit"]
    first = gauge(private)
    assert first != truth and 0.0 <= first <= 1.0
    assert private.stats()["quality"]["cache_hit"] == round(first, 6)  # /health: the same release
    private.handle("pakit.access", 0, 1, ev.pack([ev.accessed(i) for i in range(30, 60)]))
    assert gauge(private) == first  # within dp_release_s: no new release, no new epsilon spent
    releases = set()
    for offset in range(2, 8):  # each time the interval has passed, a fresh noisy release
        private._released.clear()
        private.handle("pakit.access", 0, offset, ev.pack([ev.accessed(60 + offset)]))
        releases.add(gauge(private))
    assert releases - {first}  # (one release may clip to the same bound as the first)


def test_blocks_read_by_fewer_than_k_nodes_never_reach_the_prefetch_model(tmp_path):
    settings = Settings.from_env({}, data_dir=tmp_path, k_anonymity=2)
    p = Pipeline(settings)
    shared = [ev.accessed(i, node=n) for n in ("node-a", "node-b") for i in range(6)]
    private = [dict(ev.accessed(0, node="node-c"), block_hash=ev.block_hash(999))] * 4
    p.handle("pakit.access", 0, 0, ev.pack(shared + private))
    r = Retrainer(settings, p)
    train, holdout, size = r.split("prefetch_engine")
    seen = {read[1] for read in train + holdout}  # (node, block, object, index, count)
    assert ev.block_hash(999) not in seen and size == 16 and r.suppressed == 4
    assert seen == {ev.block_hash(i % 7) for i in range(6)}
    kept, report = k_anonymous([("n", "x")], individual=lambda r: r[0], quasi=lambda r: r[1], k=2)
    assert kept == [] and not report.satisfied and report.smallest_kept == 0


@pytest.mark.parametrize("bad", [{"dp_epsilon": -1.0}, {"k_anonymity": 0}])
def test_privacy_settings_are_validated(bad):
    with pytest.raises(ConfigError):
        Settings(**bad).validate()


def test_with_dp_on_the_prefetch_gates_raw_hit_ratio_is_not_exported():
    from pakit_stream.metrics import Metrics
    from pakit_stream.specs import SPECS

    spec = SPECS["prefetch_engine"]
    for epsilon, exported in ((0.0, 0.7), (1.0, 0.0)):
        metrics = Metrics()
        spec.on_accepted(metrics, {"candidate_score": 0.7}, Settings(dp_epsilon=epsilon))
        assert metrics.prefetch_holdout._value.get() == exported


def test_with_dp_on_the_network_hint_gives_the_setting_without_its_estimates():
    from pakit_stream.serving.hints import HintService

    body = b'{"network_size": 100, "avg_latency_ms": 40, "message_loss_rate": 0.01}'
    for epsilon in (0.0, 1.0):
        p = Pipeline(Settings(dp_epsilon=epsilon))
        p.handle("pakit.gossip", 0, 0, ev.pack([ev.gossip(i) for i in range(60)]))
        hints = HintService(p)
        answers = [hints.network(body) for _ in range(30)]  # some explore: no estimates then
        estimates = [v for a in answers for k, v in a.items() if k.startswith("expected_")]
        assert all(a["fanout"] for a in answers) and estimates
        assert all(v is None for v in estimates) == (epsilon > 0)


def _k_anonymous_hints(k: int):
    from pakit_stream.serving.hints import HintService

    p = Pipeline(Settings(k_anonymity=k))
    return p, HintService(p)


def _ask_all(hints) -> dict[str, str]:
    """The source of each hint, asked by a node that sent nothing ("node-z"); the prefetch
    hint by "node-a", which reads an object, at its position."""
    peer = hints.peer(json.dumps({"node_id": "node-z", "available_peers": sorted(ev.PEER_MS),
                                  "context": {"network_load": 0.2}}).encode())
    network = hints.network(b'{"network_size": 100, "avg_latency_ms": 40, '
                            b'"message_loss_rate": 0.01}')
    codec = hints.compression(b'{"block_size": 65536, "node_id": "node-z"}')
    prefetch = hints.prefetch(json.dumps({"node_id": "node-a", "object_id": "0f" * 32,
                                          "chunk_index": 2}).encode())
    similar = hints.similar(ev.fingerprint(0)["block_hash"], 5)
    return {"peer": peer["source"], "network": "fallback" if network["source"] == "fallback"
            else "learned", "codec": codec["source"], "prefetch": prefetch["source"],
            "similar": "learned" if similar["similar"] else "fallback"}


def _feed(p, topic: str, message: bytes) -> None:
    """Apply ``message`` as the next offset of ``topic``'s partition 0."""
    p.handle(topic, 0, p.offsets.get(f"{topic}/0", 0), message)


def _report(p, node: str) -> None:
    """``node`` stores, reads (0, 1, ..., 6, 0, ...), fingerprints near-duplicates of one
    block, fetches and gossips."""
    _feed(p, "pakit.blocks", ev.pack([ev.stored(i, node) for i in range(300)]))
    _feed(p, "pakit.access", ev.pack([ev.accessed(i, node, position=True)
                                      for i in range(300)]))
    _feed(p, "pakit.fingerprints", ev.pack(
        [ev.fingerprint(0, node)] + [ev.fingerprint(i, node, base=0, edits=4)
                                     for i in range(1, 4)]))
    _feed(p, "pakit.peers", ev.pack([ev.peer_fetch(i, node) for i in range(60)]))
    _feed(p, "pakit.gossip", ev.pack([ev.gossip(i, node) for i in range(60)]))


def test_with_k_anonymity_no_hint_reveals_what_fewer_than_k_nodes_reported():
    p, hints = _k_anonymous_hints(1)
    _report(p, "node-a")
    assert set(_ask_all(hints).values()) == {"learned"}  # off: one node's reports serve

    p, hints = _k_anonymous_hints(2)
    _report(p, "node-a")
    assert set(_ask_all(hints).values()) == {"fallback"}  # one node: nothing revealed
    _report(p, "node-b")
    assert set(_ask_all(hints).values()) == {"learned"}  # two nodes reported it all

    # what one node alone read stays out of answers: its object, and the successor table
    # (an edge may be one node's, though both blocks are read by many)
    _feed(p, "pakit.access", ev.pack(
        [dict(ev.accessed(i, "node-c", position=True), object_id="1f" * 32,
              block_hash=ev.block_hash(1000 + i % 7)) for i in range(200)]))
    own = hints.prefetch(json.dumps({"node_id": "node-c", "object_id": "1f" * 32,
                                     "chunk_index": 2}).encode())
    assert own["proposals"] == [] and own["source"] == "fallback"
    by_hash = hints.prefetch(json.dumps({"recent_accesses": [ev.block_hash(0)]}).encode())
    assert by_hash["proposals"] == []
    shared = hints.prefetch(json.dumps({"node_id": "node-a", "object_id": "0f" * 32,
                                        "chunk_index": 2}).encode())
    assert shared["proposals"] and all(x["source"] != "successor" for x in shared["proposals"])
    solo = dict(ev.peer_fetch(0, "node-c"), peer_id="peer-solo", latency_ms=0.1,
                candidates=["peer-solo", "peer-fast"])
    _feed(p, "pakit.peers", ev.pack([solo] * 50))
    picks = {hints.peer(json.dumps({"node_id": "node-c", "available_peers":
                                    ["peer-solo", "peer-fast"]}).encode())["peer_id"]
             for _ in range(20)}
    assert picks == {"peer-fast"}


def test_crowds_forget_the_oldest_keys_past_their_capacity():
    crowds = Crowds(k=2, capacity=2)
    for key in ("a", "b", "c"):
        crowds.add("read", key, "n1")
        crowds.add("read", key, "n2")
    assert not crowds.known("read", "a") and crowds.known("read", "c") and len(crowds) == 2
    small = Crowds(k=1, capacity=5, capacities={"peer": 1})
    for key in ("a", "b"):
        small.add("peer", key, "n1")
        small.add("read", key, "n1")
    assert not small.known("peer", "a") and small.known("read", "a")
    with pytest.raises(UsageError):
        Crowds(k=0)
