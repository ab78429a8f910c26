"""A node simulator: real local files become the telemetry a storage node would publish.

* Blocks are real: files are cut into blocks, each block is really compressed with every codec
  of :data:`CODECS` (zstd at levels 1, 3 and 9, lz4, snappy, brotli-4; cramjam) to fill
  ``codec_results``, its entropy sampled and its MinHash
  computed with the node-side :func:`~pakit_stream.events.block_minhash`.
* Reads replay files front to back, file popularity Zipf-distributed, through an LRU cache.
* Peers and gossip are simulated: peers have log-normal latencies that drift (one fast peer
  degrades half-way), and gossip rounds run a real gossip simulation (push, or push then pull) with loss.

Nodes choose peers and gossip settings uniformly at random (they log exploration), which makes
every logged fetch usable for an unbiased replay evaluation of the bandit.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import sysconfig
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cramjam
import numpy as np

from pakit_stream.events.fingerprint import block_minhash
from pakit_stream.exceptions import DataError

__all__ = ["Block", "read_blocks", "codec_results", "entropy", "probe_ratio", "block_events",
           "PeerWorld", "gossip_round", "NodeSimulator", "CODECS", "default_source"]

#: the codec menu: name -> (compress, decompress); ``none`` (store as is) is always available
CODECS = {
    "zstd-1": (lambda b: cramjam.zstd.compress(b, level=1), cramjam.zstd.decompress),
    "zstd-3": (lambda b: cramjam.zstd.compress(b, level=3), cramjam.zstd.decompress),
    "zstd-9": (lambda b: cramjam.zstd.compress(b, level=9), cramjam.zstd.decompress),
    "lz4": (cramjam.lz4.compress_block, cramjam.lz4.decompress_block),
    "snappy": (cramjam.snappy.compress_raw, cramjam.snappy.decompress_raw),
    "brotli-4": (lambda b: cramjam.brotli.compress(b, level=4), cramjam.brotli.decompress),
}


def default_source() -> Path:
    """Python's own standard library: real files every machine with Python has."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class Block:
    block_hash: str
    size: int
    depth: int
    file_index: int
    data: bytes = field(repr=False)


def read_blocks(source: Path, block_size: int = 16384, max_blocks: int = 2000,
                max_file_bytes: int = 1 << 20) -> list[Block]:
    """Cut the regular files under ``source`` (sorted, so runs repeat) into blocks."""
    blocks: list[Block] = []
    files = sorted(p for p in Path(source).rglob("*") if p.is_file() and not p.is_symlink())
    for file_index, path in enumerate(files):
        try:
            data = path.read_bytes()[:max_file_bytes]
        except OSError:
            continue
        depth = len(path.relative_to(source).parts)
        for off in range(0, len(data), block_size):
            chunk = data[off:off + block_size]
            if chunk:
                blocks.append(Block(hashlib.sha256(chunk).hexdigest(), len(chunk), depth,
                                    file_index, chunk))
                if len(blocks) >= max_blocks:
                    return blocks
    return blocks


def entropy(data: bytes, sample: int = 4096) -> float:
    """Shannon entropy, in bits per byte, of the block's first ``sample`` bytes."""
    counts = np.bincount(np.frombuffer(data[:sample], dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log2(p)).sum())


def probe_ratio(data: bytes, sample: int = 4096) -> float:
    """lz4-compressed size over size of the block's first ``sample`` bytes: a cheap probe."""
    head = data[:sample]
    return round(len(cramjam.lz4.compress_block(head)) / max(len(head), 1), 4) if head else 1.0


def codec_results(data: bytes, repeats: int = 1) -> list[dict]:
    """Really compress and decompress ``data`` with each codec; sizes and microseconds, each
    time the median of ``repeats`` runs (one run lets noise pick the winner)."""
    out = [{"algorithm": "none", "compressed_size": len(data), "compress_us": 0.0,
            "decompress_us": 0.0}]
    for name, (compress, decompress) in CODECS.items():
        comp, decomp = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            packed = bytes(compress(data))
            t1 = time.perf_counter()
            decompress(packed)
            t2 = time.perf_counter()
            comp.append((t1 - t0) * 1e6)
            decomp.append((t2 - t1) * 1e6)
        out.append({"algorithm": name, "compressed_size": len(packed),
                    "compress_us": statistics.median(comp),
                    "decompress_us": statistics.median(decomp)})
    return out


def block_events(data: bytes, block_hash: str, node_id: str, depth: int, ts: float,
                 parent_count: int = 1) -> tuple[dict, dict]:
    """The ``block_stored`` (every codec really run on ``data``) and ``block_fingerprint``
    events a node publishes for one block; the node is taken to store its best-ratio codec."""
    results = codec_results(data)
    best = min(results, key=lambda r: r["compressed_size"])
    stored = {"event_type": "block_stored", "node_id": node_id, "ts": ts, "block_hash": block_hash,
              "block_size": len(data), "block_depth": depth,
              "compression_algorithm": best["algorithm"],
              "compression_ratio": max(best["compressed_size"], 1) / max(len(data), 1),
              "parent_count": parent_count, "entropy": round(entropy(data), 4),
              "probe_ratio": probe_ratio(data), "codec_results": results}
    fingerprint = {"event_type": "block_fingerprint", "node_id": node_id, "ts": ts,
                   "block_hash": block_hash, "minhash": block_minhash(data)}
    return stored, fingerprint


class PeerWorld:
    """Peers with drifting log-normal latencies; ``fetch`` draws one real outcome."""

    def __init__(self, n_peers: int = 12, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.peers = [f"peer-{i:02d}" for i in range(n_peers)]
        self.base_ms = np.exp(self.rng.normal(math.log(80), 0.7, n_peers))
        self.fail = self.rng.uniform(0.005, 0.08, n_peers)
        self.degraded = False

    def degrade_best(self, factor: float = 6.0) -> str:
        """The currently fastest peer becomes ``factor`` times slower (non-stationarity)."""
        best = int(np.argmin(self.base_ms))
        self.base_ms[best] *= factor
        self.degraded = True
        return self.peers[best]

    def expected_ms(self, peer: str, load: float) -> float:
        return float(self.base_ms[self.peers.index(peer)] * (1 + load))

    def candidates(self) -> list[str]:
        k = int(self.rng.integers(3, min(8, len(self.peers)) + 1))
        return [self.peers[i] for i in self.rng.choice(len(self.peers), k, replace=False)]

    def context(self, now: float) -> dict[str, float]:
        tod = (now % 86400) / 86400
        return {"time_of_day": round(tod, 4), "network_load": round(float(self.rng.beta(2, 5)), 4)}

    def fetch(self, peer: str, load: float) -> tuple[bool, float]:
        i = self.peers.index(peer)
        ok = bool(self.rng.random() > self.fail[i])
        latency = self.base_ms[i] * (1 + load) * float(np.exp(self.rng.normal(0, 0.25)))
        return ok, round(float(latency if ok else latency * 3), 3)


def gossip_round(n: int, fanout: float, ttl: int, loss: float, rng: np.random.Generator,
                 mode: str = "push", pull: int = 0) -> tuple[float, int, int]:
    """One broadcast from one origin (see :func:`pakit_stream.replay.gossip.broadcast`),
    without latencies: ``(coverage, payload messages, control messages)``."""
    from pakit_stream.replay.gossip import broadcast

    spread = broadcast(n, fanout, ttl, loss, rng, mode=mode, pull=pull)
    return spread.coverage, spread.payload, spread.control


class NodeSimulator:
    """Telemetry of ``n_nodes`` nodes sharing a block population, as event dicts."""


    def __init__(self, blocks: list[Block], n_nodes: int = 4, seed: int = 7,
                 cache_blocks: int = 200) -> None:
        if not blocks:
            raise DataError("no blocks to simulate with")
        self.blocks = blocks
        self.rng = np.random.default_rng(seed)
        self.nodes = [f"node-{i}" for i in range(n_nodes)]
        self.world = PeerWorld(seed=seed)
        self.caches = {n: OrderedDict() for n in self.nodes}
        self.cache_blocks = cache_blocks
        by_file: dict[int, list[Block]] = {}
        for b in blocks:
            by_file.setdefault(b.file_index, []).append(b)
        self.files = list(by_file.values())
        #: each file's root digest (a stand-in for its DAG root): the reads' ``object_id``
        self.roots = {id(f): hashlib.sha256("".join(b.block_hash for b in f).encode()).hexdigest()
                      for f in self.files}
        ranks = np.arange(1, len(self.files) + 1)
        self.file_p = (1 / ranks) / (1 / ranks).sum()
        self.rng.shuffle(self.files)

    def stored_events(self) -> Iterator[dict]:
        """One ``block_stored`` and one ``block_fingerprint`` per block (really measured)."""
        for i, b in enumerate(self.blocks):
            yield from block_events(b.data, b.block_hash, self.nodes[i % len(self.nodes)], b.depth,
                                    time.time())

    def access_events(self, n_files: int) -> Iterator[dict]:
        """Whole-file reads through each node's LRU cache."""
        for _ in range(n_files):
            node = self.nodes[int(self.rng.integers(len(self.nodes)))]
            cache = self.caches[node]
            blocks = self.files[int(self.rng.choice(len(self.files), p=self.file_p))]
            root = self.roots[id(blocks)]
            for index, b in enumerate(blocks):
                hit = b.block_hash in cache
                if hit:
                    cache.move_to_end(b.block_hash)
                else:
                    cache[b.block_hash] = None
                    if len(cache) > self.cache_blocks:
                        cache.popitem(last=False)
                yield {"event_type": "block_accessed", "node_id": node, "ts": time.time(),
                       "block_hash": b.block_hash, "cache_hit": hit,
                       "latency_ms": round(0.05 if hit else float(self.rng.gamma(2, 2)), 3),
                       "object_id": root, "chunk_index": index}

    def peer_events(self, n: int) -> Iterator[dict]:
        w = self.world
        for _ in range(n):
            cands = w.candidates()
            peer = cands[int(self.rng.integers(len(cands)))]
            ctx = w.context(time.time())
            ok, latency = w.fetch(peer, ctx["network_load"])
            b = self.blocks[int(self.rng.integers(len(self.blocks)))]
            yield {"event_type": "peer_fetch", "node_id": self.nodes[0], "ts": time.time(),
                   "block_hash": b.block_hash, "peer_id": peer, "candidates": cands,
                   "success": ok, "latency_ms": latency, "block_size": b.size, "context": ctx}

    def gossip_events(self, n: int) -> Iterator[dict]:
        from pakit_stream.learners.network import ACTIONS

        for _ in range(n):
            size = int(self.rng.choice([20, 50, 100, 200, 500]))
            loss = float(self.rng.choice([0.0, 0.02, 0.1]))
            mode, fanout, ttl, pull = ACTIONS[int(self.rng.integers(len(ACTIONS)))]
            coverage, payload, control = gossip_round(size, fanout, ttl, loss, self.rng, mode,
                                                      pull)
            yield {"event_type": "gossip_round", "node_id": self.nodes[0], "ts": time.time(),
                   "network_size": size, "avg_latency_ms": round(float(self.rng.uniform(10, 150)), 2),
                   "message_loss_rate": loss, "fanout": fanout, "ttl": ttl,
                   "coverage": coverage, "messages_sent": payload, "mode": mode,
                   "pull_rounds": pull, "control_messages": control}

