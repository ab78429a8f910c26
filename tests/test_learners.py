import copy
import json
import math
import random

import numpy as np
import pytest

from pakit_stream import persist
from pakit_stream.base_model import ModelConfig
from pakit_stream.exceptions import ConfigError, ModelLoadError, UsageError
from pakit_stream.learners import (DeduplicationOptimizer, NetworkOptimizer, PeerSelector,
                                   SuccessorTable)

from pakit_stream.learners.codec import CodecCostModel, heuristic_codec
from pakit_stream.learners.prefetch import Prefetcher, delta_sequences, judge_net
from pakit_stream.learners.reuse import ReuseProfile

from . import events as ev

KEY = b"test-key-0123456789abcdef0123456"


def trained_peers():
    m = PeerSelector(ModelConfig(key=KEY), seed=0)
    m.train([ev.peer_fetch(i) for i in range(90)])
    return m, {"available_peers": ["peer-slow", "peer-mid", "peer-fast"],
               "context": {"time_of_day": 0.5, "network_load": 0.2}}


def trained_network():
    m = NetworkOptimizer(ModelConfig(key=KEY), epsilon=0.0)
    m.train([ev.gossip(i) for i in range(60)])
    return m, {"network_size": 100, "avg_latency_ms": 40.0, "message_loss_rate": 0.01}


def trained_dedup():
    m = DeduplicationOptimizer(ModelConfig(key=KEY))
    m.train([ev.fingerprint(0)] + [ev.fingerprint(i, base=0, edits=i) for i in range(1, 30)])
    return m, {"block_hash": ev.block_hash(100_000), "top_k": 3, "min_jaccard": 0.8}


def trained_successors():
    m = SuccessorTable(ModelConfig(key=KEY))
    m.train([ev.accessed(i) for i in range(50)])
    return m, {"recent_accesses": [ev.block_hash(2)], "k": 2}


def trained_prefetcher():
    m = Prefetcher(ModelConfig(key=KEY))
    m.train([ev.accessed(i, position=i % 2 == 0) for i in range(60)])
    return m, {"node_id": "node-a", "k": 3}


def trained_codec():
    m = CodecCostModel(ModelConfig(key=KEY))
    m.train([ev.stored(i) for i in range(40)])
    return m, {"block_size": 65536, "node_id": "node-a"}


LEARNERS = [trained_peers, trained_network, trained_dedup, trained_successors,
            trained_prefetcher, trained_codec]


@pytest.mark.parametrize("make", LEARNERS, ids=lambda f: f.__name__)
class TestContract:
    """Checks every online learner passes."""

    def test_predicts_before_learning(self, make):
        model, request = make()
        fresh = type(model)(ModelConfig(key=KEY))
        if isinstance(fresh, PeerSelector):
            assert fresh.predict(request) in request["available_peers"]
        elif isinstance(fresh, NetworkOptimizer):
            assert fresh.predict(request)["source"] == "fallback"
        elif isinstance(fresh, CodecCostModel):
            assert fresh.predict(request) == heuristic_codec(request["block_size"])
        else:
            assert fresh.predict(request) == []

    def test_learning_changes_the_answer_or_the_state(self, make):
        model, request = make()
        assert model.n_updates > 0

    def test_predict_does_not_mutate_the_request(self, make):
        model, request = make()
        before = copy.deepcopy(request)
        model.predict(request)
        assert request == before

    def test_save_load_round_trip(self, make, tmp_path):
        model, request = make()
        model.save(tmp_path / "m.pkl")
        restored = type(model)(ModelConfig(key=KEY)).load(tmp_path / "m.pkl")
        assert restored.predict(request) == model.predict(request)
        assert restored.n_updates == model.n_updates

    def test_tampered_file_is_refused_before_unpickling(self, make, tmp_path):
        model, _ = make()
        path = tmp_path / "m.pkl"
        model.save(path)
        blob = bytearray(path.read_bytes())
        blob[-5] ^= 0xFF
        path.write_bytes(bytes(blob))
        with pytest.raises(ModelLoadError, match="signature mismatch"):
            type(model)(ModelConfig(key=KEY)).load(path)

    def test_other_key_is_refused(self, make, tmp_path):
        model, _ = make()
        model.save(tmp_path / "m.pkl")
        with pytest.raises(ModelLoadError):
            type(model)(ModelConfig(key=b"another key, of 32 bytes or more")).load(
                tmp_path / "m.pkl")
        with pytest.raises(ConfigError, match="at least 32 bytes"):  # too short to sign with
            type(model)(ModelConfig(key=b"another key")).load(tmp_path / "m.pkl")

    def test_key_is_not_saved(self, make, tmp_path):
        model, _ = make()
        model.save(tmp_path / "m.pkl")
        assert KEY not in (tmp_path / "m.pkl").read_bytes()


def test_loading_the_wrong_model_type_is_refused(tmp_path):
    peers, _ = trained_peers()
    peers.save(tmp_path / "p.pkl")
    with pytest.raises(ModelLoadError, match="not a NetworkOptimizer"):
        NetworkOptimizer(ModelConfig(key=KEY)).load(tmp_path / "p.pkl")


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ModelLoadError):
        persist.load(tmp_path / "nothing", KEY)
    (tmp_path / "x").write_bytes(b"\x80\x04K\x01.")  # a bare pickle: never loaded
    with pytest.raises(ModelLoadError, match="not a pakit-stream state file"):
        persist.load(tmp_path / "x", KEY)


def test_key_file_is_created_private_and_reused(tmp_path):
    key = persist.resolve_key(None, tmp_path / "k" / "state.key")
    assert persist.resolve_key(None, tmp_path / "k" / "state.key") == key and len(key) == 32
    assert (tmp_path / "k" / "state.key").stat().st_mode & 0o777 == 0o600


# -- peers ---------------------------------------------------------------------------------
CTX = {"time_of_day": 0.5, "network_load": 0.2}


def _fetch(sel, peer, ms, ts, node="n1", ok=True, ctx=CTX):
    sel.learn_fetch(peer, ok, ms, 65536, ctx, node_id=node, ts=ts)


def test_bandit_prefers_the_fast_peer_and_moves_as_soon_as_it_slows():
    sel = PeerSelector(seed=3)
    for t in range(200):
        _fetch(sel, "a", 20.0, t)
        _fetch(sel, "b", 150.0, t)
    assert sel.select(["a", "b"], node_id="n1", ts=200).peer_id == "a"
    for t in range(201, 204):  # a degrades: three fresh readings outweigh 200 old ones
        _fetch(sel, "a", 600.0, t)
    assert sel.select(["a", "b"], node_id="n1", ts=204).peer_id == "b"


def test_an_old_reading_counts_less_than_a_fresh_one():
    sel = PeerSelector(seed=0)
    # pairs whose readings hold for a while, then jump: the learner finds out how long
    rng = random.Random(0)
    levels = {f"p{i}": rng.uniform(20, 400) for i in range(8)}
    for t in range(4000):
        if t % 200 == 0:
            levels = {p: rng.uniform(20, 400) for p in levels}
        peer = f"p{t % 8}"
        _fetch(sel, peer, levels[peer] * math.exp(rng.gauss(0, 0.05)), t)
    pol = sel._policy
    mu_fresh, var_fresh, _ = pol.estimate("n1", "p0", 4001)
    mu_old, var_old, _ = pol.estimate("n1", "p0", 4000 + 5000)
    pair = pol._pairs["n1", "p0"]
    assert abs(mu_fresh - pair.last) < abs(mu_old - pair.last)  # the old one leans to the mean
    assert var_old > var_fresh


def test_estimates_are_per_node():
    sel = PeerSelector(seed=0)
    for t in range(100):
        _fetch(sel, "a", 20.0, t, node="east")
        _fetch(sel, "b", 300.0, t, node="east")
        _fetch(sel, "a", 300.0, t, node="west")
        _fetch(sel, "b", 20.0, t, node="west")
    assert sel.select(["a", "b"], node_id="east", ts=100).peer_id == "a"
    assert sel.select(["a", "b"], node_id="west", ts=100).peer_id == "b"


def test_a_peer_slow_for_everyone_is_avoided_by_a_node_that_never_tried_it():
    sel = PeerSelector(seed=0)
    for t in range(300):
        for node in ("n1", "n2", "n3"):
            _fetch(sel, "slow", 900.0, t, node=node)
            _fetch(sel, "quick", 30.0, t, node=node)
    picks = [sel.select(["slow", "quick"], node_id="newcomer", ts=300).peer_id for _ in range(50)]
    assert picks.count("quick") > 45


def test_failures_count_as_what_they_cost():
    sel = PeerSelector(seed=0, failure_ms=1000.0)
    for t in range(100):
        _fetch(sel, "flaky", 10.0, t, ok=(t % 2 == 0))  # fails half the time, fast otherwise
        _fetch(sel, "steady", 80.0, t)
    assert sel.select(["flaky", "steady"], node_id="n1", ts=100).peer_id == "steady"


def test_unseen_peer_is_explored_and_unknown_sets_fall_back():
    sel = PeerSelector(seed=1)
    for t in range(50):
        _fetch(sel, "known", 300.0, t)
    picks = {sel.select(["known", "newcomer"], node_id="n1", ts=50).peer_id for _ in range(30)}
    assert "newcomer" in picks
    assert sel.select(["x", "y"]).source == "fallback"
    with pytest.raises(ValueError):
        sel.select([])


def test_context_keys_outside_the_whitelist_are_refused_and_learn_nothing():
    sel = PeerSelector(seed=0)
    with pytest.raises(ValueError, match="context key 'colour'"):
        sel.learn_fetch("a", True, 10.0, 65536, {"colour": 1.0}, node_id="n1", ts=0)
    with pytest.raises(ValueError, match="context key"):
        sel.select(["a"], {"colour": 1.0})
    assert sel.n_updates == 0 and sel.n_peers == 0


def test_network_load_is_learned_as_a_shared_correction():
    sel = PeerSelector(seed=0)
    rng = random.Random(1)
    for t in range(3000):
        load = rng.random()
        for peer, base in (("a", 50.0), ("b", 50.0)):
            _fetch(sel, peer, base * (1 + 3 * load), t, ctx={"network_load": load})
    pol = sel._policy
    busy = pol.choose(["a"], {"node_id": "n1", "ts": 3000, "network_load": 0.9}, sample=False)
    idle = pol.choose(["a"], {"node_id": "n1", "ts": 3000, "network_load": 0.1}, sample=False)
    assert busy[1] > 1.5 * idle[1]


def test_bandit_state_is_bounded():
    sel = PeerSelector(max_pairs=5, max_peers=7)
    for i in range(20):
        _fetch(sel, f"p{i}", 10.0, i, node=f"n{i % 3}")
    pol = sel._policy
    assert pol.n_pairs == 5 and sel.n_peers == 7 and len(pol._nodes) == 3
    assert not sel.knows("p0") and sel.knows("p19")


# -- codec -----------------------------------------------------------------------------------
def _costs(size, ratio, price_zstd=0.02, price_lz4=0.002):
    """Measured costs of a block that compresses to ``ratio`` (zstd-9) / ``ratio + 0.15``
    (lz4), taking ``price_*`` µs per byte, with a fixed 2 µs per call."""
    return {"zstd-9": (int(size * ratio), 2 + size * price_zstd),
            "lz4": (int(size * min(1.0, ratio + 0.15)), 2 + size * price_lz4),
            "none": (size, 0.0)}


def _learn(m, size, ratio, node="n1", probe=None, times=1):
    for _ in range(times):
        m.learn_one({"block_size": size, "node_id": node,
                     "probe_ratio": ratio if probe is None else probe}, _costs(size, ratio))


def test_a_codec_model_pickled_with_numpy_cells_loads_and_decides_as_it_did():
    """``tests/data/codec_model_53fd258.pkl`` is a chooser pickled by the code of commit
    53fd258 (numpy cells and running costs), with the choices and policy it gave then."""
    import dataclasses
    import pickle
    from pathlib import Path

    data = Path(__file__).parent / "data"
    model = pickle.loads((data / "codec_model_53fd258.pkl").read_bytes())
    then = json.loads((data / "codec_model_53fd258.json").read_text())
    for (size, node, probe), answer in zip(then["asks"], then["answers"]):
        assert list(dataclasses.astuple(model.choose(size, node, probe))) == answer
    assert json.loads(json.dumps(model.policy().as_dict())) == then["policy"]
    model.learn_one({"block_size": 65536, "node_id": "n1", "probe_ratio": 0.3},
                    {"zstd-9": (20000, 900.0), "lz4": (33000, 60.0), "none": (65536, 0.0)})
    assert model.n_updates == 401


def test_codec_choice_follows_price_and_size():
    cheap_cpu = CodecCostModel(cpu_bytes_per_us=1.0)
    dear_cpu = CodecCostModel(cpu_bytes_per_us=100.0)
    for m in (cheap_cpu, dear_cpu):
        _learn(m, 65536, 0.4, times=100)
    assert cheap_cpu.predict_one({"block_size": 65536}) == "zstd-9"  # bytes dominate
    assert dear_cpu.predict_one({"block_size": 65536}) in ("lz4", "none")  # CPU dominates


def test_a_nodes_recent_blocks_tell_how_its_next_one_compresses():
    m = CodecCostModel(cpu_bytes_per_us=20.0)
    for _ in range(150):  # node "text" stores compressible blocks, node "media" does not
        _learn(m, 16384, 0.3, node="text")
        _learn(m, 16384, 1.0, node="media")
    assert (m.choose(16384, "text").algorithm, m.choose(16384, "media").algorithm) == ("lz4", "none")
    # one node storing long files of both kinds in turn: what its last block was like tells
    # (a wrong guess at each change of file costs less than any one codec for all)
    for _ in range(8):
        for ratio in (0.3, 1.0):
            _learn(m, 16384, ratio, node="mixed", times=50)
    after_media = m.choose(16384, "mixed")
    _learn(m, 16384, 0.3, node="mixed")
    after_text = m.choose(16384, "mixed")
    assert after_text.expert == after_media.expert == "recent"
    assert (after_text.algorithm, after_media.algorithm) == ("lz4", "none")
    assert m.recent("mixed") == pytest.approx(0.45, abs=0.01)


def test_the_probe_is_read_only_where_it_pays_for_itself():
    # half the blocks compress well, half not at all, with nothing but the probe to tell
    rng = random.Random(0)

    def run(probe_us):
        m = CodecCostModel(cpu_bytes_per_us=5.0, probe_us=probe_us)
        for _ in range(600):
            _learn(m, 262144, rng.choice([0.3, 1.0]), node=f"n{rng.random()}")
        return m

    assert run(probe_us=5.0).reads_probe(262144)  # 25 bytes for a 256 KiB decision
    assert not run(probe_us=100_000.0).reads_probe(262144)  # dearer than any mistake
    m = run(probe_us=5.0)
    choice = m.choose(262144, "new-node", probe=lambda: 1.0)
    assert choice.probed and choice.algorithm == "none" and choice.selection_us >= 5.0
    unprobed = m.choose(262144, "new-node")  # without the probe: a rule that does not read it
    assert not unprobed.probed and unprobed.expert != "probe"


def test_where_nothing_clever_pays_off_the_best_fixed_codec_leads():
    m = CodecCostModel(cpu_bytes_per_us=1.0, lookup_us=50.0)  # a rule costs 50 bytes to apply
    for i in range(300):
        _learn(m, 4096, 0.4, node=f"n{i}")
    choice = m.choose(4096, "n1")
    assert choice.expert == "fixed:zstd-9" and choice.selection_us == 0.0


def test_new_codec_names_join_the_menu():
    m = CodecCostModel(cpu_bytes_per_us=1.0)
    _learn(m, 65536, 0.5, times=20)
    for _ in range(200):
        m.learn_one({"block_size": 65536, "node_id": "n1"},
                    {**_costs(65536, 0.5), "xz-6": (1000, 10.0)})
    assert "xz-6" in m.codecs and m.predict_one({"block_size": 65536}) == "xz-6"


def test_compiled_policy_agrees_with_the_model():
    m = CodecCostModel(cpu_bytes_per_us=5.0)
    rng = random.Random(1)
    for i in range(800):
        ratio = rng.choice([0.2, 0.5, 0.9])
        _learn(m, rng.choice([4096, 65536, 262144]), ratio, node=f"n{i % 7}")
    policy = m.policy()
    for size in (4096, 65536, 262144):
        for node in ("n1", "n2", "n3"):
            for probe in (0.21, 0.52, 0.93):
                want = m.choose(size, node, probe)
                got, probed = policy.choose(size, m.recent(node), probe)
                assert (got, probed) == (want.algorithm, want.probed)


def test_an_attached_net_competes_as_an_expert():
    class Net:
        version = "v1"

        def predict(self, features):
            return {"algorithm": "zstd-9"}

    m = CodecCostModel(cpu_bytes_per_us=1.0)
    _learn(m, 65536, 0.5, times=50)
    m.attach_net(Net(), forward_us=20.0)  # no gate evidence: starts as the worst expert
    assert m.experts[-1] == "net"
    assert m.choose(65536, "n1", 0.5, {"size_log2": 16.0}).expert != "net"
    m.attach_net(Net(), forward_us=20.0, relative_cost=0.5)  # the gate found it twice as cheap
    assert m.choose(65536, "n1", 0.5, {"size_log2": 16.0}).expert == "net"
    assert m.choose(65536, "n1").expert != "net"  # without its inputs it cannot answer
    state = m.__getstate__()
    assert state["net"] is None and "net" not in state["experts"]
    m.attach_net(None, 0.0)
    assert "net" not in m.experts


# -- network ---------------------------------------------------------------------------------
def _logged_rounds(opt, n_rounds, sizes, losses, seed=0):
    from pakit_stream.replay.gossip import broadcast

    rng = np.random.default_rng(seed)
    for _ in range(n_rounds):
        n, loss = int(rng.choice(sizes)), float(rng.choice(losses))
        mode, f, t, pull = opt.random_action(rng)
        s = broadcast(n, f, t, loss, rng, mode=mode, pull=pull)
        opt.learn_round(n, 50.0, loss, f, t, s.coverage, s.payload, mode, pull, s.control)


def test_mean_field_tracks_push_and_push_pull():
    from pakit_stream.learners.network import mean_field

    short, payload = mean_field(10_000, 6, 10, 0.0)
    assert short == pytest.approx(math.exp(-6 * (1 - short)), rel=0.05)  # 1 - c = e^(-f c)
    assert payload == pytest.approx(6 * (1 - short), rel=0.01)
    lossy, _ = mean_field(10_000, 6, 10, 0.5)
    assert lossy > short  # loss thins the fanout
    little, _ = mean_field(10_000, 1, 3, 0.0)
    pulled, more = mean_field(10_000, 1, 3, 0.0, "push-pull", 14)
    assert little > 0.99 and pulled < 1e-3 and 1 < more < 1.5  # about a payload per node


def test_gossip_learner_picks_the_cheapest_setting_that_reaches_the_target():
    """Learned from logged random broadcasts: it must pick a setting that really reaches
    99.5% and costs less than push 6/10, in a network size it never saw."""
    from pakit_stream.replay.gossip import broadcast

    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 1500, sizes=(50, 100, 400, 800), losses=(0.0, 0.05))
    hint = opt.predict({"network_size": 200, "avg_latency_ms": 50.0, "message_loss_rate": 0.02})
    assert hint["source"] == "learned" and hint["expected_coverage"] >= 0.995
    rng = np.random.default_rng(9)
    runs = [broadcast(200, hint["fanout"], hint["ttl"], 0.02, rng, mode=hint["mode"],
                      pull=hint["pull_rounds"]) for _ in range(200)]
    assert np.mean([r.coverage for r in runs]) >= 0.99
    cost = np.mean([r.payload + opt.control_cost * r.control for r in runs]) / 200
    assert cost < 0.7 * 6  # push 6/10 sends six per node
    assert hint["expected_payload_per_node"] == pytest.approx(
        np.mean([r.payload for r in runs]) / 200, rel=0.35)


def test_gossip_choice_weighs_every_action_as_expect_does():
    """The hint scores all actions at once (numpy); it must pick what scoring them one by one
    with :meth:`expect` picks."""
    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 600, sizes=(50, 200, 1000), losses=(0.0, 0.1))
    goal = math.log10(1 - opt.coverage_target)
    for n, loss in ((80, 0.0), (300, 0.05), (1500, 0.1)):
        scored = [(opt.expect(n, 50.0, loss, a), a) for a in opt.actions]
        feasible = [(e["cost_per_node"], a) for e, a in scored if e["log10_shortfall_bound"] <= goal]
        want = min(feasible)[1] if feasible else min(
            (e["log10_shortfall"], a) for e, a in scored)[1]
        assert opt._choose(n, 50.0, loss)[0] == want


def test_gossip_learner_answers_only_near_networks_it_has_seen():
    """A mode's models extrapolate badly far from their data: a network four times larger
    than any seen gets the fixed rule, and exploring never picks a setting the models expect
    to fall short there."""
    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 600, sizes=(50, 100), losses=(0.0, 0.02))
    ask = {"avg_latency_ms": 50.0, "message_loss_rate": 0.02}
    assert opt.predict({"network_size": 150, **ask})["source"] == "learned"
    assert opt.predict({"network_size": 800, **ask})["source"] == "fallback"
    goal = math.log10(1 - opt.coverage_target)
    for _ in range(30):
        action = opt._explore(100, 50.0, 0.02)
        assert opt.expect(100, 50.0, 0.02, action)["log10_shortfall"] <= goal
    # a target nothing is expected to reach: explore near the surest settings only
    opt.coverage_target = 1 - 1e-12
    surest = min(opt.expect(100, 50.0, 0.02, a)["log10_shortfall"] for a in opt.actions)
    for _ in range(30):
        action = opt._explore(100, 50.0, 0.02)
        assert opt.expect(100, 50.0, 0.02, action)["log10_shortfall"] <= surest + math.log10(3)


def test_a_gossip_learner_from_before_support_was_counted_keeps_learning():
    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 200, sizes=(100,), losses=(0.0,))
    state = dict(opt.__dict__)
    del state["_support"], state["min_support"]  # as an older checkpoint pickled it
    del state["_explorations"]  # older still than kept explorations
    old = NetworkOptimizer.__new__(NetworkOptimizer)
    old.__setstate__(state)
    old.learn_round(100, 50.0, 0.0, 6, 10, 1.0, 600)
    assert old.predict({"network_size": 100})["source"] == "learned"
    old.epsilon = 1.0
    assert old.predict({"network_size": 100}, explore=True)["source"] == "explore"


def test_gossip_models_pickled_by_river_load_as_the_same_posterior():
    """Checkpoints from before the dense regressions hold River's own models, all rounds
    learned and no queue: they load as the same posterior, and learn on from there."""
    from river import linear_model

    from pakit_stream.learners.network import _PAYLOAD_FEATURES, _SHORT_FEATURES

    rng = random.Random(3)
    opt = NetworkOptimizer(epsilon=0.0)
    state = dict(opt.__dict__)
    for models, names in (("_shortfall", _SHORT_FEATURES), ("_payload", _PAYLOAD_FEATURES)):
        state[models] = {}
        for mode in ("push", "push-pull"):
            river = state[models][mode] = linear_model.BayesianLinearRegression(alpha=1.0, beta=4.0)
            for _ in range(200):
                x = {name: rng.uniform(-2, 2) for name in names}
                river.learn_one(x, sum(x.values()) + rng.gauss(0, 0.1))
    rivers = {k: copy.deepcopy(state[k]) for k in ("_shortfall", "_payload")}
    del state["_queue"]
    old = NetworkOptimizer.__new__(NetworkOptimizer)
    old.__setstate__(state)
    for key, names in (("_shortfall", _SHORT_FEATURES), ("_payload", _PAYLOAD_FEATURES)):
        x = {name: rng.uniform(-2, 2) for name in names}
        for mode in ("push", "push-pull"):
            ours, river = getattr(old, key)[mode], rivers[key][mode]
            assert ours.predict_one(x) == pytest.approx(river.predict_one(x), rel=1e-9)
            assert ours.predict_one(x, with_dist=True).sigma == pytest.approx(
                river.predict_one(x, with_dist=True).sigma, rel=1e-9)
    old.learn_round(100, 50.0, 0.0, 6, 10, 1.0, 600)
    old.learn_queued()
    assert old._queue == {"push": [], "push-pull": []}


def test_gossip_rounds_queued_when_pickled_are_learned_after_loading():
    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 300, sizes=(50, 200), losses=(0.0, 0.05))
    assert 0 < sum(map(len, opt._queue.values())) < 256  # some rounds wait to be learned
    again = copy.deepcopy(opt)
    ask = {"network_size": 120, "avg_latency_ms": 50.0, "message_loss_rate": 0.02}
    assert again.predict(ask) == opt.predict(ask)
    assert again.expect(120, 50.0, 0.02, ("push", 6, 10, 0)) == opt.expect(
        120, 50.0, 0.02, ("push", 6, 10, 0))


def test_gossip_rounds_outside_the_contract_are_refused_and_learn_nothing():
    opt = NetworkOptimizer(epsilon=0.0)
    _logged_rounds(opt, 60, sizes=(100,), losses=(0.0,))
    before = copy.deepcopy(opt)
    for bad in ({"avg_latency_ms": float("nan")}, {"message_loss_rate": 1e200},
                {"ttl": 10**9}, {"fanout": float("inf")}):
        round_ = {"network_size": 100, "avg_latency_ms": 50.0, "message_loss_rate": 0.0,
                  "fanout": 6, "ttl": 10, "coverage": 1.0, "messages_sent": 600, **bad}
        with pytest.raises(UsageError, match="outside the contract"):
            opt.learn_round(**round_)
    assert opt.rounds == before.rounds and opt._queue == before._queue
    ask = {"network_size": 100, "avg_latency_ms": 50.0, "message_loss_rate": 0.0}
    assert opt.predict(ask) == before.predict(ask)


def test_dense_regression_learns_rows_a_cholesky_cannot_factor():
    """A feature at 1e7 in nearly collinear rows: the batch's joint covariance is not positive
    definite in floating point, so its rows are learned one at a time instead."""
    from pakit_stream.learners.network import DenseBayesianRegression

    rng = np.random.default_rng(0)
    model = DenseBayesianRegression(tuple("abcdef"), beta=4.0)
    one_by_one = 0
    learn_row = model._learn_row

    def counted(x, y):
        nonlocal one_by_one
        one_by_one += 1
        return learn_row(x, y)

    model._learn_row = counted
    for _ in range(20):
        X = np.tile([2.3, 0.0, 0.05, -2.6, -2.6, 0.0], (64, 1))
        X[:, 5] = 1e7 * (1 + 1e-9 * rng.standard_normal(64))
        errors = model.learn_rows(X, X @ [0.1, 0, 0, 1, 0, 1e-3] + rng.normal(0, 0.1, 64))
        assert np.isfinite(errors).all() and np.isfinite(model.weights).all()
    assert one_by_one >= 64
    with pytest.raises(UsageError):
        model.learn_rows([[np.nan] * 6], [1.0])


def test_gossip_learner_falls_back_until_it_has_seen_enough_rounds():
    opt = NetworkOptimizer(min_rounds=50)
    _logged_rounds(opt, 49, sizes=(100,), losses=(0.0,))
    assert opt.predict({"network_size": 100})["source"] == "fallback"
    _logged_rounds(opt, 1, sizes=(100,), losses=(0.0,))
    assert opt.predict({"network_size": 100})["source"] == "learned"
    with pytest.raises(ValueError, match="unknown gossip mode"):
        opt.learn_round(100, 1.0, 0.0, 6, 10, 1.0, 600, mode="flood")


def test_exploration_rate_is_respected():
    opt = NetworkOptimizer(epsilon=0.5, seed=1, min_rounds=1, min_support=1)
    opt.learn_round(100, 20.0, 0.0, 3, 5, 1.0, 300)
    sources = [opt.predict({"network_size": 100}, explore=True)["source"] for _ in range(400)]
    assert 0.4 < sources.count("explore") / 400 < 0.6
    assert {opt.predict({"network_size": 100})["source"] for _ in range(50)} == {"learned"}


def test_exploring_answers_draw_from_settings_kept_until_the_models_move_on():
    opt = NetworkOptimizer(epsilon=1.0, seed=3)
    _logged_rounds(opt, 400, sizes=(100,), losses=(0.02,))
    ask = {"network_size": 100, "avg_latency_ms": 50.0, "message_loss_rate": 0.02}
    options = opt._exploring(100, 50.0, 0.02)
    assert 1 < len(options) < len(opt.actions)
    calls = 0
    real = opt._exploring

    def counted(*args):
        nonlocal calls
        calls += 1
        return real(*args)
    opt._exploring = counted
    answers = [opt.predict(ask, explore=True) for _ in range(200)]
    assert {a["source"] for a in answers} == {"explore"}
    drawn = {(a["mode"], a["fanout"], a["ttl"], a["pull_rounds"]) for a in answers}
    assert drawn <= set(options) and len(drawn) > 1
    assert calls == 1  # scored once, not once per exploring answer
    _logged_rounds(opt, 100, sizes=(100,), losses=(0.02,), seed=1)
    opt.predict(ask, explore=True)
    assert calls == 2  # the models moved on: scored again


def test_guide_episodes_with_next_state():
    opt = NetworkOptimizer(gamma=0.5, epsilon=0.0)
    opt.train([{"state": (1, 2, 0, 1), "action": (6, 10), "reward": 0.8, "next_state": (1, 2, 0, 2)},
               {"state": (1, 2, 0, 2), "action": (4, 6), "reward": 1.0}])
    assert opt.predict({"state": (1, 2, 0, 2)})["fanout"] == 4


def test_off_grid_actions_snap_to_the_nearest_grid_point():
    assert NetworkOptimizer().snap((7, 11)) == (6, 10)


# -- dedup -------------------------------------------------------------------------------------
def _b_bit(j: float) -> float:
    """What the index reports for a signature pair agreeing on a share ``j`` of its slots
    (b-bit estimate, no accidental agreement)."""
    return (j - 1 / 256) / (1 - 1 / 256)


def test_lsh_bands_favour_recall_at_the_threshold():
    from datasketch.lsh import _optimal_param

    dedup = DeduplicationOptimizer(threshold=0.7)
    assert (dedup.bands, dedup.rows) == (20, 6) == _optimal_param(0.7, 128, 0.1, 0.9)
    assert 1 - (1 - 0.8 ** dedup.rows) ** dedup.bands > 0.997


def test_lsh_finds_near_duplicates_ranked_by_jaccard():
    dedup = DeduplicationOptimizer(threshold=0.5)
    dedup.train([ev.fingerprint(0), ev.fingerprint(1, base=0, edits=8),
                 ev.fingerprint(2, base=0, edits=40), ev.fingerprint(3)])
    found = dedup.find_similar_blocks(ev.block_hash(100_000), top_k=5)
    assert [f["block_hash"] for f in found] == [ev.block_hash(100_001), ev.block_hash(100_002)]
    assert found[0]["jaccard"] == pytest.approx(_b_bit(1 - 8 / 128), abs=2 / 128)
    assert dedup.find_similar_blocks(ev.block_hash(123)) == []
    assert dedup.find_similar_blocks("not a hash") == []


def test_lsh_verifies_candidates_at_the_query_threshold():
    dedup = DeduplicationOptimizer(threshold=0.5)
    dedup.train([ev.fingerprint(0), ev.fingerprint(1, base=0, edits=8),
                 ev.fingerprint(2, base=0, edits=40)])
    base = ev.fingerprint(0)["minhash"]
    at_9 = dedup.query(base, top_k=10, min_jaccard=0.9)
    assert [f["block_hash"] for f in at_9] == [ev.block_hash(100_000), ev.block_hash(100_001)]
    assert [f["jaccard"] for f in at_9] == [1.0, pytest.approx(_b_bit(120 / 128), abs=2 / 128)]
    assert len(dedup.query(base, top_k=10)) == 3  # default: the index threshold, 0.5
    assert dedup.predict({"block_hash": ev.block_hash(100_000), "min_jaccard": 0.9}) == at_9[1:]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            dedup.query(base, min_jaccard=bad)


def test_lsh_capacity_evicts_the_oldest():
    dedup = DeduplicationOptimizer(capacity=10)
    for i in range(25):
        dedup.learn_record(ev.fingerprint(i))
    assert len(dedup) == 10 and dedup.evictions == 15
    assert [i for i in range(25) if ev.block_hash(100_000 + i) in dedup] == list(range(15, 25))
    # an evicted block's signature is gone from the bands too: its own copy finds nothing
    assert dedup.query(ev.fingerprint(3)["minhash"]) == []
    assert dedup.query(ev.fingerprint(20)["minhash"])[0]["block_hash"] == ev.block_hash(100_020)


def test_lsh_reinserting_a_block_refreshes_it_instead_of_duplicating():
    dedup = DeduplicationOptimizer(capacity=3)
    for i in (0, 1, 2, 0, 3):
        dedup.learn_record(ev.fingerprint(i))
    assert ev.block_hash(100_000) in dedup and ev.block_hash(100_001) not in dedup
    assert dedup.n_updates == 4 and len(dedup.query(ev.fingerprint(0)["minhash"], 10)) == 1


def test_lsh_a_recently_seen_block_costs_no_slot_when_seen_again():
    dedup = DeduplicationOptimizer(capacity=10)
    for i in list(range(10)) + [9, 8, 9, 10]:  # 8 and 9 are in the newer half: stay put
        dedup.learn_record(ev.fingerprint(i))
    assert [i for i in range(11) if ev.block_hash(100_000 + i) in dedup] == list(range(1, 11))
    assert dedup.evictions == 1


def test_lsh_work_per_query_is_bounded_with_30000_identical_fingerprints():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, 128, dtype=np.uint32)
    dedup = DeduplicationOptimizer(capacity=40_000, max_candidates=100, max_chain=50)
    n = 30_000
    dedup.add_many([f"{i:064x}" for i in range(n)], np.tile(sig, (n, 1)))
    found = dedup.query(sig, top_k=5)
    assert dedup.last_query_links <= dedup.bands * dedup.max_chain
    assert 0 < dedup.last_query_candidates <= dedup.max_candidates
    assert dedup.capped_queries == 1
    # what a capped query sees are the newest entries
    assert [f["block_hash"] for f in found] == [f"{i:064x}" for i in range(n - 1, n - 6, -1)]
    assert {f["jaccard"] for f in found} == {1.0}
    # signatures that collide in one band only: that band's walk is cut, the rest is empty
    colliding = rng.integers(0, 2**32, (n, 128), dtype=np.uint32)
    colliding[:, :dedup.rows] = sig[:dedup.rows]
    dedup.add_many([f"{n + i:064x}" for i in range(n)], colliding)
    probe = rng.integers(0, 2**32, 128, dtype=np.uint32)
    probe[:dedup.rows] = sig[:dedup.rows]
    assert dedup.query(probe) == [] and dedup.capped_queries == 2
    assert dedup.last_query_links <= dedup.bands * dedup.max_chain
    assert dedup.last_query_candidates <= dedup.max_candidates


def _index_state(d):
    return [d._heads, d._next, d._bh, d._sig8, d._raw, d._stamp, d._alive, len(d), d.evictions,
            d.n_updates]


def test_lsh_batch_insert_is_the_same_as_one_by_one():
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 2**32, (40, 128), dtype=np.uint32)
    for i in range(20, 40):  # near-duplicates of the first 20
        pool[i] = pool[i - 20]
        pool[i, rng.choice(128, 12, replace=False)] = rng.integers(0, 2**32, 12)
    hashes = [ev.block_hash(i) for i in range(40)]
    one, many = DeduplicationOptimizer(capacity=17), DeduplicationOptimizer(capacity=17)
    stream = rng.integers(0, 40, 400)  # repeats: re-seen blocks, in both halves of the ring
    for start in range(0, 400, 37):
        rows = stream[start:start + 37]
        for i in rows:
            one.add(hashes[i], pool[i])
        many.add_many([hashes[i] for i in rows], pool[rows])
        for a, b in zip(_index_state(one), _index_state(many)):
            np.testing.assert_array_equal(a, b)
    for q in range(40):
        assert one.query(pool[q], top_k=50) == many.query(pool[q], top_k=50)


def test_lsh_batch_insert_checks_every_row_before_changing_anything():
    dedup = DeduplicationOptimizer()
    sigs = np.random.default_rng(2).integers(0, 2**32, (3, 128), dtype=np.uint32)
    dedup.add(ev.block_hash(0), sigs[0])
    for hashes, rows in (([ev.block_hash(1), "xyz", ev.block_hash(3)], sigs),
                         ([ev.block_hash(1), ev.block_hash(2)], [sigs[1], sigs[2][:64]]),
                         ([ev.block_hash(1), ev.block_hash(2)], [sigs[1], [-1] * 128]),
                         ([ev.block_hash(1)], sigs)):
        with pytest.raises(ValueError):
            dedup.add_many(hashes, rows)
        assert len(dedup) == 1 and dedup.n_updates == 1


def test_lsh_envelope_with_a_bad_fingerprint_rejects_only_that_event():
    from pakit_stream.events.schema import BlockFingerprint
    from pakit_stream.pipeline import Pipeline
    from pakit_stream.settings import Settings

    pipeline = Pipeline(Settings())
    events = [BlockFingerprint(node_id="node-a", ts=1.0, block_hash=ev.block_hash(i),
                               minhash=ev.fingerprint(i)["minhash"][: 64 if i == 2 else 128])
              for i in range(5)]
    rejects = pipeline.apply("pakit.fingerprints", events)
    assert [r.index for r in rejects] == [2] and "128 values" in rejects[0].reason
    assert len(pipeline.dedup) == 4 and pipeline.applied["pakit.fingerprints"] == 4


def test_lsh_similar_hint_passes_min_jaccard_through():
    from pakit_stream.pipeline import Pipeline
    from pakit_stream.serving.hints import BadRequest, HintService
    from pakit_stream.settings import Settings

    pipeline = Pipeline(Settings())
    pipeline.dedup.train([ev.fingerprint(0), ev.fingerprint(1, base=0, edits=4),
                          ev.fingerprint(2, base=0, edits=30)])
    hints = HintService(pipeline)
    block = ev.block_hash(100_000)
    assert len(hints.similar(block, "5")["similar"]) == 2  # the index threshold, 0.7
    strict = hints.similar(block, "5", "0.9")
    assert [s["block_hash"] for s in strict["similar"]] == [ev.block_hash(100_001)]
    for bad in ("0", "1.5", "nan", "x", "-0.2"):
        with pytest.raises(BadRequest, match="min_jaccard"):
            hints.similar(block, "5", bad)


def test_lsh_checkpoint_round_trip_gives_the_same_answers(tmp_path):
    rng = np.random.default_rng(3)
    pool = rng.integers(0, 2**32, (300, 128), dtype=np.uint32)
    pool[150:] = pool[:150]
    for i in range(150, 300):
        pool[i, rng.choice(128, 20, replace=False)] = rng.integers(0, 2**32, 20)
    dedup = DeduplicationOptimizer(ModelConfig(key=KEY), capacity=200)
    dedup.add_many([ev.block_hash(i) for i in range(300)], pool)
    for i in (120, 250, 120):  # re-seen: one moves, leaving a dead link behind
        dedup.add(ev.block_hash(i), pool[i])
    dedup.save(tmp_path / "d.pkl")
    # the live entries (32 + 128 + 4 × bands + 8 bytes each), not the band arrays
    size = (tmp_path / "d.pkl").stat().st_size
    assert size < len(dedup) * (32 + 128 + 4 * dedup.bands + 8) + 5_000
    restored = DeduplicationOptimizer(ModelConfig(key=KEY)).load(tmp_path / "d.pkl")
    # 120 moved to the front (it was in the older half) and its old slot is a dead link
    assert len(restored) == len(dedup) == 199 and restored.evictions == dedup.evictions
    for q in range(300):
        assert restored.query(pool[q], top_k=20) == dedup.query(pool[q], top_k=20)
        h = ev.block_hash(q)
        assert (h in restored) == (h in dedup)
    # and it goes on evicting the oldest first
    dedup.add(ev.block_hash(1000), pool[0])
    restored.add(ev.block_hash(1000), pool[0])
    assert [q for q in range(300) if ev.block_hash(q) in restored] == [
        q for q in range(300) if ev.block_hash(q) in dedup]


def test_lsh_rejects_malformed_signatures():
    with pytest.raises(ValueError):
        DeduplicationOptimizer().add(ev.block_hash(1), np.arange(64))
    with pytest.raises(ValueError):
        DeduplicationOptimizer().add(ev.block_hash(1), [2**32] * 128)
    with pytest.raises(ValueError):
        DeduplicationOptimizer().add("ab" * 31, np.arange(128))


# -- successors ----------------------------------------------------------------------------------
def test_successor_table_is_bounded_and_per_node():
    table = SuccessorTable(capacity=4, max_successors=2)
    for node in ("n1", "n2"):
        for b in ["a", "b", "c"]:
            table.observe(node, b)
    assert table.successors("a") == ["b"]
    for i in range(20):
        table.observe("n3", f"x{i}")
    assert len(table) == 4
    for succ in ("p", "q", "r"):
        table.observe("n4", "hub")
        table.observe("n4", succ)
    assert len(table.successors("hub", k=10)) == 2


# -- prefetcher ----------------------------------------------------------------------------------
def _h(i: int) -> str:
    return f"{i:064x}"


def _read(p: Prefetcher, node: str, index: int, obj: str = "o" * 64, count: int = 1) -> None:
    p.observe(node, _h(index), obj, index, count)


def test_prefetcher_follows_a_stride_and_names_hashes_it_has_seen():
    p = Prefetcher()
    for i in range(200):
        _read(p, "n", 1000 + 3 * (i % 50))  # a loop over 50 chunks, step 3
    _read(p, "n", 1000 + 3 * 10)
    picks = p.propose("n", k=2)
    assert [x.chunk_index for x in picks] == [1033, 1036]
    assert picks[0].block_hash == _h(1033)  # read before: its hash is known
    assert all(x.confidence >= p.min_confidence for x in picks)


def test_prefetch_proposals_continue_from_the_position_the_node_gives():
    """A node's telemetry reaches the learner after it asks: proposals continue its stream
    from where it says it reads now, through the hint API too."""
    from pakit_stream.pipeline import Pipeline
    from pakit_stream.serving.hints import BadRequest, HintService
    from pakit_stream.settings import Settings

    p, obj = Prefetcher(), "ab" * 32
    for i in range(200):
        _read(p, "n", 1000 + 3 * (i % 50), obj)
    assert 1150 in [x.chunk_index for x in p.propose("n", k=2)]  # after 1147 (seen last)
    assert [x.chunk_index for x in p.propose("n", k=2, position=(obj, 1060))] == [1063, 1066]
    pipeline = Pipeline(Settings())
    pipeline.prefetcher = p
    hints = HintService(pipeline)
    ask = {"node_id": "n", "k": 2, "object_id": obj, "chunk_index": 1060}
    answer = hints.prefetch(json.dumps(ask).encode())
    assert [x["chunk_index"] for x in answer["proposals"]] == [1063, 1066]
    with pytest.raises(BadRequest, match="come together"):
        hints.prefetch(json.dumps({"node_id": "n", "chunk_index": 3}).encode())


def test_prefetcher_continues_interleaved_sequential_runs():
    """Two files read back to back in turns: each read continues the other file's run, so
    the learner proposes the next chunk of the file just read, not a step between files."""
    p = Prefetcher()
    a, b = "a" * 64, "b" * 64
    for i in range(300):
        _read(p, "n", 10_000 + i, obj=a)
        _read(p, "n", 20_000 + 4 * i, obj=b, count=4)  # reads of four chunks each
    nxt = p.propose("n", k=2)
    assert [(x.object_id, x.chunk_index) for x in nxt] == [(b, 21_200), (b, 21_204)]


def test_prefetcher_proposes_nothing_where_nothing_comes_true():
    """Random reads: every kind of proposal fails, its confidence falls under the threshold,
    and the learner stops prefetching (the cache is left to LRU)."""
    rng = random.Random(0)
    p = Prefetcher(min_confidence=0.1)
    for _ in range(3000):
        _read(p, "n", rng.randrange(1_000_000))
    served = 0
    for _ in range(500):
        _read(p, "n", rng.randrange(1_000_000))
        served += bool(p.propose("n", k=5))
    assert served < 25
    cal = p.calibration()
    assert cal["next"]["read_share"] < 0.01 and cal["stride"]["read_share"] < 0.01


def test_prefetcher_learns_hash_successors_without_positions():
    p = Prefetcher()
    for _ in range(30):
        for i in (5, 9, 2, 7):
            p.observe("n", _h(i))
    assert [x.block_hash for x in p.propose("n", k=1)] == [_h(5)]
    assert p.propose("n", k=1)[0].chunk_index is None
    # a node the learner never saw asks with its recent reads
    asked = p.predict({"node_id": "other", "recent_accesses": [_h(9)], "k": 1})
    assert [x.block_hash for x in asked] == [_h(2)]


def test_prefetcher_prequential_score_counts_proposals_made_before_each_read():
    reads = [("n", _h(i % 40), "o" * 64, i % 40, 1) for i in range(400)]
    assert Prefetcher().score(reads, k=2) > 0.9  # a loop is predictable
    rng = random.Random(1)
    noise = [("n", _h(j), "o" * 64, j, 1) for j in (rng.randrange(10**9) for _ in range(400))]
    assert Prefetcher().score(noise, k=2) < 0.02


def test_prefetcher_open_proposals_of_an_older_checkpoint_are_still_scored():
    """A checkpoint from before proposals were grouped kept one (id, bucket) entry per bucket
    and the ids read apart: unread entries are scored as before, read ones not again."""
    from collections import deque

    from pakit_stream.learners.prefetch import _Outcomes

    a, b, c = ("next", 1, 2), ("stride", 7, 9, False), ("next", 2, 2)
    key, other = ("o", 5), ("o", 6)
    out = _Outcomes.__new__(_Outcomes)
    out.__setstate__((None, {"clock": 3, "ids": 3, "read": {3},
                             "open": {key: [(1, a), (2, b)], other: []},
                             "queue": deque([(4, 1, key), (4, 2, key), (4, 3, other)])}))
    p = Prefetcher()
    p._outcomes["n"] = out
    p.observe("n", "h5", "o", 5)  # reads what was proposed as a and b
    assert p._calibration[a] == [1.0, 1.0] and p._calibration[b] == [1.0, 1.0]
    assert c not in p._calibration and out.clock == 4
    for i in range(p.horizon + 2):  # every old entry expires: none is counted again
        p.observe("n", f"x{i}", "q", 100 * i)
    assert p._calibration[a] == [1.0, 1.0] and p._calibration[b] == [1.0, 1.0]
    assert all(expires > 4 for expires, _, _ in out.queue)
    assert sum(len(groups) for groups in out.open.values()) == len([g for _, _, g in out.queue if g])


def test_prefetcher_is_bounded():
    p = Prefetcher(max_nodes=3, max_streams=4, max_positions=10, successor_capacity=10,
                   max_scored_nodes=2, max_profiled_nodes=2)
    for i in range(100):
        _read(p, f"node-{i % 7}", i, obj=f"{i % 9:064x}")
    assert len(p._streams) <= 4 and len(p._last) <= 3 and len(p._cached) <= 3
    assert len(p._outcomes) <= 2  # proposals are scored for the most recently active nodes
    assert len(p._reuse) <= 2  # and their reuse profiled
    assert len(p._hash_at) <= 10 and len(p._position) <= 10 and len(p.successors) <= 10
    open_entries = sum(len(o.queue) for o in p._outcomes.values())
    assert open_entries <= 2 * p.horizon * 4 * p.max_k  # nodes x horizon x sources x ranks


def test_reuse_profile_gives_the_eviction_hazard_of_uniform_reads():
    """Reads drawn uniformly from N blocks: the block at depth C of an LRU cache is the next
    read with chance 1/N, and a read deeper than it comes with chance (N - C)/N, so the hazard
    at depth C is about 1/(N - C + 1)."""
    rng = random.Random(2)
    r = ReuseProfile(max_tracked=256)
    for _ in range(60_000):
        r.observe(_h(rng.randrange(2000)))
    assert r.rate < 0.2  # a sample of the 2000 blocks is followed, not all of them
    for depth in (200, 1000, 1500):
        assert 0.5 < r.hazard(depth) * (2000 - depth + 1) < 2.0


def test_reuse_profile_is_bounded_and_silent_until_it_has_seen_enough():
    r = ReuseProfile(max_tracked=32, min_samples=64)
    r.observe(_h(1))
    assert r.hazard(10) is None
    for i in range(20_000):
        r.observe(_h(i))
    assert len(r._last) <= 32 and len(r._largest) <= 32
    assert r.hazard(10) == 0.0  # every read is a first read: evicting costs nothing


def test_prefetch_threshold_is_what_a_prefetch_costs_the_nodes_cache():
    """Uniform reads of 200 blocks: a successor proposal comes true within the horizon about
    8% of the time. That is worth a prefetch into a cache of 100 blocks (evicting its LRU block
    costs about 1% of a hit), not into one of 198 (about 33%), and not under the 0.1 served to
    a node that gives no cache size."""
    rng = random.Random(3)
    p = Prefetcher(min_confidence=0.1)
    for _ in range(40_000):
        p.observe("n", _h(rng.randrange(200)))
    assert p.threshold("n") == 0.1
    assert p.threshold("n", 100) < 0.03 and p.threshold("n", 198) > 0.1
    assert p.propose("n", k=2, cache_blocks=100)
    assert not p.propose("n", k=2, cache_blocks=198) and not p.propose("n", k=2)
    assert p.predict({"node_id": "n", "k": 2, "cache_blocks": 100})


def test_a_prefetcher_scoring_a_sample_of_reads_still_proposes_after_every_read():
    every, sampled = Prefetcher(halflife=1e9), Prefetcher(score_every=4, halflife=1e9)
    for i in range(2000):
        _read(every, "n", 5 * i)
        _read(sampled, "n", 5 * i)
    scored = (sampled.calibration()["stride"]["scored"], every.calibration()["stride"]["scored"])
    assert 0.15 < scored[0] / scored[1] < 0.35  # about one read in four opens its proposals
    for i in range(2000, 2010):  # after a read whose proposals were not scored, too
        _read(sampled, "n", 5 * i)
        assert [x.chunk_index for x in sampled.propose("n", k=2)] == [5 * i + 5, 5 * i + 10]


def test_a_restored_prefetcher_keeps_learning_and_proposing(tmp_path):
    p = Prefetcher(ModelConfig(key=KEY))
    for i in range(50):
        _read(p, "n", i)
    p.save(tmp_path / "p.pkl")
    restored = Prefetcher(ModelConfig(key=KEY)).load(tmp_path / "p.pkl")
    for i in range(50, 60):  # a restored learner reads on, as after a daemon restart
        _read(restored, "n", i)
    assert [x.chunk_index for x in restored.propose("n", k=2)] == [60, 61]


def test_a_proposal_counts_only_if_read_within_the_horizon():
    p = Prefetcher(horizon=1)
    for block in ("a", "b", "a", "x", "b"):  # b follows a two reads later: too late
        p.observe("n", _h(ord(block)))
    assert p.calibration()["successor"] == {"scored": 1.0, "read_share": 0.0}
    p.observe("n", _h(ord("a")))
    p.observe("n", _h(ord("b")))  # now b follows at once
    assert p.calibration()["successor"]["read_share"] > 0  # (b -> a and a -> b: two hits)


def test_a_node_without_positions_is_credited_for_blocks_proposed_by_position():
    p = Prefetcher()
    obj = "c" * 64
    for i in range(3):  # a node that sends positions makes them known
        p.observe("with", _h(i), obj, i)
    for _ in range(40):  # a node that sends none reads the same blocks, over and over
        for i in range(3):
            p.observe("without", _h(i))
    assert p.calibration()["successor"]["read_share"] > 0.9
    assert [x.block_hash for x in p.propose("without", k=1)] == [_h(0)]


def test_a_falling_stride_stops_at_the_start_of_the_object():
    p = Prefetcher()
    for index in (20, 17, 14, 11, 8, 5):
        _read(p, "n", index)
    assert all(x.chunk_index >= 0 for x in p.propose("n", k=8))
    assert [x.chunk_index for x in p.propose("n", k=1)] == [2]


def test_step_net_joins_the_learner_and_is_judged_inside_it(tmp_path):
    from pakit_stream.batch.prefetch import PrefetchEngine
    from pakit_stream.serving.prefetch import ServedPrefetchModel
    from pakit_stream.training import TrainingConfig

    # a stream whose steps cycle 1, 1, 5: the net learns the cycle from the step history
    index, reads = 0, []
    for i in range(900):
        index += (1, 1, 5)[i % 3]
        reads.append(("n", _h(index), "o" * 64, index, 1))
    assert delta_sequences((r[0], r[2], r[3]) for r in reads[:4]) == [["1", "5", "1"]]
    engine = PrefetchEngine(max_vocab_size=16)
    engine.train(delta_sequences((r[0], r[2], r[3]) for r in reads[:600]),
                 TrainingConfig(num_epochs=30, early_stopping_patience=30, learning_rate=1e-2))
    engine.save(tmp_path / "net.safetensors")
    net = ServedPrefetchModel(tmp_path / "net.safetensors")
    p = Prefetcher()
    p.net = net
    for r in reads[:600]:
        p.observe(*r)
    assert any(b[0] == "net" for _, buckets in p._cached["n"].values() for b in buckets)
    with_net = judge_net(net, reads[:600], reads[600:], k=1)
    without = judge_net(None, reads[:600], reads[600:], k=1)
    assert with_net > without + 0.1  # the stride alone misses every third step
