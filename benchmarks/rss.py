"""Memory over a long stream: the learners' RSS across ``--events`` events (10M by default).

Events of the ingest mix, but drawn from ever-growing populations: every fingerprint is a new
block, reads spread over millions of blocks and 200k nodes, fetches over 20k peers. Every
learner structure must therefore hit its bound (LSH capacity, successor table capacity,
bandit arms, bounded training windows) and stay there. RSS is sampled after every chunk;
the figure that matters is the growth over the second half of the run, against the first.

    python benchmarks/rss.py --events 10000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pakit_stream.events.schema import (BlockAccessed, BlockFingerprint, BlockStored, CodecResult,
                                        GossipRound, PeerFetch)
from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

HERE = Path(__file__).resolve().parent
MIX = {"pakit.access": 0.50, "pakit.peers": 0.20, "pakit.blocks": 0.12,
       "pakit.fingerprints": 0.12, "pakit.gossip": 0.06}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunk(k: int, n: int, rng: np.random.Generator) -> dict[str, list]:
    """``n`` events, chunk ``k`` of the stream: new blocks and fingerprints every chunk."""
    c = {t: int(n * s) for t, s in MIX.items()}
    base = k * n
    out: dict[str, list] = {}
    blocks = rng.integers(0, 5_000_000, c["pakit.access"])
    nodes = rng.integers(0, 200_000, c["pakit.access"])
    out["pakit.access"] = [BlockAccessed(node_id=f"n{nodes[i]}", ts=float(base + i),
                                         block_hash=f"{blocks[i]:064x}", cache_hit=bool(i % 3),
                                         latency_ms=1.0) for i in range(c["pakit.access"])]
    peers = rng.integers(0, 20_000, (c["pakit.peers"], 4))
    lat = rng.gamma(2, 40, c["pakit.peers"])
    out["pakit.peers"] = [PeerFetch(node_id=f"n{i % 500}", ts=float(base + i),
                                    block_hash=f"{i:064x}", peer_id=f"p{peers[i, 0]}",
                                    candidates=[f"p{p}" for p in peers[i]], success=True,
                                    latency_ms=float(lat[i]), block_size=65536,
                                    context={"network_load": 0.3}) for i in range(c["pakit.peers"])]
    sizes = rng.integers(4096, 1 << 20, c["pakit.blocks"])
    out["pakit.blocks"] = [BlockStored(
        node_id="n1", ts=float(base + i), block_hash=f"{base + i:064x}", block_size=int(sizes[i]),
        block_depth=i % 8, compression_algorithm="zstd", compression_ratio=0.5, entropy=5.0,
        codec_results=[CodecResult(a, int(sizes[i] * r), 100.0, 50.0)
                       for a, r in (("zstd", 0.4), ("lz4", 0.55), ("none", 1.0))])
        for i in range(c["pakit.blocks"])]
    sigs = rng.integers(0, 2**32, (c["pakit.fingerprints"], 128), dtype=np.uint32)
    out["pakit.fingerprints"] = [BlockFingerprint(node_id="n1", ts=float(base + i),
                                                  block_hash=f"{(1 << 200) + base + i:064x}",
                                                  minhash=sigs[i].tolist())
                                 for i in range(c["pakit.fingerprints"])]
    out["pakit.gossip"] = [GossipRound(node_id="n1", ts=float(base + i), network_size=200,
                                       avg_latency_ms=40.0, message_loss_rate=0.02, fanout=6, ttl=8,
                                       coverage=0.99, messages_sent=1190)
                           for i in range(c["pakit.gossip"])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rss.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pipeline = Pipeline(Settings(), Metrics())
    samples = [(0, rss_mb())]
    started = time.perf_counter()
    busy = 0.0
    for k in range(args.events // args.chunk):
        events = chunk(k, args.chunk, rng)
        t0 = time.perf_counter()
        for topic, evs in events.items():
            for i in range(0, len(evs), 500):
                pipeline.apply(topic, evs[i:i + 500])
        busy += time.perf_counter() - t0
        del events
        gc.collect()
        samples.append(((k + 1) * args.chunk, rss_mb()))
        if (k + 1) % 8 == 0:
            print(f"{samples[-1][0]:>11,} events  RSS {samples[-1][1]:8,.0f} MB  "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    total = samples[-1][0]
    half = min(samples, key=lambda s: abs(s[0] - total / 2))
    first = min(samples, key=lambda s: abs(s[0] - total / 10))
    result = {"benchmark": "rss", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "events": total, "learner_events_per_s": total / busy,
              "rss_mb": {"start": samples[0][1], "at_10pct": first[1], "at_half": half[1],
                         "end": samples[-1][1]},
              "growth_mb_second_half": samples[-1][1] - half[1],
              "growth_mb_first_half": half[1] - samples[0][1],
              "stats": pipeline.stats(), "samples": samples}
    print(f"RSS start {samples[0][1]:,.0f} MB, at half {half[1]:,.0f} MB, end {samples[-1][1]:,.0f} MB: "
          f"growth over the second half {result['growth_mb_second_half']:+,.0f} MB vs "
          f"{result['growth_mb_first_half']:+,.0f} MB over the first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
