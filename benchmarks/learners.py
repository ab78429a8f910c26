"""What one update and one answer cost each online learner, in µs, measured in one run.

    python benchmarks/learners.py

Synthetic but shaped like the telemetry: fetches over 200 peers from 50 nodes (log-normal
latencies, 1% failures, whitelisted context); fingerprints with 5% near-duplicates; stored
blocks with every codec measured; reads from 32 nodes, each walking its files forward with
occasional jumps (positions carried); gossip rounds of random settings. Prints mean µs per call and writes
``benchmarks/results/learners.json``. Figures, not assertions: see the tests for behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from pakit_stream.learners.codec import CodecCostModel
from pakit_stream.learners.dedup import DeduplicationOptimizer
from pakit_stream.learners.network import NetworkOptimizer
from pakit_stream.learners.peers import PeerSelector
from pakit_stream.learners.prefetch import Prefetcher

HERE = Path(__file__).resolve().parent


def per_call_us(fn, items) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def peers(n: int, rng: random.Random) -> dict[str, float]:
    sel = PeerSelector(seed=0)
    names = [f"peer-{i}" for i in range(200)]
    nodes = [f"node-{i}" for i in range(50)]
    fetches = [(rng.choice(names), rng.random() > 0.01, rng.lognormvariate(5, 0.5),
                rng.choice(nodes), i * 0.01, {"network_load": rng.random(), "time_of_day": 0.5})
               for i in range(n)]
    learn = per_call_us(lambda f: sel.learn_fetch(f[0], f[1], f[2], 65536, f[5], f[3], f[4]),
                        fetches)
    asks = [(rng.sample(names, 6), rng.choice(nodes)) for _ in range(n // 10)]
    select = per_call_us(lambda a: sel.select(a[0], {"network_load": 0.3}, 65536, a[1],
                                              n * 0.01), asks)
    return {"peer_learn_fetch_us": learn, "peer_select_6_candidates_us": select}


def dedup(n: int, rng: np.random.Generator) -> dict[str, float]:
    sigs = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint32)
    for i in range(20, n, 20):  # 5% near-duplicates of an earlier block
        sigs[i] = sigs[int(rng.integers(0, i))]
        sigs[i, rng.choice(128, 19, replace=False)] = rng.integers(0, 2**32, 19, dtype=np.uint32)
    keys = [f"{i:064x}" for i in range(n)]
    one = DeduplicationOptimizer(capacity=n)
    single = per_call_us(lambda i: one.add(keys[i], sigs[i]), range(n))
    many = DeduplicationOptimizer(capacity=n)
    started = time.perf_counter()
    for i in range(0, n, 500):
        many.add_many(keys[i:i + 500], sigs[i:i + 500])
    batched = (time.perf_counter() - started) / n * 1e6
    query = per_call_us(lambda i: many.query(sigs[i], top_k=5), range(0, n, 20))
    return {"lsh_add_us": single, "lsh_add_many_us_per_entry": batched, "lsh_query_us": query}


def codec(n: int, rng: random.Random) -> dict[str, float]:
    model = CodecCostModel(cpu_bytes_per_us=5.0)
    blocks = []
    for i in range(n):
        size = rng.choice([4096, 16384, 65536, 262144])
        ratio = rng.choice([0.2, 0.4, 0.7, 1.0])
        costs = {c: (int(size * min(1.0, ratio + extra)), size * us)
                 for c, extra, us in (("zstd-1", 0.05, 0.004), ("zstd-3", 0.03, 0.006),
                                      ("zstd-9", 0.0, 0.03), ("lz4", 0.15, 0.001),
                                      ("snappy", 0.17, 0.001), ("brotli-4", 0.01, 0.012))}
        costs["none"] = (size, 0.0)
        blocks.append(({"block_size": size, "node_id": f"node-{i % 20}", "probe_ratio": ratio},
                       costs))
    learn = per_call_us(lambda b: model.learn_one(*b), blocks)
    choose = per_call_us(lambda b: model.choose(b[0]["block_size"], b[0]["node_id"],
                                                b[0]["probe_ratio"]), blocks[: n // 4])
    policy = model.policy()
    lookup = per_call_us(lambda b: policy.choose(b[0]["block_size"], 0.4, b[0]["probe_ratio"]),
                         blocks)
    return {"codec_learn_one_us": learn, "codec_choose_us": choose,
            "codec_compiled_rule_us": lookup}


def prefetch(n: int, rng: random.Random) -> dict[str, float]:
    learner = Prefetcher()
    nodes = [f"node-{i}" for i in range(32)]
    where = {node: [f"{rng.getrandbits(256):064x}", 0] for node in nodes}
    reads = []
    for _ in range(n):
        node = rng.choice(nodes)
        pos = where[node]
        if rng.random() < 0.05:  # another file, or a jump within this one
            pos[:] = [f"{rng.getrandbits(256):064x}", 0] if rng.random() < 0.5 else \
                [pos[0], pos[1] + rng.randrange(2, 500)]
        pos[1] += 1
        reads.append((node, f"{rng.getrandbits(256):064x}", pos[0], pos[1]))
    learn = per_call_us(lambda r: learner.observe(*r), reads)
    propose = per_call_us(lambda node: learner.propose(node, 5), nodes * (n // 320))
    sampled = Prefetcher(score_every=4)  # PAKIT_STREAM_PREFETCH_SCORE_EVERY=4
    learn_sampled = per_call_us(lambda r: sampled.observe(*r), reads)
    # what a read costs before any proposal is opened or scored (one read in 65,536 is)
    bare = Prefetcher(score_every=0x10000)
    learn_bare = per_call_us(lambda r: bare.observe(*r), reads)
    return {"prefetch_observe_us": learn, "prefetch_propose_5_us": propose,
            "prefetch_observe_score_every_4_us": learn_sampled,
            "prefetch_observe_no_proposals_us": learn_bare}


def gossip(n: int, rng: np.random.Generator) -> dict[str, float]:
    from pakit_stream.replay.gossip import broadcast

    opt = NetworkOptimizer(epsilon=0.0)
    rounds = []
    for _ in range(n):
        size, loss = int(rng.choice([50, 200, 1000])), float(rng.choice([0.0, 0.02, 0.1]))
        mode, f, t, pull = opt.random_action(rng)
        s = broadcast(size, f, t, loss, rng, mode=mode, pull=pull)
        rounds.append((size, 50.0, loss, f, t, s.coverage, s.payload, mode, pull, s.control))
    learn = per_call_us(lambda r: opt.learn_round(*r), rounds)
    asks = [{"network_size": int(x), "avg_latency_ms": 50.0, "message_loss_rate": 0.02}
            for x in rng.integers(20, 5000, 200)]
    fresh = per_call_us(lambda a: (opt._answers.clear(), opt.predict(a)), asks)
    for a in asks:  # every network asked about once: its answer is kept
        opt.predict(a)
    cached = per_call_us(opt.predict, asks)
    # exploring answers (one in ten at the daemon's default epsilon): the settings they draw
    # from are scored once per network, then kept as the answers are
    opt.epsilon = 1.0
    explore_fresh = per_call_us(lambda a: (opt._explorations.clear(),
                                           opt.predict(a, explore=True)), asks)
    for a in asks:  # every network explored once: the settings it draws from are kept
        opt.predict(a, explore=True)
    explore_kept = per_call_us(lambda a: opt.predict(a, explore=True), asks)
    return {"gossip_learn_round_us": learn, "gossip_hint_uncached_us": fresh,
            "gossip_hint_cached_us": cached, "gossip_explore_uncached_us": explore_fresh,
            "gossip_explore_kept_us": explore_kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "learners.json")
    args = ap.parse_args()
    figures = {**peers(args.events, random.Random(0)),
               **dedup(args.events, np.random.default_rng(0)),
               **codec(args.events // 5, random.Random(1)),
               **prefetch(args.events, random.Random(2)),
               **gossip(args.events // 50, np.random.default_rng(3))}
    for name, value in figures.items():
        print(f"{name:34} {value:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "learners", "events": args.events,
                                    "machine": {"cpus": os.cpu_count(),
                                                "python": platform.python_version()},
                                    "us_per_call": figures}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
