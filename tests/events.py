"""Small, deterministic events of every family, for tests (no ../shared, no files)."""

from __future__ import annotations

import hashlib
import json
import random

from pakit_stream.telemetry.publish import envelope


def block_hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def stored(i: int, node: str = "node-a") -> dict:
    size = 1024 * (1 + i % 64)
    return {"event_type": "block_stored", "node_id": node, "ts": 1000.0 + i,
            "block_hash": block_hash(i), "block_size": size, "block_depth": i % 5,
            "compression_algorithm": "zstd", "compression_ratio": 0.4, "entropy": 4.5,
            "codec_results": [
                {"algorithm": "zstd", "compressed_size": size // 3, "compress_us": 90.0,
                 "decompress_us": 20.0},
                {"algorithm": "lz4", "compressed_size": size // 2, "compress_us": 20.0,
                 "decompress_us": 5.0}]}


def accessed(i: int, node: str = "node-a", position: bool = False) -> dict:
    """A read of block ``i % 7``; with ``position``, as chunk ``i % 7`` of one object."""
    e = {"event_type": "block_accessed", "node_id": node, "ts": 2000.0 + i,
         "block_hash": block_hash(i % 7), "cache_hit": i % 3 == 0, "latency_ms": 1.5}
    if position:
        e.update(object_id="0f" * 32, chunk_index=i % 7)
    return e


def fingerprint(i: int, node: str = "node-a", base: int | None = None, edits: int = 0) -> dict:
    """A MinHash; with ``base``, a copy of block ``base``'s signature with ``edits`` slots
    changed (a near-duplicate of estimated Jaccard 1 - edits/128)."""
    rng = random.Random(i if base is None else base)
    sig = [rng.getrandbits(32) for _ in range(128)]
    if base is not None:
        noise = random.Random(10_000 + i)
        for k in range(edits):
            sig[k] = noise.getrandbits(32)
    return {"event_type": "block_fingerprint", "node_id": node, "ts": 3000.0 + i,
            "block_hash": block_hash(100_000 + i), "minhash": sig}


PEER_MS = {"peer-fast": 15.0, "peer-mid": 80.0, "peer-slow": 400.0}


def peer_fetch(i: int, node: str = "node-a", latency: dict | None = None) -> dict:
    latency = latency or PEER_MS
    peers = sorted(latency)
    peer = peers[i % len(peers)]
    return {"event_type": "peer_fetch", "node_id": node, "ts": 4000.0 + i,
            "block_hash": block_hash(i), "peer_id": peer, "candidates": peers, "success": True,
            "latency_ms": latency[peer], "block_size": 65536,
            "context": {"time_of_day": 0.5, "network_load": 0.2}}


def gossip(i: int, node: str = "node-a") -> dict:
    fanout, ttl = [(3, 5), (6, 10), (2, 3)][i % 3]
    coverage = {3: 1.0, 6: 1.0, 2: 0.6}[fanout]
    return {"event_type": "gossip_round", "node_id": node, "ts": 5000.0 + i, "network_size": 100,
            "avg_latency_ms": 40.0, "message_loss_rate": 0.01, "fanout": fanout, "ttl": ttl,
            "coverage": coverage, "messages_sent": fanout * 100}


def raw(event: dict) -> bytes:
    return json.dumps(event).encode()


def pack(events: list[dict]) -> bytes:
    return envelope([raw(e) for e in events])
